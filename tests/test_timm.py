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
