"""Users' timm hybrids (randomly initialised, pretrained=False) through edgeconv: checkpoint, export, parity.

Runs in the timm venv (`make test-timm`): timm needs torchvision, which only imports beside torch 2.14.1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    from edgeconv.artifacts.card import read_metadata
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
    from edgeconv.artifacts import provenance, save_checkpoint
    from edgeconv.models import load_model

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
    from edgeconv.common.errors import EdgeconvError
    from edgeconv.models import create_model

    with pytest.raises(EdgeconvError, match="timm has no model named"):
        create_model("timm:not_a_real_model_xyz")


def test_a_timm_attention_without_heads_is_left_whole_the_rest_pruned_and_heads_refused_in_one_line(tmp_path):
    """SwiftFormer's additive attention has no heads: the model is still pruned to half its MACs (its MLP and conv
    channels), the module is named with its class and reason in the plan; `--heads` asks for what the model does not
    have, so the CLI refuses in one line and writes nothing."""
    from edgeconv.artifacts import provenance, save_checkpoint
    from edgeconv.compress.prune import PruneRequest, prune_model
    from edgeconv.models import count_params_macs, create_model

    torch.manual_seed(0)
    model = create_model("timm:swiftformer_xs", num_classes=10, in_chans=1, img_size=SIZE).eval()
    pre = {**PRE, "channels": 1, "mean": [0.5], "std": [0.5]}
    pruned, plan = prune_model(model, pre, None, PruneRequest(target_macs=0.5, criterion="l1"))
    assert plan.target_met and count_params_macs(pruned, pre)[1] <= 0.5 * count_params_macs(model, pre)[1]
    cls = "timm.models.swiftformer.EfficientAdditiveAttention"
    assert {d["class"] for d in plan.left_whole} == {cls} and len(plan.left_whole) == 4
    assert all(d["reason"] == "not multi-head (no integer num_heads)" for d in plan.left_whole)
    assert any(n.startswith(f"left whole: 4 x {cls} (") for n in plan.notes)
    ckpt = save_checkpoint(tmp_path / "sf.pt", model, preprocessing=pre, classes=[str(i) for i in range(10)],
                           provenance_rec=provenance("pytest"))  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "edgeconv", "prune", str(ckpt), "--heads", "0.3", "--criterion", "l1",
                        "--eval-on-train", "-o", str(tmp_path / "p.pt")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--heads: this model has no attention heads" in r.stderr and "EfficientAdditiveAttention" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1
    assert not (tmp_path / "p.pt").exists() and not (tmp_path / "p.prune.json").exists()


def _perturbed(model):
    """Random-init timm hybrids zero-init their BN scales and bias tables (outputs ~0): give them values, so the
    equalities below compare real numbers."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_(0, 0.5, generator=g)
    return model


def _pruned_equals_gated_and_reloads(model, pruned, plan, tmp_path):
    """The pruned model computes what `model` computes with the removed units' gates at zero, and its checkpoint
    reloads to the same outputs; (checkpoint path, input, pruned output, reloaded record)."""
    from edgeconv.artifacts import provenance, save_checkpoint
    from edgeconv.models import load_model

    mods = dict(model.named_modules())
    for lp in plan.layers:
        gate = torch.zeros(lp.size)
        gate[lp.keep] = 1.0
        for path in lp.paths:
            setattr(mods[path], "head_gate" if lp.kind == "heads" else "hidden_gate", gate)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        masked, ref = model(x), pruned(x)
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(ref, masked, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
    path = save_checkpoint(tmp_path / "p.pt", pruned, preprocessing=PRE, classes=[str(i) for i in range(10)],
                           provenance_rec=provenance("pytest"))  # fmt: skip
    again, ck = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref)
    return path, x, ref, ck


