"""Structured pruning: surgery exactness, coupling, reload round-trips, MAC budgets, criteria, bad requests."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from edgeconv import artifacts
from edgeconv.common.errors import EdgeconvError
from edgeconv.compress.prune import (
    LayerPlan,
    PrunePlan,
    PruneRequest,
    apply_plan,
    ensure_prunable,
    find_units,
    plan_pruning,
    prune_model,
    run_prune,
)
from edgeconv.data.sources import load_samples
from edgeconv.models import count_params_macs, create_model, create_model_from_config, list_models, load_model
from edgeconv.models.structure import prunable_units

PRE = {"channels": 1, "size": 32}


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def _plan_keeping(model: nn.Module, keep: dict[str, list[int]]) -> PrunePlan:
    layers = [
        LayerPlan(
            u.name, u.kind, list(u.paths), u.size, keep.get(u.name, list(range(u.size))), [1.0] * u.size, [1.0] * u.size
        )
        for u in prunable_units(model)
    ]
    return PrunePlan(request={"criterion": "manual"}, layers=layers)


def _gate(model: nn.Module, unit_name: str, zero: list[int]) -> None:
    u = next(u for u in prunable_units(model) if u.name == unit_name)
    mods = dict(model.named_modules())
    g = torch.ones(u.size)
    g[zero] = 0
    for p in u.paths:
        setattr(mods[p], "head_gate" if u.kind == "heads" else "hidden_gate", g)


def test_pruning_nothing_keeps_outputs_identical():
    torch.manual_seed(0)
    m = create_model("routed-tiny").eval()
    ref = m(_x())
    pruned = apply_plan(m, _plan_keeping(m, {}))
    assert torch.equal(pruned(_x()), ref)


@pytest.mark.parametrize(
    "name,unit",
    [
        ("routed-tiny", "blocks.0.attn"),
        ("acmix-tiny", "blocks.1"),
        ("hvt-tiny", "blocks.1"),
        ("resformer-tiny", "blocks.0.res"),
    ],
)
def test_removal_equals_masking_the_same_units(name, unit):
    """Removing units structurally gives exactly what zeroing their gates gives, and removes exactly those."""
    torch.manual_seed(0)
    m = create_model(name).eval()
    size = next(u.size for u in prunable_units(m) if u.name == unit)
    drop = [1, 3] if size == 4 else list(range(0, size, 3))
    masked = create_model_from_config(m.cfg).eval()
    masked.load_state_dict(m.state_dict())
    _gate(masked, unit, drop)
    with torch.no_grad():
        want = masked(_x())
    keep = [i for i in range(size) if i not in drop]
    apply_plan(m, _plan_keeping(m, {unit: keep}))
    assert next(u.size for u in prunable_units(m) if u.name == unit) == len(keep)
    with torch.no_grad():
        assert torch.allclose(m(_x()), want, atol=1e-5)
    assert m.cfg["structure"][unit] in ({"heads": len(keep)}, {"hidden": len(keep)})


def test_coupled_heads_are_pruned_together_saliency_small():
    torch.manual_seed(0)
    m = create_model("saliency-small").eval()
    units = {u.name: u for u in prunable_units(m)}
    shared = units["blocks.layers.0.attn"]
    assert shared.paths == ["blocks.layers.0.attn", "blocks.layers.1.attn"]
    masked = create_model_from_config(m.cfg).eval()
    masked.load_state_dict(m.state_dict())
    _gate(masked, shared.name, [0, 4])
    with torch.no_grad():
        want = masked(_x())
    apply_plan(m, _plan_keeping(m, {shared.name: [1, 2, 3, 5]}))
    mods = dict(m.named_modules())
    assert mods["blocks.layers.0.attn"].num_heads == mods["blocks.layers.1.attn"].num_heads == 4
    with torch.no_grad():
        assert torch.allclose(m(_x()), want, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in list_models() if n.endswith("-tiny")] + ["saliency-small"])
def test_every_family_prunes_and_rebuilds_from_its_config(name):
    torch.manual_seed(0)
    m = create_model(name).eval()
    p0, m0 = count_params_macs(m, PRE)
    pruned, plan = prune_model(m, PRE, None, PruneRequest(heads=0.3, channels=0.3, criterion="l1"))
    p1, m1 = count_params_macs(pruned, PRE)
    assert p1 < p0 and m1 < m0
    assert (plan.params_after, plan.macs_after) == (p1, m1)
    rebuilt = create_model_from_config(json.loads(json.dumps(pruned.cfg))).eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(rebuilt(_x()), pruned(_x()), atol=1e-6)
    assert torch.equal(m(_x()), m(_x()))  # the input model is untouched (still runs at full width)
    assert count_params_macs(m, PRE) == (p0, m0)


def test_target_macs_is_met_and_heads_never_reach_zero():
    torch.manual_seed(0)
    m = create_model("routed-tiny").eval()
    plan = plan_pruning(m, PRE, None, PruneRequest(target_macs=0.5, criterion="random"))
    assert plan.macs_after <= 0.5 * plan.macs_before
    assert all(len(lp.keep) >= 1 for lp in plan.layers)
    heads = [lp for lp in plan.layers if lp.kind == "heads"]
    if any(len(lp.keep) == 1 for lp in heads):
        assert any("keeps at least one" in n for n in plan.notes)


@pytest.mark.parametrize("steps", [1, 2])
def test_min_keep_is_a_floor_under_every_layer(steps):
    """--min-keep 0.5: no layer loses more than half of what it had, over all steps; the MAC target still holds, or
    the model is pruned as far as the floors allow and the plan says the budget was out of reach."""
    import math

    m = create_model("routed-tiny").eval()
    free = plan_pruning(m, PRE, None, PruneRequest(heads=0.95, channels=0.95, criterion="l1"))
    assert min(len(lp.keep) for lp in free.layers) == 1  # without a floor the ranking empties layers to one unit
    plan = plan_pruning(m, PRE, None, PruneRequest(heads=0.95, channels=0.95, criterion="l1", min_keep=0.5, steps=steps))
    for lp in plan.layers:
        assert len(lp.keep) >= math.ceil(0.5 * lp.size), (lp.unit, len(lp.keep), lp.size)
    assert any("--min-keep" in n for n in plan.notes)
    floored = plan_pruning(m, PRE, None, PruneRequest(target_macs=0.7, criterion="l1", min_keep=0.25))
    assert floored.macs_after <= 0.7 * floored.macs_before
    assert all(len(lp.keep) >= math.ceil(0.25 * lp.size) for lp in floored.layers)
    far = plan_pruning(m, PRE, None, PruneRequest(target_macs=0.5, criterion="l1", min_keep=0.9))
    assert not far.target_met and far.macs_after > 0.5 * far.macs_before
    assert any("out of reach: with 90% of the heads and channels left" in n for n in far.notes)
    assert all(len(lp.keep) == math.ceil(0.9 * lp.size) for lp in far.layers)  # every layer down to its floor


def test_head_ratio_that_would_empty_a_layer_keeps_one_and_says_so():
    m = create_model("routed-tiny").eval()
    plan = plan_pruning(m, PRE, None, PruneRequest(heads=0.95, criterion="l1"))
    assert [len(lp.keep) for lp in plan.layers if lp.kind == "heads"] == [1, 1]
    assert any("kept 1 head" in n for n in plan.notes)
    assert any("removed 6 of 8 heads" in n for n in plan.notes)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(heads=0.0), "strictly between 0 and 1"),
        (dict(channels=1.0), "strictly between 0 and 1"),
        (dict(target_macs=1.5), "strictly between 0 and 1"),
        (dict(heads=-0.2), "strictly between 0 and 1"),
        (dict(target_macs=0.5, heads=0.2), "not both"),
        (dict(), "nothing to prune"),
        (dict(heads=0.3, criterion="magic"), "unknown criterion"),
    ],
)
def test_bad_requests_fail_clearly(kwargs, match):
    m = create_model("routed-tiny").eval()
    with pytest.raises(EdgeconvError, match=match):
        plan_pruning(m, PRE, None, PruneRequest(**kwargs))


def test_a_budget_out_of_reach_prunes_as_far_as_it_can_and_says_so():
    m = create_model("routed-tiny").eval()
    plan = plan_pruning(m, PRE, None, PruneRequest(target_macs=0.01, criterion="l1"))
    assert not plan.target_met and all(len(lp.keep) == 1 for lp in plan.layers)
    assert any("--target-macs 0.01 is out of reach" in n and "pruned as far as that" in n for n in plan.notes)
    assert any(n.startswith("--target-macs 0.01: reached ") for n in plan.notes)


def test_an_unknown_attention_is_left_whole_and_named_while_the_rest_is_pruned():
    """A module that looks like attention and has no heads edgeconv understands does not stop the model: it is left
    whole with its path, class and reason in the plan and its notes; what is understood is pruned."""

    class WindowAttention(nn.Module):  # an attention edgeconv has no head structure for
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            return self.qkv(x)[..., :16]

    class Foreign(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = {"family": "timm", "timm_name": "swin_like"}
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
            self.win = WindowAttention()

        def forward(self, x):
            t = x.flatten(2).transpose(1, 2)[..., :16]
            return self.win(self.mha(t, t, t, need_weights=False)[0]).mean(1)

    units, left = find_units(Foreign())
    assert [u.name for u in units] == ["mha"]
    assert left == [{"path": "win", "class": f"{__name__}.{WindowAttention.__qualname__}",
                     "reason": "its heads are found on an example input, and none was given"}]  # fmt: skip
    pre = {**PRE, "channels": 16, "size": 4}
    plan = plan_pruning(Foreign(), pre, None, PruneRequest(heads=0.5, criterion="l1"))
    assert plan.left_whole == [{**left[0], "reason": "not multi-head (no integer num_heads)"}]
    assert [lp.unit for lp in plan.layers if lp.kind == "heads"] == ["mha"] and len(plan.layers[0].keep) == 2
    assert any(n.startswith("left whole: 1 x ") and "WindowAttention ('win')" in n for n in plan.notes)

    class OnlyUnknown(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = {"family": "timm", "timm_name": "swin_like"}
            self.win = WindowAttention()

    with pytest.raises(EdgeconvError, match=r"swin_like: no prunable units .*left whole: 1 x .*WindowAttention \('win'\)"):
        ensure_prunable(OnlyUnknown())


class _UserModel(nn.Module):
    """A user's own model on nn.MultiheadAttention (batch_first) with a plain MLP: what users bring."""

    def __init__(self, dim=32, heads=4, classes=10):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 8, stride=8)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        a, _ = self.attn(t, t, t)
        return self.head(self.norm(t + a).mean(1))


