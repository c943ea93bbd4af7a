"""INT8 that gives the same answer on every CPU: the int16 pair-sum property of the written weights (walked over
every integer layer, `If` branches included), a numpy emulation of the saturating U8S8 kernel on a real layer,
the CPU classes, the targets and their warnings, and - where qemu is installed - the files run on an emulated
AVX2-only CPU."""

from __future__ import annotations

import copy
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeconv.common.errors import EdgeconvError
from edgeconv.quantize.saturation import INT16_MAX, check_model, emulate_u8s8, exact_u8s8, integer_layers
from edgeconv.quantize.targets import TARGETS, resolve_target, target_warning
from edgeconv.runtime.hostcpu import int8_class, parse_cpuinfo

FIX = Path(__file__).parent / "fixtures" / "jetson"
AVX2 = {"name": "AVX2 (no VNNI)", "family": "x86", "u8s8_saturates": True}
VNNI = {"name": "AVX-512 VNNI", "family": "x86", "u8s8_saturates": False}
ARM = {"name": "NEON dot-product", "family": "arm", "u8s8_saturates": False}


@pytest.fixture(scope="module")
def calib(digits_pre):
    from edgeconv.quantize.calibration import load_calibration

    return load_calibration(digits_pre)


@pytest.fixture(scope="module")
def routed_files(exported, calib):
    """routed-tiny quantized for the portable target and with full 8-bit weights (the pre-target default)."""
    from edgeconv.quantize.ort import Int8Options, quantize_int8

    model = onnx.load(str(exported("routed-tiny")))
    out = {}
    for name in ("portable", "x86-vnni"):
        opts = Int8Options.for_target(TARGETS[name], ops="weights")
        out[name] = quantize_int8(model, calib, opts).model
    return out


# ----------------------------------------------------------------------------------------------- the property
def test_portable_weights_cannot_saturate_in_any_integer_layer_including_if_branches(routed_files):
    layers = integer_layers(routed_files["portable"])
    assert len(layers) > 20
    assert any(layer.graph for layer in layers), "If branches were not walked"
    assert {layer.op for layer in layers} >= {"Conv", "MatMul", "Gemm"}
    for layer in layers:
        assert layer.max_abs_weight <= 64, layer.node
        assert layer.worst_pair <= INT16_MAX, layer.node
    assert check_model(routed_files["portable"]).safe


def test_full_range_weights_are_caught(routed_files):
    report = check_model(routed_files["x86-vnni"])
    assert not report.safe
    assert any(layer.graph for layer in report.unsafe), "unsafe layers inside If branches not found"
    assert max(layer.max_abs_weight for layer in report.layers) == 127
    assert "can overflow int16" in report.summary()


def test_the_bound_takes_the_two_largest_weights_of_a_channel():
    from edgeconv.quantize.saturation import IntegerLayer

    # 64 + 64 fits (255 * 128 = 32640); 65 + 64 does not (32895), whatever else the channel holds
    fits = IntegerLayer("", "a", "MatMul", np.array([[64, -64, 3, 0]], dtype=np.int8))
    over = IntegerLayer("", "b", "MatMul", np.array([[1, 2, 3, 4], [65, 0, -64, 1]], dtype=np.int8))
    assert not fits.saturates and fits.worst_pair == 32640
    assert over.saturates and over.worst_pair == 255 * 129


# ----------------------------------------------------------------------------------------------- emulation
def test_emulated_kernel_saturates_exactly_where_pairs_leave_int16():
    a = np.full((1, 4), 255, dtype=np.uint8)
    w = np.array([[127, 127, 64, 64]], dtype=np.int8)
    # pair 1: 255*254 = 64770 -> 32767; pair 2: 255*128 = 32640 exact
    assert int(emulate_u8s8(a, w)[0, 0]) == 32767 + 32640
    assert int(exact_u8s8(a, w)[0, 0]) == 64770 + 32640
    odd = np.array([[200, 100, 50]], dtype=np.uint8), np.array([[-3, 5, 7]], dtype=np.int8)
    assert emulate_u8s8(*odd)[0, 0] == exact_u8s8(*odd)[0, 0]


