"""`validate`: graphs broken on purpose fail with a message naming the failure; branch coverage; JUnit; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeconv.artifacts.card import encode_props as write_metadata
from edgeconv.artifacts.card import read_metadata
from edgeconv.export.branches import instrument, record
from edgeconv.measure.validate import FAILED, PASSED, SKIPPED, ort_session, validate_onnx


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeconv", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ckpt(trained):
    return trained("routed-tiny")


@pytest.fixture(scope="module")
def good(ckpt, tmp_path_factory) -> Path:
    """An exported graph made through the CLI (static conv routing: quick to export)."""
    out = tmp_path_factory.mktemp("validate") / "good.onnx"
    r = _cli("export", str(ckpt), "-o", str(out), "--routing", "static:conv")
    assert r.returncode == 0, r.stderr
    assert out.exists() and read_metadata(out)["routing"] == "static:conv"
    return out


def _save(proto, path: Path) -> Path:
    onnx.save_model(proto, str(path))
    return path


def test_good_graph_passes_every_check(good, ckpt):
    report = validate_onnx(good, limit=100)
    assert report.passed and report.summary().startswith("PASSED")
    assert report.source == str(ckpt.resolve())  # found through the metadata
    statuses = {c.name: c.status for c in report.checks}
    assert statuses == {
        "onnx checker": PASSED,
        "shape inference": PASSED,
        "opset": PASSED,
        "onnxruntime session": PASSED,
        "parity": PASSED,
        "branch coverage": SKIPPED,
        "dynamic batch": PASSED,
    }


def test_perturbed_weight_fails_parity(good, ckpt, tmp_path):
    proto = onnx.load(str(good))
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    init = next(t for t in proto.graph.initializer if t.name in conv_weights)
    w = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array((w + 0.05).astype(w.dtype), init.name))
    report = validate_onnx(_save(proto, tmp_path / "perturbed.onnx"), against=ckpt, limit=100)
    assert not report.passed
    parity = report.check("parity")
    assert parity.status == FAILED and "outputs differ from PyTorch" in parity.detail
    assert parity.data["max_abs"] > 1e-4
    assert report.check("onnx checker").status == PASSED  # structurally fine, numerically wrong
    assert "FAILED" in report.summary() and "parity" in report.summary()


def test_removed_node_fails_the_checker(good, tmp_path):
    proto = onnx.load(str(good))
    idx = next(i for i, n in enumerate(proto.graph.node) if n.op_type == "Gelu")
    removed = proto.graph.node[idx]
    missing = removed.output[0]
    del proto.graph.node[idx]
    report = validate_onnx(_save(proto, tmp_path / "holed.onnx"), limit=20)
    checker = report.check("onnx checker")
    assert checker.status == FAILED and missing in checker.detail
    assert report.check("parity").status == SKIPPED  # nothing numeric runs on a broken graph
    assert not report.passed


def test_wrong_opset_fails_with_the_operators_it_lacks(good, tmp_path):
    proto = onnx.load(str(good))
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 13
    report = validate_onnx(_save(proto, tmp_path / "opset13.onnx"), limit=20)
    opset = report.check("opset")
    assert opset.status == FAILED
    assert "declares opset 13 but was exported with opset" in opset.detail
    assert "Gelu" in opset.detail  # Gelu exists from opset 20 only
    assert not report.passed


def test_raised_opset_is_a_note_not_a_failure(good):
    from edgeconv.measure.validate import _check_opset

    proto = onnx.load(str(good))
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 21  # what a later tool such as a quantizer may do
    check = _check_opset(proto, read_metadata(good))
    assert check.status == PASSED and "now declares 21" in check.detail


def test_missing_source_skips_parity_with_a_note(good, tmp_path):
    proto = onnx.load(str(good))
    write_metadata(proto, {"source_path": ""})
    report = validate_onnx(_save(proto, tmp_path / "nosource.onnx"), limit=20)
    parity = report.check("parity")
    assert parity.status == SKIPPED and "--against" in parity.detail
    assert report.passed and "skipped" in report.summary()


# ----------------------------------------------------------------------------------------------- branch coverage
def _if_model(threshold: float) -> onnx.ModelProto:
    """input -> If(min(input) > threshold): then x*2 else (If(max(x) < 0): x*3 else x-1), digits-shaped."""

    def branch(name, nodes, out):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

    inner = helper.make_node(
        "If",
        ["neg"],
        ["inner_out"],
        then_branch=branch("t2", [helper.make_node("Mul", ["x", "three"], ["y3"])], "y3"),
        else_branch=branch("e2", [helper.make_node("Sub", ["x", "one"], ["ym"])], "ym"),
    )
    else_nodes = [
        helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
        helper.make_node("Less", ["mx", "zero"], ["neg"]),
        inner,
    ]
    nodes = [
        helper.make_node("Identity", ["input"], ["x"]),
        helper.make_node("ReduceMin", ["x"], ["mn"], keepdims=0),
        helper.make_node("Greater", ["mn", "thr"], ["cond"]),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            then_branch=branch("t1", [helper.make_node("Mul", ["x", "two"], ["y2"])], "y2"),
            else_branch=branch("e1", else_nodes, "inner_out"),
        ),
        helper.make_node("Flatten", ["y"], ["flat"]),
        helper.make_node("Slice", ["flat", "s0", "s1", "ax"], ["logits"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("thr", threshold), ("two", 2.0), ("three", 3.0), ("one", 1.0), ("zero", 0.0))
    ]
    inits += [onnx.numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s0", 0), ("s1", 10), ("ax", 1))]
    graph = helper.make_graph(
        nodes,
        "ifs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    from edgeconv.data.sources import digits_preprocessing

    write_metadata(model, {"preprocessing": digits_preprocessing(32), "routing": "gated"})
    return model


def test_instrumented_copy_reports_every_if_decision():
    model = _if_model(threshold=0.0)
    inst, ifs = instrument(model)
    onnx.checker.check_model(inst, full_check=True)
    assert [(f.index, f.parent, f.parent_branch) for f in ifs] == [(1, None, None), (2, 1, "else")]
    sess = ort_session(inst.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    cases = {
        "positive": (np.full((1, 1, 32, 32), 0.5), (1, -1)),  # outer then; inner never reached
        "negative": (np.full((1, 1, 32, 32), -0.5), (0, 1)),  # outer else, inner then
        "mixed": (np.linspace(-1, 1, 1024).reshape(1, 1, 32, 32), (0, 0)),
    }
    for x, codes in cases.values():
        outs = dict(zip(names, sess.run(None, {"input": x.astype(np.float32)})))
        assert (int(outs[ifs[0].output][0]), int(outs[ifs[1].output][0])) == codes
        record(ifs, outs, batch=1)
    assert ifs[0].taken == {"then": 1, "else": 2} and ifs[1].taken == {"then": 1, "else": 1}
    # the instrumented copy computes the same logits as the original
    x = np.linspace(-1, 1, 1024, dtype=np.float32).reshape(1, 1, 32, 32)
    plain = ort_session(model.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_array_equal(plain, sess.run(None, {"input": x})[0])


def test_untaken_branch_is_reported_unvalidated(tmp_path):
    # normalised digits are always above -100: the outer else-branch (and the If inside it) is never taken
    path = _save(_if_model(threshold=-100.0), tmp_path / "ifs.onnx")
    report = validate_onnx(path, limit=30)
    cov = report.check("branch coverage")
    assert cov.status == FAILED and "unvalidated" in cov.detail and "If #1 else" in cov.detail
    assert cov.data["unvalidated"] == ["If #1 else (nested If)", "If #2 then (1 nodes)", "If #2 else (1 nodes)"]
    assert report.check("parity").status == SKIPPED
    assert not report.passed
    assert validate_onnx(path, limit=30, allow_uncovered=True).check("branch coverage").status == PASSED


# ----------------------------------------------------------------------------------------------- CLI and JUnit
@pytest.mark.slow  # over 5 s: `make test` runs it, `make test-fast` stays a quick loop
def test_cli_validate_exit_codes_junit_and_json(good, tmp_path):
    junit, js = tmp_path / "v.xml", tmp_path / "v.json"
    r = _cli("validate", str(good), "--limit", "50", "--junit", str(junit), "--json", str(js))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout.splitlines()[-1]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "7" and suite.get("failures") == "0" and suite.get("skipped") == "1"
    assert json.loads(js.read_text())["passed"] is True

    proto = onnx.load(str(good))
    for o in proto.opset_import:
        o.version = 13
    bad = _save(proto, tmp_path / "bad.onnx")
    r = _cli("validate", str(bad), "--limit", "20", "--junit", str(junit))
    assert r.returncode == 1
    assert r.stdout.strip().splitlines()[-1].startswith("FAILED")
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert failures and any("opset 13" in f.get("message") for f in failures)

    r = _cli("validate", str(tmp_path / "missing.onnx"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_cli_export_rejects_bad_input(ckpt, tmp_path):
    r = _cli("export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--routing", "sometimes")
    assert r.returncode == 2 and "unknown routing" in r.stderr
    r = _cli("export", str(ckpt), "-o", str(tmp_path / "m.txt"))
    assert r.returncode == 2 and "must end in .onnx" in r.stderr
    assert not (tmp_path / "m.onnx").exists()
