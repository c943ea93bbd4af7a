"""ONNX export: routing as `If`, every zoo family, metadata, export failures that name the module, `info`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from edgeconv.artifacts import file_sha256
from edgeconv.common.errors import EdgeconvError
from edgeconv.export import count_if_nodes, export_onnx, read_metadata
from edgeconv.measure.describe import describe
from edgeconv.measure.validate import PASSED, SKIPPED, ort_session, validate_onnx
from edgeconv.models import create_model, load_model, routers, set_routing

# families whose checkpoints other tests share train for 12 epochs; the rest only need parity, 6 is enough
FAMILY_EPOCHS = {"acmix-tiny": 12, "hvt-tiny": 12, "can-tiny": 6, "resformer-tiny": 6, "saliency-tiny": 6}


@pytest.fixture(scope="module")
def routed_ckpt(trained):
    return trained("routed-tiny")


@pytest.fixture(scope="module")
def gated(exported):
    """The gated export of the routed fixture (the cached file other tests share: a gated export is slow)."""
    return exported("routed-tiny")


@pytest.mark.slow
def test_gated_export_holds_nested_ifs_and_metadata(gated, routed_ckpt):
    model, ckpt = load_model(routed_ckpt)
    depth = len(routers(model))
    proto = onnx.load(str(gated))
    # one If per decision level: all-attention? then all-conv? (else the per-sample mixed branch)
    assert count_if_nodes(proto) == 2 * depth
    assert [n.op_type for n in proto.graph.node].count("If") == depth
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = read_metadata(gated)
    assert meta["routing"] == "gated" and meta["family"] == "routed"
    assert meta["source_sha256"] == file_sha256(routed_ckpt)
    assert meta["config"] == ckpt["config"] and meta["classes"] == ckpt["classes"]
    assert meta["preprocessing"]["size"] == 32 and int(meta["opset"]) >= 18


@pytest.mark.slow
def test_gated_validates_with_both_branches_covered(gated, routed_ckpt):
    report = validate_onnx(gated, against=routed_ckpt)
    assert report.passed, report.summary()
    parity = report.check("parity")
    assert parity.data["max_abs"] <= 1e-4 and parity.data["top1_agreement"] == 100.0
    cov = report.check("branch coverage")
    assert cov.status == PASSED and cov.data["unvalidated"] == []
    for f in cov.data["ifs"]:
        assert sum(f["samples"].values()) + sum(f["batches"].values()) > 0
    top = [f for f in cov.data["ifs"] if f["parent"] is None]
    assert all(f["samples"].get("then", 0) > 0 and f["labels"]["then"] == "conv" for f in top)
    assert report.check("dynamic batch").status == PASSED


@pytest.mark.slow
def test_gated_graph_runs_only_the_routed_branch_per_sample(gated, routed_ckpt, digits_pre):
    """Batch-1 decisions in ONNX equal PyTorch's per-sample routes, and a mixed batch equals the samples alone."""
    from edgeconv.data.sources import load_samples
    from edgeconv.export.branches import instrument

    model, _ = load_model(routed_ckpt)
    set_routing(model, "gated")
    x = load_samples("digits", digits_pre, "test", limit=40).x
    with torch.no_grad():
        ref = model(x).numpy()
    first_block = routers(model)[0][1]
    routes = first_block.last_route.numpy()
    assert routes.any() and not routes.all(), "the trained router should send digits both ways"
    inst, ifs = instrument(onnx.load(str(gated)))
    sess = ort_session(inst.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    top = ifs[0]  # the first block's "whole batch to conv?" If
    for i in range(len(x)):
        outs = dict(zip(names, sess.run(None, {"input": x[i : i + 1].numpy()})))
        assert int(outs[top.output][0]) == int(not routes[i])
        np.testing.assert_allclose(outs["logits"][0], ref[i], atol=1e-4)
    mixed = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(mixed[0], ref, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("routing", ["soft", "static:conv"])
def test_soft_and_static_graphs_have_no_if_and_match(routing, routed_ckpt, tmp_path):
    res = export_onnx(routed_ckpt, tmp_path / "m.onnx", routing=routing)
    assert res.if_nodes == 0 and read_metadata(res.path)["routing"] == routing
    report = validate_onnx(res.path, against=routed_ckpt, limit=120)
    assert report.passed, report.summary()
    assert report.check("branch coverage").status == SKIPPED


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILY_EPOCHS))
def test_every_family_exports_and_validates(name, trained, tmp_path):
    ckpt = trained(name, epochs=FAMILY_EPOCHS[name])
    res = export_onnx(ckpt, tmp_path / f"{name}.onnx")
    assert res.routing == "none" and res.dynamic_batch
    report = validate_onnx(res.path)  # the source checkpoint comes from the metadata
    assert report.source == str(ckpt.resolve())
    assert report.passed, report.summary()
    parity = report.check("parity")
    assert parity.data["max_abs"] <= 1e-4 and parity.data["top1_agreement"] == 100.0
    assert parity.data["n"] == 359  # the whole digits test split