def _layer_inputs(model: onnx.ModelProto, node_name: str, x: np.ndarray) -> tuple[np.ndarray, int]:
    """The uint8 activations a top-level integer layer reads for inputs `x`, and their zero point."""
    import onnxruntime as ort
    from onnx import numpy_helper

    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    dq = producers[node.input[0]]
    probe = copy.deepcopy(model)
    probe.graph.output.append(onnx.ValueInfoProto(name=dq.input[0]))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # no integer fusion: exact values
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = sess.run([dq.input[0]], {sess.get_inputs()[0].name: x})[0]
    return a.reshape(-1, a.shape[-1]), int(inits[dq.input[2]])


def test_emulation_on_a_real_layer_shows_the_old_setting_corrupting_it_and_portable_exact(routed_files, digits_pre):
    """The classifier of routed-tiny on real digits, through the saturating kernel's arithmetic."""
    from edgeconv.data.sources import load_samples

    x = load_samples("digits", digits_pre, "test", limit=64).x.numpy().astype(np.float32)
    errors = {}
    for name, model in routed_files.items():
        head = [la for la in integer_layers(model) if not la.graph and la.op == "Gemm"][-1]
        a, zp = _layer_inputs(model, head.node, x)
        offset = zp * head.weight.astype(np.int64).sum(1)  # the kernel removes the zero point after the sums
        exact = exact_u8s8(a, head.weight) - offset
        emulated = emulate_u8s8(a, head.weight) - offset
        errors[name] = (
            float(np.linalg.norm(emulated - exact) / np.linalg.norm(exact)),
            float(np.mean(emulated != exact)),
            float(np.mean(emulated.argmax(1) == exact.argmax(1))),
        )
    rel, frac, _ = errors["x86-vnni"]
    assert rel > 0.01 and frac > 0.02, errors  # full 8-bit weights: saturated sums corrupt the logits
    assert errors["portable"][:2] == (0.0, 0.0)  # 7-bit weights: bit-exact


# ----------------------------------------------------------------------------------------------- CPU classes
def test_cpu_classes_from_flags():
    assert int8_class(["avx", "avx2", "fma"], "x86_64") == AVX2
    assert int8_class("avx2 avx512f", "x86_64")["u8s8_saturates"] is True
    assert int8_class("avx2 avx512f avx512_vnni", "x86_64") == VNNI
    assert int8_class("avx2 avx_vnni", "x86_64")["name"] == "AVX-VNNI"
    assert int8_class("avx2 avx512_vnni amx_tile amx_int8", "x86_64")["name"] == "AMX"
    assert int8_class("fp asimd asimddp", "aarch64") == ARM
    assert int8_class("sse4_2", "x86_64")["u8s8_saturates"] is True
    recorded = parse_cpuinfo((FIX / "x86_host/proc/cpuinfo").read_text())
    assert int8_class(recorded["isa"], "x86_64")["name"] == "AVX-512 VNNI"


