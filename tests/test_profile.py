"""`bench --profile`: per-operator time from onnxruntime's profiler (If branches included, the If not counted
twice) and from LiteRT's (XNNPACK operators and built-in kernels), FP32 and INT8 side by side, a PNG, and TFLite's
delegate partitions."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest


@pytest.fixture(scope="module")
def routed_pair(exported, tmp_path_factory, digits_pre):
    from edgeconv.quantize.calibration import load_calibration
    from edgeconv.quantize.ort import Int8Options, quantize_int8

    fp32 = exported("routed-tiny")
    q = tmp_path_factory.mktemp("prof") / "routed.int8.onnx"
    onnx.save_model(
        quantize_int8(onnx.load(str(fp32)), load_calibration(digits_pre), Int8Options(ops="weights")).model, str(q)
    )
    return fp32, q


def _x(digits_pre, n=4):
    from edgeconv.data.sources import load_samples

    return load_samples("digits", digits_pre, "test", limit=n).x.numpy().astype(np.float32)


def test_ort_profile_counts_branch_nodes_once(routed_pair, digits_pre):
    from edgeconv.artifacts.graphwalk import nodes
    from edgeconv.measure.profile import CONTROL_FLOW, profile_ort

    fp32, _ = routed_pair
    p = profile_ort(fp32, _x(digits_pre, 1), runs=5)
    assert p.precision == "fp32" and p.wall_ms > 0 and p.batch == 1
    assert not set(p.by_type) & set(CONTROL_FLOW)
    assert {"Conv", "MatMul", "Softmax"} <= set(p.by_type)
    assert all(v["ms"] > 0 and v["count"] >= 1 for v in p.by_type.values())
    graph = onnx.load(str(fp32)).graph
    branch_only = {n.op_type for n in nodes(graph)} - {n.op_type for n in graph.node}
    assert branch_only & set(p.by_type), branch_only  # kernels inside the taken If branches are counted
    assert p.top and p.top[0]["ms"] >= p.top[-1]["ms"]


def test_int8_profile_shows_the_integer_kernels_and_their_qdq(routed_pair, digits_pre):
    from edgeconv.measure.profile import profile_ort, profile_rows

    fp32, q = routed_pair
    x = _x(digits_pre)
    a, b = profile_ort(fp32, x, runs=5), profile_ort(q, x, runs=5)
    assert b.precision == "int8" and b.batch == 4
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(b.by_type)
    assert any(op.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger")) for op in b.by_type)
    rows = profile_rows([a, b])
    assert rows[0]["op type"] == "(wall time per run)"
    assert {f"{fp32.name} ms", f"{q.name} ms", f"{q.name} %"} <= set(rows[1])
    pct = [float(r[f"{q.name} %"]) for r in rows[1:] if r[f"{q.name} %"] not in ("-", "")]
    assert 0 < sum(pct) <= 100.01


def test_cli_bench_profile_writes_table_json_and_png(routed_pair, trained, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    fp32, q = routed_pair
    res = CliRunner().invoke(
        app,
        [
            "bench",
            str(trained("routed-tiny")),
            str(fp32),
            str(q),
            "--iters",
            "5",
            "--warmup",
            "1",
            "--limit",
            "32",
            "--profile-plot",
            str(tmp_path / "p.png"),
            "--json",
            str(tmp_path / "b.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "per-operator profile" in res.output
    prof = json.loads((tmp_path / "b.json").read_text())["profile"]
    assert [p["precision"] for p in prof] == ["fp32", "int8"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_refuses_what_it_cannot_profile(trained, tmp_path):
    from edgeconv.common.errors import EdgeconvError
    from edgeconv.measure.profile import profile_artifact, run_profiles

    with pytest.raises(EdgeconvError, match="give at least one .onnx, .tflite or TensorRT engine"):
        run_profiles([trained("routed-tiny")], "digits", "test", 1)
    with pytest.raises(EdgeconvError, match="TensorRT layer profiles need TensorRT"):
        profile_artifact(tmp_path / "m.engine", np.zeros((1, 1, 32, 32), np.float32))
    from edgeconv.measure.profile import _tensorrt_here, check_profilable

    if not _tensorrt_here():
        with pytest.raises(EdgeconvError, match="TensorRT layer profiles need TensorRT and a GPU"):
            check_profilable([tmp_path / "m.engine"])


def test_profile_rows_show_tflite_operators_outside_xnnpack():
    """Untimed (TFLite) columns give each operator type's count and how many ran in built-in kernels."""
    from edgeconv.measure.profile import OpProfile, profile_rows

    ort = OpProfile("m.onnx", "onnxruntime", "fp32", 1, 5, 2.0, {"Conv": {"ms": 1.5, "count": 3}})
    tfl = OpProfile(
        "m.int8.tflite",
        "ai_edge_litert",
        "int8",
        1,
        5,
        3.0,
        {"GELU": {"ms": None, "count": 4, "fallback": 4}, "CONV_2D": {"ms": None, "count": 3, "fallback": 0}},
    )
    rows = {r["op type"]: r for r in profile_rows([ort, tfl])}
    assert rows["Conv"]["m.onnx ms"] == "1.500" and rows["Conv"]["m.int8.tflite ms"] == "-"
    assert rows["GELU"]["m.int8.tflite ms"] == "x4 (4 built-in)" and rows["CONV_2D"]["m.int8.tflite ms"] == "x3"