def test_multihead_attention_adapter_is_torch_arithmetic():
    from edgeconv.models.prunable import adapt

    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
        mask = torch.zeros(2, 7, dtype=torch.bool)
        mask[0, -2:] = True
        ref_out, ref_w = mha(x, x, x, key_padding_mask=mask)
        holder = nn.Sequential(mha)
        assert adapt(holder) == ["0"]
        out, w = mha(x, x, x, key_padding_mask=mask)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-5)


def test_a_users_multihead_attention_gets_its_heads_pruned_and_num_heads_follows(digits_pre):
    """Gradient head sensitivity on a plain nn.Module: whole heads go, num_heads/head_dim stay true, the output
    equals the unpruned model with those heads masked, and the recorded structure rebuilds the same shapes."""
    from edgeconv.compress.prune import prune_model
    from edgeconv.models.prunable import adapt
    from edgeconv.models.structure import apply_structure

    torch.manual_seed(0)
    model = _UserModel().eval()
    model.cfg = {"family": "user"}
    calib = load_samples("digits", digits_pre, "train", limit=64)
    pruned, plan = prune_model(model, digits_pre, calib, PruneRequest(heads=0.5, criterion="gradient", batches=4))
    (lp,) = [lp for lp in plan.layers if lp.unit == "attn"]
    assert lp.kind == "heads" and len(lp.keep) == 2 and len(lp.sensitivity) == 4
    assert pruned.attn.num_heads == 2 and pruned.attn.head_dim == 8 and pruned.attn.embed_dim == 32
    assert pruned.attn.in_proj_weight.shape == (48, 32) and pruned.attn.out_proj.weight.shape == (32, 16)
    x = calib.x[:5]
    gate = torch.zeros(4)
    gate[lp.keep] = 1.0
    masked = copy.deepcopy(model)
    adapt(masked)
    masked.attn.head_gate = gate
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
    fresh = _UserModel()
    adapt(fresh)
    apply_structure(fresh, pruned.cfg["structure"])
    fresh.load_state_dict(pruned.state_dict())  # the record rebuilds the shapes; the weights fit
    assert fresh.attn.num_heads == 2