def test_info_device_names_the_int8_class(tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    res = CliRunner().invoke(app, ["info", "--device", "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    cpu = json.loads((tmp_path / "d.json").read_text())["cpu"]
    assert cpu["int8"] in {c[0] for c in __import__("edgeconv.runtime.hostcpu", fromlist=["x"]).INT8_CLASSES} | {
        "SSE (no VNNI)"
    } or cpu["int8"].startswith("unknown")
    assert cpu["int8 kernels"]


# ----------------------------------------------------------------------------------------------- targets
def test_targets_resolve_per_backend_and_refuse_clearly():
    assert resolve_target(None, "ort").name == "portable"
    assert resolve_target(None, "tensorrt").name == "tensorrt"
    assert resolve_target(None, "tflite") is None
    with pytest.raises(EdgeconvError, match="unknown; choose one of: portable, x86-vnni, arm64, tensorrt"):
        resolve_target("avx2", "ort")
    with pytest.raises(EdgeconvError, match="written by --backend tensorrt"):
        resolve_target("tensorrt", "ort")


def test_warnings_for_files_made_for_another_cpu():
    rec = {"precision": "int8"}
    assert target_warning({**rec, "target": "portable"}, AVX2) is None
    assert target_warning({**rec, "target": "portable"}, ARM) is None
    assert target_warning({**rec, "target": "x86-vnni"}, VNNI) is None
    assert "saturate" in target_warning({**rec, "target": "x86-vnni"}, AVX2)
    assert "arm" in target_warning({**rec, "target": "x86-vnni"}, ARM)
    assert "saturate" in target_warning({**rec, "target": "arm64"}, AVX2)
    assert "stand-in" in target_warning({**rec, "target": "tensorrt"}, VNNI)
    assert target_warning({"precision": "fp16"}, AVX2) is None


def test_cli_target_is_recorded_shown_by_info_and_checked_by_validate(exported, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    src = exported("routed-tiny")
    runner = CliRunner()
    out = tmp_path / "m.vnni.onnx"
    res = runner.invoke(
        app,
        [
            "quantize",
            str(src),
            "--int8",
            "--target",
            "x86-vnni",
            "--ops",
            "weights",
            "-o",
            str(out),
            "--json",
            str(tmp_path / "q.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "q.json").read_text())
    assert rec["target"] == "x86-vnni" and rec["saturation"]["safe_without_vnni"] is False
    assert rec["cpu"]["int8"] and rec["accuracy"]["runtime"].startswith("onnxruntime default session")
    info = runner.invoke(app, ["info", str(out), "--json", str(tmp_path / "i.json")])
    assert info.exit_code == 0, info.output
    section = json.loads((tmp_path / "i.json").read_text())["quantization"]
    assert section["INT8 target"].startswith("x86-vnni") and "on this CPU" in section
    assert "can saturate" in section["int16 pair sums"]
    runner.invoke(
        app,
        [
            "validate",
            str(out),
            "--limit",
            "16",
            "--allow-uncovered",
            "--tolerance",
            "10",
            "--min-agreement",
            "0",
            "--json",
            str(tmp_path / "v.json"),
        ],
    )
    checks = {c["name"]: c for c in json.loads((tmp_path / "v.json").read_text())["checks"]}
    assert checks["INT8 target"]["status"] in ("PASSED", "WARNING")
    assert checks["INT8 target"]["data"]["safe_without_vnni"] is False


def test_cli_target_errors_come_before_any_work(exported, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    src = exported("routed-tiny")
    for args, msg in (
        (["--int8", "--target", "bogus"], "unknown; choose one of"),
        (["--int8", "--target", "tensorrt"], "written by --backend tensorrt"),
        (["--fp16", "--target", "portable"], "--target applies to --int8 only"),
    ):
        out = tmp_path / "x.onnx"
        res = CliRunner().invoke(app, ["quantize", str(src), *args, "-o", str(out)])
        assert res.exit_code != 0 and msg in str(res.exception or res.output), (args, res.output)
        assert not out.exists()


# ----------------------------------------------------------------------------------------------- another CPU class
QEMU = shutil.which("qemu-x86_64")


@pytest.mark.slow
@pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64", reason="needs qemu-user on x86-64 (apt install qemu-user)"
)
def test_files_on_an_emulated_avx2_cpu_without_vnni(routed_files, digits_pre, tmp_path):
    """qemu's Haswell model has AVX2 and no AVX-512/VNNI: onnxruntime picks its saturating U8S8 kernels there.
    The portable file gives the same top-1 as on this machine; the full-range file collapses (so the emulated CPU
    really is the class that breaks it)."""
    from edgeconv.data.sources import load_samples
    from edgeconv.quantize.crosscpu import score_files
    from edgeconv.quantize.ort import ort_logits, ort_session, top1

    s = load_samples("digits", digits_pre, "test")
    x, y = s.x.numpy(), s.y.numpy()
    paths = []
    for name, model in routed_files.items():
        paths.append(tmp_path / f"{name}.onnx")
        onnx.save_model(model, str(paths[-1]))
    native = dict(zip(routed_files, score_files(paths, x, y)))
    emulated = dict(zip(routed_files, score_files(paths, x, y, qemu_cpu="Haswell", timeout=900)))
    # Q/DQ in float (no integer kernels): each file's own answer, the same on every CPU
    exact = {k: top1(ort_logits(ort_session(m, level="basic"), x), y) for k, m in routed_files.items()}
    assert abs(emulated["portable"] - exact["portable"]) <= 0.5, (emulated, exact)
    assert abs(native["portable"] - exact["portable"]) <= 0.5, (native, exact)
    assert exact["x86-vnni"] - emulated["x86-vnni"] > 2.0, (emulated, exact)


def test_unknown_cpu_flags_are_not_called_saturating():
    assert int8_class([], "x86_64")["u8s8_saturates"] is None
    unknown = int8_class([], "x86_64")
    assert "saturate" not in (target_warning({"precision": "int8", "target": "x86-vnni"}, unknown) or "")