@pytest.mark.parametrize("name, target", [("levit_128s", 0.5), ("efficientvit_m0", 0.5), ("mobilevitv2_050", 0.65)])
def test_timm_hybrids_lose_heads_and_channels_structurally_and_reload(name, target, tmp_path):
    """LeViT's attention (bias tables per head), EfficientViT's cascaded group attention (each head its own input
    slice and cascade link) and MobileViTv2's separable attention (channels), plus the MLP and conv-expansion channels
    the dependency graph finds: the pruned model is the unpruned one with those units' gates at zero, meets the MACs
    target, reloads from a weights_only checkpoint and exports to matching ONNX."""
    import onnxruntime as ort

    from edgeconv.compress.prune import PruneRequest, ensure_prunable, prune_model
    from edgeconv.data.sources import Samples
    from edgeconv.export.onnx import export_onnx
    from edgeconv.models import count_params_macs

    model = _perturbed(_model(name))
    ensure_prunable(model, PRE)  # adapts in place (same arithmetic) so the gates below apply to it
    g = torch.Generator().manual_seed(0)
    calib = Samples(torch.randn(32, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (32,), generator=g),
                    [str(i) for i in range(10)], "random")  # fmt: skip
    pruned, plan = prune_model(
        model, PRE, calib, PruneRequest(target_macs=target, criterion="gradient", batches=4, bn_recalibrate=False)
    )
    assert count_params_macs(pruned, PRE)[1] <= (target + 0.01) * count_params_macs(model, PRE)[1]
    assert any(lp.kind == "heads" and len(lp.keep) < lp.size for lp in plan.layers) or name.startswith("mobilevit")
    path, x, ref, _ = _pruned_equals_gated_and_reloads(model, pruned, plan, tmp_path)
    res = export_onnx(path, tmp_path / "p.onnx")
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - ref.numpy()).max() <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_a_timm_vit_is_pruned_to_half_the_macs_with_num_heads_kept_true_and_reloads(tmp_path):
    """timm's Attention and Mlp get gradient-ranked head and channel pruning; the result is a dense timm model
    whose num_heads/attn_dim match its weights, reloads from a weights_only checkpoint, exports and matches."""
    import onnxruntime as ort

    from edgeconv.artifacts import provenance, save_checkpoint
    from edgeconv.compress.prune import PruneRequest, prune_model
    from edgeconv.data.sources import Samples
    from edgeconv.export.onnx import export_onnx
    from edgeconv.models import count_params_macs, load_model

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


def test_import_of_a_timm_training_file_records_timms_preprocessing(tmp_path):
    """timm's train.py output ({'state_dict', 'state_dict_ema', 'args': Namespace, 'epoch'}) becomes a checkpoint
    read with weights_only, giving the same logits, with timm's pretrained input size, filter, crop and mean/std."""
    import argparse

    from edgeconv.models import load_model
    from edgeconv.models.importer import import_checkpoint

    torch.manual_seed(0)
    net = timm.create_model("efficientvit_m0", pretrained=False, num_classes=4).eval()
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    args = argparse.Namespace(model="efficientvit_m0", lr=1e-3, epochs=3)
    torch.save({"epoch": 3, "arch": "efficientvit_m0", "state_dict": net.state_dict(), "state_dict_ema": ema,
                "args": args, "version": 2}, tmp_path / "model_best.pth.tar")  # fmt: skip
    res = import_checkpoint("timm:efficientvit_m0", tmp_path / "model_best.pth.tar", tmp_path / "m.pt",
                            classes=["a", "b", "c", "d"], img_size=None, in_chans=3)  # fmt: skip
    assert res["weights"] == "state_dict, epoch 3"
    model, ckpt = load_model(tmp_path / "m.pt")
    pre = ckpt["preprocessing"]
    assert pre["size"] == 224 and pre["interpolation"] == "bicubic" and pre["crop_pct"] == 0.875
    assert pre["mean"] == [0.485, 0.456, 0.406] and "pretrained_cfg" in pre["source"]
    assert ckpt["config"]["timm_version"] == timm.__version__
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))
    res = import_checkpoint("timm:efficientvit_m0", tmp_path / "model_best.pth.tar", tmp_path / "e.pt",
                            classes=["a", "b", "c", "d"], img_size=160, in_chans=3, ema=True)  # fmt: skip
    assert "checkpoint_filter_fn" in res["weights"]  # attention-bias tables resampled from 224 to 160 by timm
    ema_model, ckpt = load_model(tmp_path / "e.pt")
    assert ckpt["preprocessing"]["size"] == 160
    assert torch.equal(ema_model.net.state_dict()["head.linear.weight"], ema["head.linear.weight"])


