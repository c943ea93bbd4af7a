"""The per-layer INT8 report (`quantize --report`): it must point at the layer that is actually broken."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper


@pytest.fixture(scope="module")
def hvt_int8(exported, digits_pre, tmp_path_factory):
    from edgeconv.quantize import QuantizeRequest, quantize

    out = tmp_path_factory.mktemp("report") / "hvt.int8.onnx"
    rep = quantize(QuantizeRequest(exported("hvt-tiny"), out, "int8", "ort", ops="weights", report=True))
    return exported("hvt-tiny"), out, rep


@pytest.mark.slow
def test_report_covers_every_quantized_weight_layer_and_is_written_beside_the_file(hvt_int8):
    from edgeconv.quantize.ort_writer import report_paths

    src, out, rep = hvt_int8
    js, png = report_paths(out)
    assert js.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(js.read_text())
    model = onnx.load(str(out))
    quantized = {n.input[0][: -len("_quantized")] for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")}  # fmt: skip
    weights = {r["tensor"] for r in report["rows"] if r["kind"] in ("weight", "bias")}
    assert quantized and quantized == weights
    acts = [r for r in report["rows"] if r["kind"] == "activation"]
    assert acts and all(-10 < r["sqnr_db"] < 200 and -1 <= r["cosine"] <= 1 for r in acts)
    sq = [r["sqnr_db"] for r in report["rows"]]
    assert sq == sorted(sq), "rows come worst first"
    # 7-bit per-channel weights: about 6 dB per bit, well above 20 dB for every weight tensor
    assert all(r["sqnr_db"] > 20 for r in report["rows"] if r["kind"] == "weight")
    assert rep.tables and rep.tables[0][1][0]["kind"] == "activation"
    assert rep.record["sensitivity_report"]["json"] == js.name


@pytest.mark.slow
def test_a_layer_broken_on_purpose_comes_out_worst(hvt_int8, digits_pre):
    """Coarsen one weight layer's scales 16x (its weights rounded to a few levels): the report must name that weight
    as the worst, and its own output as worse than it was."""
    from edgeconv.quantize.calibration import load_calibration
    from edgeconv.quantize.sensitivity import int8_errors

    src, out, _ = hvt_int8
    float_model, model = onnx.load(str(src)), onnx.load(str(out))
    x = load_calibration(digits_pre).samples.x.numpy()[:16]
    before = int8_errors(float_model, model, x)
    inits = {t.name: t for t in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")
              and any(c.op_type == "MatMul" and c.input[1] == n.output[0] for c in model.graph.node))  # fmt: skip
    q, scale = numpy_helper.to_array(inits[dq.input[0]]), numpy_helper.to_array(inits[dq.input[1]])
    coarse = np.round(q.astype(np.float32) / 16).astype(q.dtype)
    inits[dq.input[0]].CopyFrom(numpy_helper.from_array(coarse, dq.input[0]))
    inits[dq.input[1]].CopyFrom(numpy_helper.from_array((scale * 16).astype(scale.dtype), dq.input[1]))
    after = int8_errors(float_model, model, x)
    broken = dq.input[0][: -len("_quantized")]
    worst_weight = next(r for r in after["rows"] if r["kind"] == "weight")
    assert worst_weight["tensor"] == broken
    old = next(r for r in before["rows"] if r["tensor"] == broken)["sqnr_db"]
    assert worst_weight["sqnr_db"] < old - 15
    assert min(r["sqnr_db"] for r in after["rows"] if r["kind"] == "activation") < min(
        r["sqnr_db"] for r in before["rows"] if r["kind"] == "activation"
    )


def test_report_is_refused_where_it_does_not_apply(cli, exported, tmp_path):
    code, err = cli("quantize", str(exported("routed-tiny")), "--fp16", "--report", "-o", str(tmp_path / "m.onnx"))
    assert code == 2 and "--report" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()