def test_gradient_beats_random_on_a_trained_model(trained, digits_pre):
    """At a fixed budget (half of all hidden channels), gradient sensitivity keeps clearly more accuracy (the ranking
    alone: BatchNorm re-estimation, which lifts every criterion, is off)."""
    from edgeconv.train.loop import evaluate

    model, ck = load_model(trained("routed-tiny"))
    train = load_samples("digits", digits_pre, "train")
    test = load_samples("digits", digits_pre, "test")
    acc = {}
    for crit, seed in (("gradient", 0), ("random", 0), ("random", 1), ("random", 2)):
        pruned, _ = prune_model(
            model,
            digits_pre,
            train,
            PruneRequest(channels=0.5, criterion=crit, seed=seed, batch_size=8, batches=32, bn_recalibrate=False),
        )
        acc[(crit, seed)] = evaluate(pruned, test)["top1"]
    random_mean = sum(v for (c, _), v in acc.items() if c == "random") / 3
    assert acc[("gradient", 0)] > random_mean + 5, acc


def test_prune_checkpoint_round_trip_report_and_heatmap(trained, tmp_path):
    src = trained("routed-tiny")
    out = tmp_path / "pruned.pt"
    res = run_prune(
        str(src),
        "digits",
        PruneRequest(target_macs=0.7, batches=8),
        str(out),
        report_path=str(tmp_path / "r.json"),
        heatmap_path=str(tmp_path / "h.png"),
        command="pytest prune",
    )
    model, ck = load_model(out)
    assert ck["provenance"]["parent_sha256"] == artifacts.file_sha256(src)
    assert ck["config"]["structure"]["blocks.0.attn"]["heads"] < 4 or ck["config"]["structure"]["stem.1"]["hidden"] < 96
    assert ck["metrics"]["macs"] <= 0.7 * ck["metrics"]["parent_macs"]
    assert count_params_macs(model, ck["preprocessing"]) == (ck["metrics"]["params"], ck["metrics"]["macs"])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mac_reduction"] >= 0.3 and len(report["layers"]) == 5
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["summary"]["params"][1] < res["summary"]["params"][0]