@pytest.fixture(scope="module")
def hvt_tflite(trained, digits_pre, tmp_path_factory):
    """hvt-tiny as FP32 and full-integer INT8 .tflite (full-integer leaves GELU, Softmax, BatchMatMul and the
    LayerNorm arithmetic in TFLite's built-in kernels)."""
    pytest.importorskip("litert_torch")
    from edgeconv.models import load_model
    from edgeconv.quantize.tflite import convert_fp32, quantize_tflite

    model, ck = load_model(trained("hvt-tiny"))
    d = tmp_path_factory.mktemp("tflprof")
    fp32, q = d / "hvt.tflite", d / "hvt.all.tflite"
    convert_fp32(model, ck["preprocessing"], fp32)
    quantize_tflite(fp32, q, "int8", _x(digits_pre, 8), ops="all")
    return fp32, q


@pytest.mark.slow
def test_tflite_profile_times_xnnpack_operators_and_reports_partitions(hvt_tflite, digits_pre):
    from edgeconv.measure.profile import profile_tflite

    p = profile_tflite(hvt_tflite[0], _x(digits_pre, 1), runs=5)
    assert p.wall_ms > 0 and p.by_type and p.top
    assert all(v["ms"] is not None and v["ms"] >= 0 and v["count"] >= 1 for v in p.by_type.values())
    # FP32: XNNPACK runs everything, so every timed operator is one of its own (none marked built-in)
    assert not [op for op in p.by_type if op.endswith("[built-in]")]
    assert any(op.startswith("Convolution (NHWC, F32)") for op in p.by_type), p.by_type
    assert any(op.startswith("Fully Connected (NC, F32)") for op in p.by_type), p.by_type
    assert "XNNPACK delegate partition" in p.notes[0] and "built-in kernels only" in p.notes[1]
    assert p.delegate["partitions"] == 1 and p.delegate["fallback_ops"] == {}
    assert p.delegate["wall_ms_builtin_kernels"] > 0


@pytest.mark.slow
def test_tflite_int8_profile_times_each_operator_that_left_xnnpack(hvt_tflite, digits_pre):
    """The operators LiteRT's profiler timed in built-in kernels are exactly those the delegation walk found
    outside XNNPACK - two independent views of the same graph, equal on every CPU."""
    from edgeconv.measure.profile import profile_rows, profile_tflite

    fp32, q = hvt_tflite
    a, b = profile_tflite(fp32, _x(digits_pre, 1), runs=5), profile_tflite(q, _x(digits_pre, 1), runs=5)
    assert b.precision == "int8" and b.delegate["partitions"] > 1
    built_in = {op.removesuffix(" [built-in]"): v["count"] for op, v in b.by_type.items() if op.endswith("[built-in]")}
    assert built_in == b.delegate["fallback_ops"] and {"GELU", "SOFTMAX", "BATCH_MATMUL"} <= set(built_in)
    assert any("QS8" in op or "QC8" in op for op in b.by_type), b.by_type  # the int8 XNNPACK kernels
    rows = {r["op type"]: r for r in profile_rows([a, b])}
    assert rows["SOFTMAX [built-in]"]["hvt.tflite ms"] == "-" and float(rows["SOFTMAX [built-in]"]["hvt.all.tflite ms"]) > 0


@pytest.mark.slow
def test_tflite_profile_without_the_c_profiler_keeps_operator_counts(hvt_tflite, digits_pre, monkeypatch):
    """Where LiteRT's C profiler cannot be bound (another wheel, another C API), the profile says so and still
    gives the operator counts and the delegate split."""
    from edgeconv.measure.profile import profile_tflite
    from edgeconv.runtime import tflite_profile as litertprof

    def unavailable():
        raise litertprof.ProfilerUnavailable("libLiteRt.so has not the profiler C API this binding expects")

    monkeypatch.setattr(litertprof, "_library", unavailable)
    p = profile_tflite(hvt_tflite[1], _x(digits_pre, 1), runs=3)
    assert p.by_type and all(v["ms"] is None for v in p.by_type.values())
    assert p.by_type["GELU"]["fallback"] == p.by_type["GELU"]["count"] > 0
    assert "no per-operator times" in p.notes[-1] and "C API" in p.notes[-1]
