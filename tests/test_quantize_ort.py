"""onnxruntime quantization: calibration on real samples, INT8 inside `If` branches, FP16, --max-drop, records,
and bad input that fails with one line and leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeconv.common.errors import EdgeconvError


@pytest.fixture(scope="session")
def digits_eval(digits_pre):
    from edgeconv.data.sources import load_samples

    s = load_samples("digits", digits_pre, "test")
    return s.x.numpy(), s.y.numpy()


@pytest.fixture(scope="session")
def calib(digits_pre):
    from edgeconv.quantize.calibration import load_calibration

    return load_calibration(digits_pre)


def qdq_in_branches(graph) -> int:
    """Q/DQ nodes inside `If` branches (not at the top level)."""
    from edgeconv.quantize.onnx_graph import subgraph_attrs

    def count(g) -> int:
        n = sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in g.node)
        return n + sum(count(sub) for node in g.node for _, sub in subgraph_attrs(node))

    return sum(count(sub) for node in graph.node for _, sub in subgraph_attrs(node))


# ----------------------------------------------------------------------------------------------- calibration
def test_calibration_reads_the_shipped_real_digits(calib):
    from edgeconv.quantize.calibration import MIXED_BATCH, as_ort_reader

    assert calib.size == 100 and len(calib.sha256) == 64
    assert calib.record()["source"].startswith("imagefolder:")
    # Real images, not noise: pixel values are normalised digits, many exactly at the background level.
    x = calib.samples.x
    assert x.shape == (100, 1, 32, 32) and float((x == x.min()).float().mean()) > 0.2
    feeds = calib.feeds("input")
    assert len(feeds) == 100 + 100 // MIXED_BATCH
    assert feeds[0]["input"].shape == (1, 1, 32, 32) and feeds[-1]["input"].shape == (MIXED_BATCH, 1, 32, 32)
    reader = as_ort_reader(feeds)
    got = 0
    while reader.get_next() is not None:
        got += 1
    assert got == len(feeds) and reader.get_next() is None


def test_calibration_errors_name_the_problem(tmp_path, digits_pre):

    from edgeconv.quantize.calibration import load_calibration

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgeconvError, match="calibration data: .*no images found"):
        load_calibration(digits_pre, calib=empty)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "a.png").write_bytes(b"not a png")
    with pytest.raises(EdgeconvError, match="calibration data: .*no readable images .*a.png"):
        load_calibration(digits_pre, calib=wrong)
    rgb = {**digits_pre, "channels": 3, "dataset": "mine"}
    with pytest.raises(EdgeconvError, match="no calibration data for this model"):
        load_calibration(rgb)
    with pytest.raises(EdgeconvError, match="not both"):
        load_calibration(digits_pre, calib=empty, data="digits")


# ----------------------------------------------------------------------------------------------- INT8 in If branches
@pytest.fixture(scope="session")
def routed_int8(exported, calib, digits_eval):
    from edgeconv.quantize.ort import Int8Options, quantize_int8

    float_model = onnx.load(str(exported("routed-tiny")))
    res = quantize_int8(
        float_model, calib, Int8Options(per_channel=True, ops="weights"), eval_x=digits_eval[0], eval_y=digits_eval[1]
    )
    return float_model, res


def test_routed_int8_keeps_its_ifs_quantizes_inside_them_and_validates(routed_int8, exported, digits_eval):
    from edgeconv.export.onnx import count_if_nodes
    from edgeconv.quantize.ort import ort_logits, ort_session

    float_model, res = routed_int8
    model = res.model
    assert count_if_nodes(model) == count_if_nodes(float_model) == 4
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert qdq_in_branches(model.graph) > 20, "branches were left float"
    # Every branch got calibration samples: the router sends real digits both ways.
    assert res.unreached == []
    assert any("::" in q for q in res.quantized)  # node ids inside branches
    # Mixed batches go through the per-sample select branch, batch 1 through the pure branches: each branch has its
    # own calibrated scales (and the select branch keeps two GELUs exact that feed a float LayerNorm), so logits
    # differ by a few quantization steps; a sample that sits at a router's threshold may take the other branch.
    x = digits_eval[0][:256]
    sess = ort_session(model)
    batched = ort_logits(sess, x, batch=16)
    single = ort_logits(sess, x, batch=1)
    close = np.abs(batched - single).max(axis=1) < 0.3
    assert close.mean() >= 0.98
    assert (batched.argmax(1) == single.argmax(1)).mean() >= 0.97


def test_routed_int8_accuracy_within_one_point(routed_int8):
    _, res = routed_int8
    assert res.float_top1 > 90
    assert res.float_top1 - res.int8_top1 <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["acmix-tiny", "hvt-tiny", "can-tiny", "resformer-tiny"])
def test_int8_within_one_point_for_every_family(name, exported, calib, digits_eval):
    from edgeconv.quantize.ort import Int8Options, quantize_int8

    res = quantize_int8(
        onnx.load(str(exported(name))),
        calib,
        Int8Options(per_channel=True, ops="weights"),
        eval_x=digits_eval[0],
        eval_y=digits_eval[1],
    )
    assert res.float_top1 > 85
    assert res.float_top1 - res.int8_top1 <= 1.0
    assert len(res.quantized) > 3


def test_weights_policy_leaves_activation_matmuls_and_softmax_float(routed_int8):
    _, res = routed_int8
    assert res.float_ops.get("Softmax", 0) > 0 and res.float_ops.get("MatMul (activation x activation)", 0) > 0
    # Softmax is never followed by a QuantizeLinear, and no activation x activation MatMul reads two dequantized
    # inputs: those ops compute in float under the weights policy.
    from edgeconv.quantize.onnx_graph import subgraph_attrs

    def violations(g, outer_inits=frozenset()) -> list[str]:
        inits = set(outer_inits) | {t.name for t in g.initializer}
        producers = {o: n.op_type for n in g.node for o in n.output}
        dq_of_const = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
        consumers: dict[str, list[str]] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n.op_type)
        bad = [n.name for n in g.node if n.op_type == "Softmax" and "QuantizeLinear" in consumers.get(n.output[0], [])]
        bad += [
            n.name
            for n in g.node
            if n.op_type == "MatMul"
            and not any(i in inits or i in dq_of_const for i in n.input)
            and all(producers.get(i) == "DequantizeLinear" for i in n.input)
        ]
        for n in g.node:
            for _, sub in subgraph_attrs(n):
                bad += violations(sub, inits)
        return bad

    assert violations(res.model.graph) == []


def test_weight_matmuls_keep_float_outputs_and_run_as_matmul_integer_to_float(routed_int8, tmp_path):
    """No QuantizeLinear after a weight MatMul whose consumers are float: onnxruntime fuses DequantizeLinear x2 ->
    MatMul into MatMulIntegerToFloat (integer GEMM, float output) instead of QLinearMatMul -> DequantizeLinear."""
    import onnxruntime as ort

    from edgeconv.quantize.onnx_graph import subgraph_attrs

    def walk(g, outer=frozenset()):
        inits = set(outer) | {t.name for t in g.initializer}
        yield g, inits
        for n in g.node:
            for _, sub in subgraph_attrs(n):
                yield from walk(sub, inits)

    weight_matmuls, after_q = 0, []
    for g, inits in walk(routed_int8[1].model.graph):
        dq_of_const = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
        for n in g.node:
            if n.op_type == "MatMul" and n.input[1] in dq_of_const:
                weight_matmuls += 1
                after_q += [c.name for c in g.node if n.output[0] in c.input and c.op_type == "QuantizeLinear"]
    assert weight_matmuls > 0 and after_q == []
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no CPU-specific NCHWc layout
    ort.InferenceSession(routed_int8[1].model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fused = [n for g, _ in walk(onnx.load(str(tmp_path / "opt.onnx")).graph) for n in g.node]
    assert sum(n.op_type == "MatMulIntegerToFloat" for n in fused) == weight_matmuls
    assert not any(n.op_type == "QLinearMatMul" for n in fused)


def test_requantized_gelus_go_tanh_inside_if_branches_too_and_agree_with_exact(routed_int8, calib, digits_eval):
    """routed-tiny's GELUs sit at the top level and inside its `If` branches: every re-quantized one goes tanh
    (quantize/gelu.py), and the file is as close to the float model as the --gelu exact file."""
    from onnx import helper

    from edgeconv.artifacts.graphwalk import graphs
    from edgeconv.quantize.ort import Int8Options, ort_logits, ort_session, quantize_int8

    float_model, res = routed_int8
    fast = res.model
    exact = quantize_int8(float_model, calib, Int8Options(ops="weights", gelu="exact")).model

    def gelus(m):
        return [
            (path, helper.get_attribute_value(next(a for a in n.attribute if a.name == "approximate")))
            for path, g in graphs(m.graph)
            for n in g.node
            if n.op_type == "Gelu"
        ]

    tanh = [p for p, a in gelus(fast) if a == b"tanh"]
    assert {p for p in tanh if p}, "no tanh GELU inside an If branch"
    assert len(tanh) == res.gelu["tanh"] and len(gelus(fast)) - len(tanh) == len(res.gelu["exact"])
    # the per-sample select branch uses two GELU outputs in float: those stay exact, and the record says why
    assert set(res.gelu["exact"].values()) <= {"its output is not only quantized again (per tensor)"}
    assert all(a == b"none" for _, a in gelus(exact))
    # A code that moves early moves others after it, so the two files' logits differ by about the INT8 noise; what
    # must hold is that the tanh file is as close to the float model as the exact one.
    x, y = digits_eval
    lt, le, lf = (ort_logits(ort_session(m), x) for m in (fast, exact, float_model))
    assert (lt.argmax(1) == lf.argmax(1)).mean() >= (le.argmax(1) == lf.argmax(1)).mean() - 0.01
    assert np.abs(lt - lf).mean() <= 1.1 * np.abs(le - lf).mean()
    assert abs((lt.argmax(1) == y).mean() - (le.argmax(1) == y).mean()) <= 0.01


@pytest.mark.slow  # over 5 s: `make test` runs it, `make test-fast` stays a quick loop
def test_auto_floats_only_kinds_without_weight_share_when_int8_is_not_slower(exported, calib, tmp_path):
    """`--ops auto` may put a kind back in float while INT8 pays only when the kind holds under 1% of the weights
    (no size cost) and the timing says it is clearly faster; the record names the share and the interval."""
    from edgeconv.quantize.ort import FREE_WEIGHT_SHARE, Int8Options, QuantTree, quantize_int8

    float_model = onnx.load(str(exported("routed-tiny")))
    share = QuantTree(float_model, calib, Int8Options(), tmp_path).weight_share()
    assert abs(sum(share.values()) - 1.0) < 1e-9
    assert share["input Conv"] < FREE_WEIGHT_SHARE < share["Conv"]  # the image conv reads 1 channel
    res = quantize_int8(float_model, calib, Int8Options(ops="auto"))

    def upper(ratio: str) -> float:  # "0.963x [0.948, 0.993]" -> 0.993
        return float(ratio.rsplit(",", 1)[1].rstrip("]"))

    for d in res.latency["decisions"]:
        if "weights" in d:  # the free-kind rule: no size cost, clearly faster
            assert float(d["weights"].rstrip("%")) < 100 * FREE_WEIGHT_SHARE and upper(d["gain"]) < 1.0
            assert d["float kind"] in res.kinds_left_float
        elif "float kind" in d:  # the size-paying rule: only while INT8 was clearly slower than float
            assert upper(d["gain"]) < 1.0


def test_free_kinds_stay_float_when_a_later_timing_says_int8_is_slower(exported, calib, monkeypatch):
    """The rule under fixed timings: the first round finds the image conv clearly faster in float (a free kind);
    the re-timing then says INT8 is clearly slower and no kind helps. The fall-back to every weight layer INT8 must
    not undo the free kind, and the record must say what the file is."""
    from edgeconv.quantize import ort

    calls = []

    def fake(sessions, x, seconds=2.0, min_runs=7, max_runs=200):
        calls.append(len(sessions))
        if len(calls) == 1:  # float, all-INT8, one trial per free kind: each free kind in float 0.875x
            return [[100.0] * 15, [80.0] * 15] + [[70.0] * 15] * (len(sessions) - 2)
        return [[100.0] * 15] + [[120.0] * 15] * (len(sessions) - 1)  # INT8 slower, nothing helps

    monkeypatch.setattr(ort, "interleaved_times", fake)
    float_model = onnx.load(str(exported("routed-tiny")))
    res = ort.quantize_int8(float_model, calib, ort.Int8Options(ops="auto"))
    assert calls[0] > 2, "routed-tiny has no free kind (its image conv should be one)"
    assert "input Conv" in res.kinds_left_float and "of the weights" in res.kinds_left_float["input Conv"]
    assert set(res.kinds_left_float) <= {k for k, v in res.kinds_left_float.items() if "of the weights" in v}
    stops = [d.get("stop", "") for d in res.latency["decisions"]]
    assert "no kind back in float is clearly faster" in stops
    assert not any("all weight layers INT8 for size" in t for t in stops)  # nothing the loop removed to undo
    # the image conv really is float in the file: no QLinear/integer conv reads the graph input
    image = res.model.graph.input[0].name
    assert any(n.op_type == "Conv" and n.input[0] == image for n in res.model.graph.node)


def test_auto_groups_the_image_conv_apart_from_dense_and_depthwise_convs():
    """`--ops auto` times kinds apart: the conv reading the image (3 channels, largest output) is its own kind."""
    from onnx import helper

    from edgeconv.quantize.ort import node_kind

    image = frozenset({"input"})
    stem = helper.make_node("Conv", ["input", "w0"], ["a"], group=1)
    dense = helper.make_node("Conv", ["a", "w1"], ["b"])
    dw = helper.make_node("Conv", ["b", "w2"], ["c"], group=48)
    mm = helper.make_node("MatMul", ["c", "w3"], ["d"])
    assert [node_kind(n, image) for n in (stem, dense, dw, mm)] == ["input Conv", "Conv", "depthwise Conv", "MatMul"]
    assert node_kind(stem) == "Conv"  # inside an If branch nothing reads the image directly


# ----------------------------------------------------------------------------------------------- --max-drop
@pytest.mark.slow
def test_max_drop_keeps_sensitive_layers_float_until_within_budget(exported, calib, digits_eval):
    from edgeconv.export.onnx import count_if_nodes
    from edgeconv.quantize.ort import Int8Options, quantize_int8

    float_model = onnx.load(str(exported("routed-tiny")))
    # Per-tensor ranges clipped at the 99th percentile are lossy enough that a 1-point budget needs mixed precision.
    opts = Int8Options(method="percentile", percentile=99.0, per_channel=False, ops="weights")
    res = quantize_int8(float_model, calib, opts, eval_x=digits_eval[0], eval_y=digits_eval[1], max_drop=1.0)
    assert res.float_top1 - res.plain_int8_top1 > 1.0, "plain INT8 met the budget; the test needs a lossy setting"
    assert res.kept_float, "no layer went back to float"
    assert res.float_top1 - res.int8_top1 <= 1.0
    assert len(res.quantized) > len(res.kept_float)
    assert [s["kept float"] for s in res.steps] == list(range(len(res.kept_float) + 1))
    assert count_if_nodes(res.model) == 4
    onnx.checker.check_model(res.model, full_check=True)


def test_max_drop_that_cannot_be_met_says_so(exported, calib, digits_eval):
    from edgeconv.quantize.ort import Int8Options, quantize_int8

    opts = Int8Options(method="percentile", percentile=99.0, per_channel=False, ops="weights")
    with pytest.raises(EdgeconvError, match="--max-drop 0.5 cannot be met.*nothing was written"):
        quantize_int8(
            onnx.load(str(exported("routed-tiny"))),
            calib,
            opts,
            eval_x=digits_eval[0],
            eval_y=digits_eval[1],
            max_drop=0.5,
            max_float=0,
        )


# ----------------------------------------------------------------------------------------------- FP16
def test_fp16_keeps_ifs_and_accuracy(exported, digits_eval):
    from edgeconv.export.onnx import count_if_nodes
    from edgeconv.quantize.ort import convert_fp16, ort_logits, ort_session, top1

    float_model = onnx.load(str(exported("routed-tiny")))
    half = convert_fp16(float_model)
    assert count_if_nodes(half) == 4
    inits = [t for t in half.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert inits, "no FP16 weights"
    a = top1(ort_logits(ort_session(float_model), digits_eval[0]), digits_eval[1])
    b = top1(ort_logits(ort_session(half, level="extended"), digits_eval[0]), digits_eval[1])
    assert abs(a - b) <= 0.6


# ----------------------------------------------------------------------------------------------- CLI, records, info
def test_cli_quantize_records_calibration_and_accuracy_and_info_shows_it(exported, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app
    from edgeconv.measure.describe import describe

    out = tmp_path / "m.int8.onnx"
    r = CliRunner().invoke(
        app,
        [
            "quantize",
            str(exported("routed-tiny")),
            "--int8",
            "--per-channel",
            "--ops",
            "weights",
            "--method",
            "percentile",
            "-o",
            str(out),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    rec = json.loads(meta["edgeconv.quantization"])
    assert rec["calibration"]["size"] == 100 and len(rec["calibration"]["sha256"]) == 64
    assert rec["method"] == "percentile" and rec["per_channel"] is True
    assert rec["accuracy"]["n"] == 359 and rec["accuracy"]["drop"] <= 1.0
    assert rec["if_nodes"] == 4 and rec["size_bytes"]["quantized"] == out.stat().st_size
    assert json.loads((tmp_path / "r.json").read_text())["calibration"]["sha256"] == rec["calibration"]["sha256"]
    assert meta["preprocessing"] and meta["classes"]  # the float model's metadata travels along
    desc = describe(out)
    assert "quantization" in desc and "100 samples" in desc["quantization"]["calibration"]
    assert "drop" in desc["quantization"]["accuracy"]
    gelu = rec["gelu"]  # the default form, with every rewritten layer's check
    assert gelu["tanh"] > 0 and all(v["max_deviation_steps"] < 0.5 for v in gelu["layers"].values())
    assert f"tanh form in {gelu['tanh']} re-quantized GELU(s)" in desc["quantization"]["GELU"]


def _run_cli(args):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    return CliRunner().invoke(app, args)


def test_bad_input_fails_clearly_and_writes_nothing(exported, trained, tmp_path):

    from edgeconv.artifacts import provenance, save_checkpoint
    from edgeconv.models import create_model

    onnx_in = str(exported("routed-tiny"))
    out = tmp_path / "q.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _run_cli(["quantize", onnx_in, "--int8", "--calib", str(empty), "-o", str(out)])
    assert isinstance(r.exception, EdgeconvError) and "no images found" in str(r.exception)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for i in range(3):
        (wrong / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    r = _run_cli(["quantize", onnx_in, "--int8", "--calib", str(wrong), "-o", str(out)])
    assert isinstance(r.exception, EdgeconvError) and "no readable images (3 unreadable" in str(r.exception)
    # A model whose inputs no shipped calibration set fits, and no --calib/--data given.
    rgb = tmp_path / "rgb.pt"
    pre = {"size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "layout": "NCHW"}
    save_checkpoint(
        rgb,
        create_model("hvt-tiny", in_chans=3),
        preprocessing=pre,
        classes=list("0123456789"),
        provenance_rec=provenance("test"),
    )
    r = _run_cli(["quantize", str(rgb), "--int8", "-o", str(out)])
    assert isinstance(r.exception, EdgeconvError) and "no calibration data" in str(r.exception)
    r = _run_cli(["quantize", onnx_in, "--int8", "--fp16", "-o", str(out)])
    assert isinstance(r.exception, EdgeconvError) and "exactly one" in str(r.exception)
    r = _run_cli(["quantize", onnx_in, "--int8", "-o", str(tmp_path / "q.tflite")])
    assert isinstance(r.exception, EdgeconvError) and "writes .onnx" in str(r.exception)
    r = _run_cli(["quantize", onnx_in, "--int8", "--method", "magic", "-o", str(out)])
    assert isinstance(r.exception, EdgeconvError) and "calibration method" in str(r.exception)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".onnx", ".tmp")] == []


def test_quantizing_a_quantized_model_is_refused(routed_int8, tmp_path):
    from edgeconv.artifacts.card import encode_props as write_metadata

    _, res = routed_int8
    m = onnx.ModelProto()
    m.CopyFrom(res.model)
    write_metadata(m, {"edgeconv.quantization": json.dumps({"precision": "int8"})})
    p = tmp_path / "q.onnx"
    onnx.save(m, str(p))
    r = _run_cli(["quantize", str(p), "--int8", "-o", str(tmp_path / "q2.onnx")])
    assert isinstance(r.exception, EdgeconvError) and "already quantized" in str(r.exception)
