"""The format table, the one onnxruntime session factory, the one subgraph walker and the routing vocabulary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgeconv.artifacts.formats import FORMATS, Format, format_of, is_format, sidecar_path, sidecar_paths
from edgeconv.common.errors import EdgeconvError


def test_every_suffix_belongs_to_exactly_one_format():
    seen: dict[str, str] = {}
    for f in FORMATS.values():
        for s in f.suffixes:
            assert s not in seen, (s, seen.get(s), f.name)
            seen[s] = f.name
    assert format_of("m.PT").name == "checkpoint" and format_of("x.plan").name == "engine"
    with pytest.raises(EdgeconvError, match=r"unknown artifact type '\.bin' \(known: \.ckpt, \.engine"):
        format_of("weights.bin")
    assert sidecar_path("a/m.int8.tflite") == Path("a/m.int8.tflite.json")
    assert sidecar_paths("m.engine")[1] == Path("m.json")


def test_a_new_format_is_one_row(monkeypatch):
    """Adding a format touches the table alone: suffix lookup, the runtime it maps to and its sidecar follow."""
    from edgeconv.runtime.backends import artifact_kind

    row = Format("openvino", (".xml",), "ort", "OpenVINO IR (test row)", sidecar=True)
    monkeypatch.setitem(FORMATS, row.name, row)
    assert format_of("m.xml") is row and is_format("m.XML", "openvino")
    assert artifact_kind(Path("m.xml")) == "ort"
    assert ".xml" in str(pytest.raises(EdgeconvError, format_of, "m.bin").value)
    assert dataclasses.is_dataclass(row) and row.suffix == ".xml"


def test_quantize_backends_write_the_suffixes_of_their_formats():
    from edgeconv.quantize import BACKENDS

    assert BACKENDS["ort"].suffixes == FORMATS["onnx"].suffixes
    assert BACKENDS["tflite"].suffixes == FORMATS["tflite"].suffixes
    assert set(BACKENDS["tensorrt"].suffixes) == set(FORMATS["engine"].suffixes) | {".onnx"}


def test_one_session_factory_names_bad_levels():
    from edgeconv.runtime.onnxrt import LEVELS, session_options

    assert LEVELS == ("disable", "basic", "extended", "all")
    so = session_options("basic", threads=1)
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    with pytest.raises(EdgeconvError, match="unknown onnxruntime optimisation level 'fast'"):
        session_options("fast")


def test_the_walker_reaches_nested_branches():
    import onnx
    from onnx import TensorProto, helper

    from edgeconv.artifacts.graphwalk import count_op, graphs, nodes

    def branch(name: str, inner=None) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1])
        body = [inner] if inner is not None else [helper.make_node("Identity", ["x"], [f"{name}_y"])]
        if inner is not None:
            body.append(helper.make_node("Identity", [inner.output[0]], [f"{name}_y"]))
        return helper.make_graph(body, name, [], [out])

    inner_if = helper.make_node("If", ["c"], ["inner_y"], name="inner", then_branch=branch("t2"), else_branch=branch("e2"))
    outer = helper.make_node("If", ["c"], ["y"], name="outer", then_branch=branch("t1", inner_if), else_branch=branch("e1"))
    g = helper.make_graph(
        [outer],
        "top",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, [1]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    paths = [p for p, _ in graphs(g)]
    assert paths[0] == "" and sorted(paths[1:]) == [
        "outer.else_branch",
        "outer.then_branch",
        "outer.then_branch/inner.else_branch",
        "outer.then_branch/inner.then_branch",
    ]
    assert paths.index("outer.then_branch") < paths.index("outer.then_branch/inner.then_branch")
    assert count_op(g, "If") == 2 and sum(n.op_type == "Identity" for n in nodes(g)) == 4


def test_one_routing_vocabulary(trained, monkeypatch, capsys):
    from edgeconv.export.onnx import ROUTINGS
    from edgeconv.models import load_model, routers, set_routing
    from edgeconv.models.routed import ROUTING_MODES

    assert set(ROUTINGS) < set(ROUTING_MODES) and "gated" in ROUTING_MODES and "hard" not in ROUTING_MODES
    model, _ = load_model(trained("routed-tiny"))
    assert {m.mode for _, m in routers(model)} == {"gated"}
    set_routing(model, "hard")  # the old name is still accepted and becomes the one name
    assert {m.mode for _, m in routers(model)} == {"gated"}
    set_routing(model, "select")
    assert {m.mode for _, m in routers(model)} == {"select"}
    from edgeconv.models.routed import routing_mode

    assert routing_mode("hard") == "gated"


@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_unknown_routing_is_one_line(command, trained, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    args = [command, str(trained("routed-tiny")), "--routing", "bogus"]
    if command == "inspect":
        args[2:2] = ["digits:0"]
        args += ["-o", str(tmp_path / "ins")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    assert "--routing 'bogus': unknown; choose one of: gated, soft, select" in str(res.exception)
    assert not (tmp_path / "ins").exists()