GENERIC_FORMS = [
    # (model, attention class, the form it covers)
    ("pvt_v2_b0", "Attention", "separate q / kv, spatial reduction before k/v, reshape to the input width"),
    ("efficientformerv2_s0", "Attention2d", "1x1-conv q/k/v on 2-D maps, talking heads, bias table, conv on v"),
    ("tiny_vit_5m_224", "Attention", "qkv laid out per head, attention-bias table, derived out_dim"),
    ("edgenext_xx_small", "CrossCovarianceAttn", "transposed attention with a per-head temperature"),
]


@pytest.mark.parametrize("name, cls, form", GENERIC_FORMS)
def test_heads_of_attention_without_an_adapter_are_found_from_its_structure(name, cls, form, tmp_path):
    """No hand-written adapter: heads are read from the module's own projections and checked on an example; the
    pruned model is the unpruned one with the removed heads' gates at zero, its num_heads (and what derives from it)
    match its weights, and it reloads from a weights_only checkpoint to the same outputs."""
    from edgeconv.compress.prune import PruneRequest, ensure_prunable, prune_model
    from edgeconv.data.sources import Samples
    from edgeconv.models.generic_attention import is_generic

    model = _perturbed(_model(name))
    ensure_prunable(model, PRE)
    generic = {p: m for p, m in model.named_modules() if is_generic(m)}
    assert generic and {type(m).__mro__[2].__name__ for m in generic.values()} >= {cls}, form
    g = torch.Generator().manual_seed(0)
    calib = Samples(torch.randn(16, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (16,), generator=g),
                    [str(i) for i in range(10)], "random")  # fmt: skip
    pruned, plan = prune_model(
        model, PRE, calib, PruneRequest(heads=0.5, criterion="gradient", batches=2, bn_recalibrate=False)
    )
    cut = [lp for lp in plan.layers if lp.kind == "heads" and lp.unit in generic and len(lp.keep) < lp.size]
    assert cut, "no generic head was removed"
    pmods = dict(pruned.named_modules())
    for lp in cut:
        m = pmods[lp.unit]
        assert m.num_heads == len(lp.keep)
        for attr, per in m.head_spec["attrs"].items():
            assert getattr(m, attr) == per * len(lp.keep)
    *_, ck = _pruned_equals_gated_and_reloads(model, pruned, plan, tmp_path)
    assert all("generic" in ck["config"]["structure"][lp.unit] for lp in cut)


SWEEP_SAMPLE = [  # one small model from each of 12 timm hybrid families of benchmarks/timm_sweep.py
    "pvt_v2_b0", "tiny_vit_5m_224", "mobilevit_xxs", "levit_conv_128s", "efficientformerv2_s0", "edgenext_xx_small",
    "efficientvit_m0", "swiftformer_xs", "coat_lite_tiny", "pit_ti_224", "vit_tiny_r_s16_p8_224", "xcit_nano_12_p8_224",
]  # fmt: skip


@pytest.mark.slow
def test_a_sample_of_the_timm_hybrid_sweep_prunes_to_half_the_macs_reloads_exports_and_validates(tmp_path):
    """The sweep's own per-model run (benchmarks/timm_sweep.py) on a fixed sample across families, at 64 px: each
    model is pruned with --target-macs 0.5 to at most 60% of its MACs, nothing is refused whole, the checkpoint
    reloads (weights_only) to the same outputs, exports and passes validate."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from timm_sweep import PASS_MACS, run_one, status_line

    torch.set_num_threads(1)
    rows = [run_one(name, tmp_path, sizes=(SIZE,), batches=1) for name in SWEEP_SAMPLE]
    bad = [f"{r['model']}: {status_line(r)} {r.get('validate detail', '')}" for r in rows if not r["pass"]]
    assert not bad, bad
    assert all(r["MACs kept"] <= PASS_MACS and r["head units"] + r["channel units"] > 0 for r in rows)
    assert sum(r["head units"] > 0 for r in rows) >= 10  # heads are found, not only channels
