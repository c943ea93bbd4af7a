"""TFLite: litert-torch FP32 + ai-edge-quantizer FP16 / full-integer INT8, run in ai_edge_litert; routed models as a
select that is checked against PyTorch hard routing per routing pattern."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeconv.common.errors import EdgeconvError

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")


def test_select_routing_matches_hard_routing_and_restores_the_model(trained, digits_pre):
    """The fallback graph gives every sample the answer hard routing gives, and the model is left as it was."""
    from edgeconv.data.sources import load_samples
    from edgeconv.models import load_model, routers, set_routing
    from edgeconv.quantize.tflite import routing_patterns, select_routing

    model, _ = load_model(trained("routed-tiny"))
    x = load_samples("digits", digits_pre, "test").x[:96]
    set_routing(model, "gated")
    with torch.no_grad():
        ref = model(x)
    patterns = routing_patterns(model, x)
    assert len(set(patterns)) >= 2, "the trained router should send digits both ways"
    set_routing(model, "soft")
    with select_routing(model) as n:
        assert n == 2
        assert all(m.mode == "select" for _, m in routers(model))
        with torch.no_grad():
            got = model(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert all(m.mode == "soft" for _, m in routers(model))


@pytest.fixture(scope="module")
def routed_tflite_int8(trained, tmp_path_factory):
    from edgeconv.quantize import QuantizeRequest, quantize

    out = tmp_path_factory.mktemp("tfl") / "routed.int8.tflite"
    rep = quantize(QuantizeRequest(trained("routed-tiny"), out, "int8", backend="tflite"))
    return out, rep


@pytest.mark.slow
def test_routed_tflite_int8_is_verified_within_one_point_and_leaves_no_int8_op_outside_xnnpack(routed_tflite_int8):
    from edgeconv.artifacts.formats import sidecar_path
    from edgeconv.quantize.tflite import TFLiteRunner

    out, rep = routed_tflite_int8
    rec = json.loads(sidecar_path(out).read_text())
    assert rec == json.loads(json.dumps(rep.record, default=str))
    assert rec["routing"] == "select" and len(rec["routing_check"]) >= 2
    assert all(r["max abs diff"] < 1e-3 for r in rec["routing_check"])
    assert rec["calibration"]["size"] == 100 and len(rec["calibration"]["sha256"]) == 64
    assert rec["accuracy"]["n"] == 359 and rec["accuracy"]["drop"] <= 1.0
    assert rec["size_bytes"]["quantized"] == out.stat().st_size < rec["size_bytes"]["float"]
    runner = TFLiteRunner(out)
    assert runner(np.zeros((2, 1, 32, 32), np.float32)).shape == (2, 10)
    # the routers' select has no XNNPACK kernel in any precision: what stays outside was made float and did not
    # come back in, and the graph has far fewer partitions than full-integer's
    split = runner.delegation()
    assert set(split.fallback_counts()) <= set(rec["ops_left_float"])
    assert split.partitions < rec["selection_rounds"][0]["partitions"]


@pytest.mark.slow
def test_info_describes_a_tflite_artifact(routed_tflite_int8):
    from edgeconv.measure.describe import describe

    out, _ = routed_tflite_int8
    desc = describe(out)
    assert "int8" in " ".join(desc["tensors"].values())
    assert "100 samples" in desc["quantization"]["calibration"] and "drop" in desc["quantization"]["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name,precision", [("acmix-tiny", "int8"), ("hvt-tiny", "int8"), ("hvt-tiny", "fp16")])
def test_tflite_within_one_point_for_acmix_and_hvt(name, precision, trained, tmp_path):
    from edgeconv.quantize import QuantizeRequest, quantize

    out = tmp_path / f"{name}.{precision}.tflite"
    rep = quantize(QuantizeRequest(trained(name), out, precision, backend="tflite"))
    acc = rep.record["accuracy"]
    assert acc["float_top1"] > 85 and acc["drop"] <= 1.0
    assert rep.record["routing"] == "none"
    assert out.exists() and (out.parent / f"{out.name}.json").exists()
    if precision == "int8":
        _assert_all_in_xnnpack(out, rep.record)


def _assert_all_in_xnnpack(out, rec):
    """The default INT8 selection leaves no operator outside XNNPACK: a property of the graph and the delegate, the
    same on every CPU (unlike the timing, which is only recorded)."""
    from edgeconv.runtime.tflite import TFLiteRunner

    assert rec["ops"] == "auto"
    split = TFLiteRunner(out).delegation()
    assert split.partitions == 1 and split.fallback == [], split.to_dict()
    assert rec["xnnpack"] == split.to_dict()
    # what XNNPACK has no int8 kernel for was moved to float, by type and count, and the record says so
    assert {"GELU", "SOFTMAX", "BATCH_MATMUL"} <= set(rec["ops_left_float"])
    assert rec["selection_rounds"][0]["fallback_ops"] and rec["selection_rounds"][-1]["fallback_ops"] == {}
    lat = rec["latency_check_ms"]
    assert lat["repetitions"] >= 15 and lat["ratio_ci"][0] <= lat["ratio"] <= lat["ratio_ci"][1]


@pytest.mark.slow
def test_tflite_ops_all_is_full_integer_and_weights_keeps_activations_float(trained, tmp_path):
    """--ops all: every operator ai-edge-quantizer can quantize, int8 in and out (integer-only accelerators); the
    operators XNNPACK has no int8 kernel for fall back and split the graph, and the record names them. --ops weights:
    only the weight layers are int8, the input stays float and the graph stays in one partition."""
    from edgeconv.quantize import QuantizeRequest, quantize
    from edgeconv.runtime.tflite import TFLiteRunner

    full = quantize(QuantizeRequest(trained("hvt-tiny"), tmp_path / "all.tflite", "int8", "tflite", ops="all"))
    rec = full.record
    runner = TFLiteRunner(tmp_path / "all.tflite")
    assert runner.input_dtype == "int8" and rec["ops_left_float"] == {}
    split = runner.delegation()
    assert split.partitions > 1 and {"GELU", "SOFTMAX"} <= set(split.fallback_counts())
    assert rec["xnnpack"] == split.to_dict() and any("outside the delegate" in n for n in full.notes)
    w = quantize(QuantizeRequest(trained("hvt-tiny"), tmp_path / "w.tflite", "int8", "tflite", ops="weights"))
    runner = TFLiteRunner(tmp_path / "w.tflite")
    assert runner.input_dtype == "float32" and runner.delegation().partitions == 1
    types = {np.dtype(d["dtype"]).name for d in runner.interp.get_tensor_details()}
    assert "int8" in types and w.record["accuracy"]["drop"] <= 1.0
    assert w.record["size_bytes"]["ratio"] < 0.6  # int8 weights; norms, biases and the rest stay float32


def test_tflite_without_the_extra_fails_with_the_install_hint(trained, tmp_path):
    """Simulate an environment without the tflite extra: the import is refused, the command says what to install."""
    out = tmp_path / "m.tflite"
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('litert_torch', 'ai_edge_litert', 'ai_edge_quantizer'):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
sys.argv = ['edgeconv', 'quantize', {str(trained("routed-tiny"))!r}, '--int8', '-b', 'tflite', '-o', {str(out)!r}]
from edgeconv.cli import main
main()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "TFLite conversion" in r.stderr and "pip install litert-torch" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "m.tflite.json").exists()


def test_tflite_rejects_onnx_without_checkpoint(tmp_path, trained):
    import onnx
    from onnx import TensorProto, helper

    from edgeconv.artifacts.card import encode_props as write_metadata
    from edgeconv.data.sources import digits_preprocessing
    from edgeconv.quantize import QuantizeRequest, quantize

    g = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 32, 32])],
    )
    m = helper.make_model(g)
    write_metadata(m, {"preprocessing": digits_preprocessing(32), "source_path": str(tmp_path / "gone.pt")})
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    with pytest.raises(EdgeconvError, match="starts from the PyTorch checkpoint"):
        quantize(QuantizeRequest(p, tmp_path / "b.tflite", "int8", backend="tflite"))
    assert not list(tmp_path.glob("*.tflite*"))


@pytest.mark.slow
def test_tflite_max_drop_keeps_the_most_sensitive_weight_layers_float(trained, tmp_path):
    """--max-drop 0 on a file calibrated on 3 images: the weight layers are ranked by their logit error alone and
    the most sensitive go back to float until top-1 (in the interpreter) is no lower than FP32's; or, when even all
    of them float is not enough, one line and nothing written."""
    from edgeconv.artifacts.formats import sidecar_path
    from edgeconv.quantize import QuantizeRequest, quantize
    from edgeconv.runtime.tflite import TFLiteRunner

    out = tmp_path / "m.tflite"
    req = QuantizeRequest(trained("hvt-tiny"), out, "int8", "tflite", data="digits", calib_limit=3, max_drop=0.0)
    try:
        rep = quantize(req)
    except EdgeconvError as e:
        assert "--max-drop 0.0 cannot be met" in str(e) and "nothing was written" in str(e)
        assert not out.exists() and not sidecar_path(out).exists()
        return
    rec = rep.record
    steps = rec["max_drop_steps"]
    assert rec["accuracy"]["drop"] <= 0.0 and rec["accuracy"]["max_drop"] == 0.0
    if steps[0]["top1"] < rec["accuracy"]["float_top1"]:  # plain INT8 was below float: layers went back
        kept = rec["kept_float_for_accuracy"]
        assert len(kept) == len(steps) - 1 >= 1 and steps[-1]["top1"] == pytest.approx(rec["accuracy"]["quantized_top1"])
        split = TFLiteRunner(out).delegation()
        assert split.partitions == 1  # float weight layers stay inside XNNPACK
        types = {d["name"]: d["dtype"] for d in TFLiteRunner(out).interp.get_tensor_details()}
        assert all(np.dtype(types[t]) == np.float32 for t in kept)
    else:
        assert rec["kept_float_for_accuracy"] == [] and len(steps) == 1


@pytest.mark.slow
def test_saliency_top_k_token_selection_converts_and_runs_in_int8(trained, tmp_path):
    """The saliency family keeps its top-k tokens in TFLite INT8: no sort kernel is needed, and it is scored."""
    from edgeconv.quantize import QuantizeRequest, quantize

    out = tmp_path / "saliency.int8.tflite"
    rep = quantize(QuantizeRequest(trained("saliency-tiny", 6), out, "int8", backend="tflite"))
    acc = rep.record["accuracy"]
    assert acc["float_top1"] > 80 and acc["drop"] <= 2.0
    assert out.exists()


@pytest.mark.parametrize(
    ("isa", "ci", "named"),
    [
        ("avx2 fma", (1.10, 1.20), "AVX2 (no VNNI)"),
        ("avx2 fma avx512f avx512bw avx512vl avx512_vnni", (1.10, 1.20), None),
        ("avx2 fma", (0.55, 0.60), None),
    ],
)
def test_a_slower_int8_names_the_missing_dot_product_only_on_an_x86_cpu_without_vnni(monkeypatch, isa, ci, named):
    from edgeconv.quantize import tflite
    from edgeconv.runtime import hostcpu

    cls = hostcpu.int8_class(isa.split(), "x86_64")
    monkeypatch.setattr(hostcpu, "cpu_info", lambda: {"isa": isa, "arch": "x86_64", "int8": cls["name"]})
    why = tflite._slower_why({"ratio_ci": list(ci)})
    if named is None:
        assert why is None
    else:
        assert why is not None and named in why and "dot-product" in why