def test_static_batch_export_pins_batch_to_one(tmp_path, digits_pre):
    model = create_model("hvt-tiny")
    res = export_onnx(model, tmp_path / "static.onnx", dynamic_batch=False, simplify=False, preprocessing=digits_pre)
    proto = onnx.load(str(res.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert not res.simplified and read_metadata(res.path)["simplified"].startswith("no")
    sess = ort_session(res.path)
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], model.eval()(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_bare_model_export_leaves_the_callers_model_alone(tmp_path, digits_pre):
    model = create_model("routed-tiny").train()
    set_routing(model, "soft")
    res = export_onnx(model, tmp_path / "m.onnx", routing="static:attn", preprocessing=digits_pre)
    assert model.training and all(r.mode == "soft" for _, r in routers(model))
    assert res.routing == "static:attn" and res.if_nodes == 0
    meta = read_metadata(res.path)
    assert meta["source_sha256"] == "" and meta["classes"] == [str(i) for i in range(10)]


class _DataDependent(nn.Module):
    """Python control flow on a tensor value: cannot be traced into a graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class _Unsupported(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.special.bessel_j0(x)


def test_untraceable_module_is_named(tmp_path, digits_pre):
    model = create_model("hvt-tiny")
    model.blocks[0] = nn.Sequential(model.blocks[0], _DataDependent())
    with pytest.raises(EdgeconvError, match=r"cannot trace.*blocks\.0\.1.*_DataDependent"):
        export_onnx(model, tmp_path / "bad.onnx", preprocessing=digits_pre)
    assert not (tmp_path / "bad.onnx").exists()


def test_unsupported_operator_is_named_with_its_module(tmp_path, digits_pre):
    model = create_model("hvt-tiny")
    model.head.norm = nn.Sequential(model.head.norm, _Unsupported())
    with pytest.raises(EdgeconvError, match=r"bessel_j0.*head\.norm\.1"):
        export_onnx(model, tmp_path / "bad.onnx", preprocessing=digits_pre)
    assert not (tmp_path / "bad.onnx").exists()


def test_bad_arguments_are_readable_errors(tmp_path, digits_pre):
    with pytest.raises(EdgeconvError, match="no router"):
        export_onnx(create_model("can-tiny"), tmp_path / "x.onnx", routing="soft", preprocessing=digits_pre)
    with pytest.raises(EdgeconvError, match="unknown routing"):
        export_onnx(create_model("routed-tiny"), tmp_path / "x.onnx", routing="maybe", preprocessing=digits_pre)
    with pytest.raises(EdgeconvError, match="opset 13 is not supported"):
        export_onnx(create_model("routed-tiny"), tmp_path / "x.onnx", opset=13, preprocessing=digits_pre)
    with pytest.raises(EdgeconvError, match="no such file"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "x.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(EdgeconvError, match="not a readable ONNX|a text file, not an ONNX model"):
        read_metadata(tmp_path / "junk.onnx")


def test_info_describes_onnx(tmp_path, digits_pre):
    res = export_onnx(create_model("acmix-tiny"), tmp_path / "a.onnx", preprocessing=digits_pre)
    desc = describe(res.path)
    assert desc["graph"]["input input"] == "float32 (batch, 1, 32, 32)"
    assert desc["graph"]["output logits"] == "float32 (batch, 10)"
    assert desc["graph"]["If nodes"] == 0 and "Conv" in desc["graph"]["operators"]
    assert desc["edgeconv metadata"]["family"] == "acmix"
    assert desc["artifact"]["opset"] == f"ai.onnx={res.opset}"