@pytest.mark.slow  # over 5 s: `make test` runs it, `make test-fast` stays a quick loop
def test_cli_prune_dry_run_and_bad_ratio(trained, tmp_path):
    src = str(trained("routed-tiny"))
    exe = [sys.executable, "-m", "edgeconv"]
    env = {**os.environ, "COLUMNS": "200"}
    bad = subprocess.run(
        exe + ["prune", src, "--heads", "1.5", "-o", str(tmp_path / "x.pt")], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "--heads must be in (0, 1)" in bad.stderr
    dry = subprocess.run(
        exe + ["prune", src, "--heads", "0.5", "--criterion", "l1", "--dry-run"], capture_output=True, text=True, env=env
    )
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing written" in dry.stdout and "blocks.0.attn" in dry.stdout
    assert not list(tmp_path.iterdir())


class _ConvUserModel(nn.Module):
    """A user's hybrid: an inverted-residual conv block (expand, BN, act, depthwise, BN, act, project) on a residual
    stream, nn.MultiheadAttention, and a plain MLP written as nn.Sequential."""

    def __init__(self, dim=32, classes=10):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 8, stride=8)
        self.conv = nn.Sequential(
            nn.Conv2d(dim, 48, 1), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.BatchNorm2d(48), nn.Hardswish(),
            nn.Conv2d(48, dim, 1),
        )  # fmt: skip
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Dropout(0.0), nn.Linear(64, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.conv(x)
        t = x.flatten(2).transpose(1, 2)
        t = self.norm(t + self.attn(t, t, t)[0])
        return self.head((t + self.mlp(t)).mean(1))


def test_the_dependency_graph_finds_hidden_channels_in_a_users_model_and_leaves_residual_widths(digits_pre):
    """Torch-Pruning's graph gives the expand->BN->depthwise->BN->project channels and the MLP's hidden width as units;
    the residual stream (embed, project, MLP output) and the classifier are left alone; pruning them equals masking
    them, and the recorded structure rebuilds the same model without tracing."""
    from edgeconv.compress.dependency import add_graph_units
    from edgeconv.models.prunable import adapt
    from edgeconv.models.structure import apply_structure, current_structure

    torch.manual_seed(0)
    model = _ConvUserModel().eval()
    for bn in (model.conv[1], model.conv[4]):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    model.cfg = {"family": "module"}
    adapt(model)
    made = add_graph_units(model, torch.randn(2, 1, 32, 32))
    assert sorted(made) == ["conv.6", "mlp.3"]
    assert model.conv[6].graph_members == [["conv.0", "out"], ["conv.1", "norm"], ["conv.3", "dw"], ["conv.4", "norm"]]
    calib = load_samples("digits", digits_pre, "train", limit=64)
    pruned, plan = prune_model(
        model, digits_pre, calib, PruneRequest(channels=0.5, criterion="gradient", batches=4, bn_recalibrate=False)
    )
    kept = {lp.unit: lp.keep for lp in plan.layers}
    assert len(kept["conv.6"]) + len(kept["mlp.3"]) == (48 + 64) // 2
    conv = pruned.conv
    assert conv[0].out_channels == conv[3].groups == conv[3].out_channels == conv[6].in_channels == len(kept["conv.6"])
    assert conv[1].num_features == conv[4].num_features == len(kept["conv.6"]) and conv[6].out_channels == 32
    assert pruned.mlp[0].out_features == pruned.mlp[3].in_features == len(kept["mlp.3"])
    # the pruned model is the unpruned one with those channels' gates at zero
    x = torch.randn(3, 1, 32, 32)
    for name in ("conv.6", "mlp.3"):
        gate = torch.zeros(dict(model.named_modules())[name].hidden)
        gate[kept[name]] = 1.0
        dict(model.named_modules())[name].hidden_gate = gate
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)
    # reload: a fresh model takes the recorded structure (no graph tracing) and the weights
    structure = current_structure(pruned)
    fresh = _ConvUserModel().eval()
    adapt(fresh)
    apply_structure(fresh, structure)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pruned(x))


def test_a_flatten_into_a_linear_is_not_a_channel_unit(digits_pre):
    """LeNet-style: conv -> BN -> ReLU -> conv -> ReLU -> flatten -> Linear. The graph maps the flatten, so the last
    conv's channels reach the Linear as C x H x W columns: not a unit (no crash); the first conv pair is one."""
    from edgeconv.compress.dependency import add_graph_units

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 7 * 7, 10),
    ).eval()  # fmt: skip
    assert add_graph_units(model, torch.randn(2, 1, 32, 32)) == ["3"]
    model.cfg = {"family": "module"}
    calib = load_samples("digits", digits_pre, "train", limit=32)
    pruned, plan = prune_model(model, digits_pre, calib, PruneRequest(channels=0.5, criterion="gradient", batches=2))
    assert pruned[0].out_channels == pruned[3].in_channels == 4 and pruned[6].in_features == 196
