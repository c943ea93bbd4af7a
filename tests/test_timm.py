"""Users' timm hybrids (randomly initialised, pretrained=False) through edgeconv: checkpoint, export, parity.

Runs in the timm venv (`make test-timm`): timm needs torchvision, which only imports beside torch 2.14.1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.timm

SIZE = 64
PRE = {"size": SIZE, "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "layout": "NCHW"}
HYBRIDS = ["levit_128s", "mobilevitv2_050", "fastvit_t8"]


def _model(name: str):
    from edgeconv.models import create_model

    torch.manual_seed(0)
    return create_model(f"timm:{name}", num_classes=10, in_chans=3, img_size=SIZE).eval()


@pytest.mark.parametrize("name", HYBRIDS)
def test_timm_hybrid_exports_with_dynamic_batch_and_matches_pytorch(name, tmp_path):
    import onnxruntime as ort

    from edgeconv.artifacts import provenance, save_checkpoint
    from edgeconv.card import read_metadata
    from edgeconv.export.onnx import export_onnx

    model = _model(name)
    ckpt = save_checkpoint(
        tmp_path / f"{name}.pt",
        model,
        preprocessing=PRE,
        classes=[str(i) for i in range(10)],
        provenance_rec=provenance("pytest"),
    )
    res = export_onnx(ckpt, tmp_path / f"{name}.onnx")
    assert res.dynamic_batch and res.family == "timm"
    assert read_metadata(res.path)["config"]["timm_name"] == name
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == (batch, 10)
        assert np.abs(out - ref).max() <= 1e-4


def test_timm_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    from edgeconv.artifacts import load_model, provenance, save_checkpoint

    model = _model("levit_128s")
    path = save_checkpoint(
        tmp_path / "m.pt", model, preprocessing=PRE, classes=[str(i) for i in range(10)], provenance_rec=provenance("pytest")
    )
    again, ckpt = load_model(path)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert ckpt["config"]["timm_name"] == "levit_128s"


def test_unknown_timm_name_is_a_clear_error():
    from edgeconv.errors import EdgeconvError
    from edgeconv.models import create_model

    with pytest.raises(EdgeconvError, match="timm has no model named"):
        create_model("timm:not_a_real_model_xyz")


def test_pruning_a_timm_vit_names_the_attention_module_it_cannot_prune():
    from edgeconv.compress.prune import PruneRequest, prune_model
    from edgeconv.errors import EdgeconvError

    model = _model("levit_128s")
    with pytest.raises(EdgeconvError, match=r"levit_128s: cannot prune attention module timm\.models\.levit\.\w+"):
        prune_model(model, PRE, None, PruneRequest(heads=0.3, criterion="l1"))


def test_a_timm_vit_is_pruned_to_half_the_macs_with_num_heads_kept_true_and_reloads(tmp_path):
    """timm's Attention and Mlp get gradient-ranked head and channel pruning; the result is a dense timm model
    whose num_heads/attn_dim match its weights, reloads from a weights_only checkpoint, exports and matches."""
    import onnxruntime as ort

    from edgeconv.artifacts import load_model, provenance, save_checkpoint
    from edgeconv.compress.prune import PruneRequest, prune_model
    from edgeconv.data import Samples
    from edgeconv.export.onnx import export_onnx
    from edgeconv.models import count_params_macs

    model = _model("deit_tiny_patch16_224")
    g = torch.Generator().manual_seed(0)
    calib = Samples(torch.randn(64, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (64,), generator=g),
                    [str(i) for i in range(10)], "random")  # fmt: skip
    pruned, plan = prune_model(model, PRE, calib, PruneRequest(target_macs=0.5, criterion="gradient", batches=8))
    _, macs0 = count_params_macs(model, PRE)
    _, macs1 = count_params_macs(pruned, PRE)
    assert macs1 <= 0.55 * macs0
    heads = [lp for lp in plan.layers if lp.kind == "heads"]
    assert len(heads) == 12 and any(len(lp.keep) < lp.size for lp in plan.layers)
    for blk in pruned.net.blocks:
        a = blk.attn
        assert a.qkv.out_features == 3 * a.num_heads * a.head_dim == 3 * a.attn_dim
        assert a.proj.in_features == a.attn_dim and blk.mlp.fc2.in_features == blk.mlp.fc1.out_features
    path = save_checkpoint(tmp_path / "p.pt", pruned, preprocessing=PRE, classes=[str(i) for i in range(10)],
                           provenance_rec=provenance("pytest"))  # fmt: skip
    again, _ = load_model(path)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = pruned(x)
        torch.testing.assert_close(again(x), ref)
    res = export_onnx(path, tmp_path / "p.onnx")
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - ref.numpy()).max() <= 1e-4
