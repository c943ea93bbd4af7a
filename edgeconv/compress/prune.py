"""Structured pruning: score units, plan which to keep (per-layer normalisation, then one global ranking), apply.

Dependencies are declared by our own families (`edgeconv.models.structure`), not traced: every unit is internal to
one block (heads of an attention, hidden channels of an MLP / inverted residual / bottleneck), a coupled unit (a layer
reusing another layer's attention map) lists all its modules, and residual widths, the routed blocks' shared 1x1
projection and the router's input are never pruned. Torch-Pruning's dependency graph would rediscover the same
groups from a trace, but it cannot see through `torch.cond` routing, and our families already own the `num_heads` /
`head_dim` bookkeeping that Torch-Pruning leaves to the user.

Plan, then apply: `plan_pruning` works on a copy and returns the indices to keep in every unit (in the original
model's numbering); `apply_plan` removes the rest in place and records `cfg["structure"]` so the checkpoint reloads.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from edgeconv.common.errors import EdgeconvError
from edgeconv.compress.importance import get_criterion, normalise_per_layer
from edgeconv.data.sources import Samples
from edgeconv.models import count_params_macs
from edgeconv.models.generic_attention import is_generic
from edgeconv.models.structure import Unit, current_structure, is_channel_module, keep_unit, prunable_units


@dataclass
class PruneRequest:
    heads: float | None = None  # fraction of all heads to remove
    channels: float | None = None  # fraction of all hidden channels to remove
    target_macs: float | None = None  # keep at most this fraction of the original MACs
    min_keep: float = 0.0  # every layer keeps at least this fraction of its original units (and at least one)
    criterion: str = "gradient"
    batches: int = 64  # calibration batches for the gradient criteria
    batch_size: int = 8  # small: per-sample gradients cancel less within a batch
    steps: int = 1  # > 1: prune in steps, re-scoring the smaller model after each
    bn_recalibrate: bool = True  # re-estimate BatchNorm statistics on the calibration samples after removal
    seed: int = 0
    normalise: str = "mean"  # per-layer normalisation before the global ranking (mean | l2)
    per_mac: bool = True  # --target-macs: rank by normalised score per MAC the unit costs

    @classmethod
    def from_settings(cls, s, seed: int) -> "PruneRequest":
        """From `settings.PruneSettings` (what `edgeconv prune` and the pipeline's [prune] take)."""
        return cls(heads=s.heads, channels=s.channels, target_macs=s.target_macs, min_keep=s.min_keep,
                   criterion=s.criterion, batches=s.batches, batch_size=s.batch_size, steps=s.steps,
                   bn_recalibrate=s.bn_recalibrate, seed=seed)  # fmt: skip

    def check(self) -> None:
        for name in ("heads", "channels", "target_macs"):
            v = getattr(self, name)
            if v is not None and not (0.0 < v < 1.0):
                raise EdgeconvError(f"--{name.replace('_', '-')} must be a fraction strictly between 0 and 1, got {v}")
        if self.target_macs is not None and (self.heads is not None or self.channels is not None):
            raise EdgeconvError("give either --target-macs or --heads/--channels ratios, not both")
        if self.target_macs is None and self.heads is None and self.channels is None:
            raise EdgeconvError("nothing to prune: give --heads, --channels and/or --target-macs")
        if not 0.0 <= self.min_keep < 1.0:
            raise EdgeconvError(f"--min-keep must be a fraction in [0, 1), got {self.min_keep}")
        if self.batches < 1 or self.batch_size < 1 or self.steps < 1:
            raise EdgeconvError("--batches, the batch size and --steps must be >= 1")
        get_criterion(self.criterion)  # unknown names fail here, before any work


@dataclass
class LayerPlan:
    unit: str
    kind: str  # heads | channels
    paths: list[str]
    size: int  # units before pruning
    keep: list[int]  # original indices kept
    sensitivity: list[float]  # per-layer normalised scores of the first scoring pass (original indices)
    raw: list[float]  # the criterion's raw scores of the first pass
    macs_per_unit: int = 0
    params_per_unit: int = 0

    @property
    def removed(self) -> list[int]:
        return sorted(set(range(self.size)) - set(self.keep))


@dataclass
class PrunePlan:
    request: dict
    layers: list[LayerPlan]
    notes: list[str] = field(default_factory=list)
    params_before: int = 0
    macs_before: int = 0
    params_after: int = 0
    macs_after: int = 0
    graph_units: dict = field(default_factory=dict)  # consumer path -> [[path, role]]: units the graph found
    generic_heads: dict = field(default_factory=dict)  # attention path -> head description found from its structure
    left_whole: list = field(default_factory=list)  # [{path, class, reason}]: attention modules not pruned
    target_met: bool = True  # --target-macs: whether the MACs reached are within the budget

    def to_dict(self) -> dict:
        d = asdict(self)
        for lp, dl in zip(self.layers, d["layers"]):
            dl["removed"] = lp.removed
        return d


# ----------------------------------------------------------------------------------------------- helpers
GRAPH_FAMILIES = ("timm", "module")  # users' models: hidden channels are also found by the dependency graph


def find_units(model: nn.Module, pre: dict | None = None) -> tuple[list[Unit], list[dict]]:
    """The model's prunable units and the attention modules left whole ([{path, class, reason}]).

    Users' timm / nn.MultiheadAttention modules with an adapter are adapted in place first; for users' models given
    `pre`, attention modules without one are described from their own structure and checked on an example input
    (`compress/heads.py`), and Torch-Pruning's dependency graph finds hidden channels (`compress/dependency.py`).
    A module that cannot be understood is left whole; the rest of the model is still pruned."""
    from edgeconv.models.prunable import adapt
    from edgeconv.models.structure import unknown_attention

    adapt(model)
    cfg = getattr(model, "cfg", None)
    reasons: dict[str, str] = {}
    if pre is not None and isinstance(cfg, dict) and cfg.get("family") in GRAPH_FAMILIES:
        from edgeconv.compress.dependency import add_graph_units
        from edgeconv.compress.heads import add_generic_heads

        g = torch.Generator().manual_seed(0)
        example = torch.randn(2, int(pre["channels"]), int(pre["size"]), int(pre["size"]), generator=g)
        _, left = add_generic_heads(model, example)
        reasons = {p: why for p, _, why in left}
        add_graph_units(model, example)
    default = (
        "its heads are found on an example input, and none was given"
        if pre is None
        else "edgeconv's families declare their own units; this module is not one of them"
    )
    left_whole = [
        {"path": p, "class": f"{cls.__module__}.{cls.__qualname__}", "reason": reasons.get(p, default)}
        for p, cls in unknown_attention(model)
    ]
    return prunable_units(model), left_whole


def left_whole_summary(left: list[dict], limit: int = 3) -> list[str]:
    """One line per (class, reason) of the modules left whole: how many, the first paths, why."""
    groups: dict[tuple[str, str], list[str]] = {}
    for d in left:
        groups.setdefault((d["class"], d["reason"]), []).append(d["path"])
    out = []
    for (cls, why), paths in groups.items():
        at = ", ".join(repr(p) for p in paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
        out.append(f"left whole: {len(paths)} x {cls} ({at}): {why}")
    return out


def ensure_prunable(model: nn.Module, pre: dict | None = None) -> list[Unit]:
    """`find_units`' units, or an error when the model has none (naming the attention modules left whole)."""
    units, left = find_units(model, pre)
    if units:
        return units
    cfg = getattr(model, "cfg", None)
    name = (cfg.get("timm_name") or cfg.get("family")) if isinstance(cfg, dict) else type(model).__name__
    why = f"; {left_whole_summary(left, 1)[0]}" if left else ""
    raise EdgeconvError(f"{name}: no prunable units (no attention heads or hidden channels edgeconv knows){why}")


REFINE_ROUNDS = 4  # a MACs target is re-measured and topped up this many times per step at most


def _rounds(steps: int, rounds: int):
    """(step, attempt) pairs: each step's first selection, then its refinement rounds."""
    for step in range(1, steps + 1):
        for attempt in range(rounds):
            yield step, attempt


def calibration_batches(samples: Samples, n_batches: int, batch_size: int, seed: int = 0) -> list:
    """The same `n_batches` shuffled batches every time they are asked for (deterministic by seed)."""
    if len(samples) == 0:
        raise EdgeconvError(f"{samples.source}: no calibration samples")
    perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
    out = []
    for i in range(n_batches):
        idx = perm[i * batch_size : (i + 1) * batch_size]
        if len(idx) == 0:
            break
        out.append((samples.x[idx], samples.y[idx]))
    return out


def unit_costs(model: nn.Module, units: list[Unit], pre: dict) -> dict[str, tuple[int, int]]:
    """(params, MACs) that removing one unit of each layer saves, measured with count_params_macs.

    Cost is linear in the number of units of a layer (a head's q/k/v/proj slices and its N x N attention; a
    channel's rows and columns), so one measurement per layer serves the whole plan.
    """
    p0, m0 = count_params_macs(model, pre)
    costs = {}
    for u in units:
        if u.size < 2:
            costs[u.name] = (0, 0)
            continue
        probe = copy.deepcopy(model)
        pu = next(x for x in prunable_units(probe) if x.name == u.name)
        keep_unit(probe, pu, torch.arange(u.size - 1))
        p1, m1 = count_params_macs(probe, pre)
        costs[u.name] = (p0 - p1, m0 - m1)
    return costs


def _select(
    units: list[Unit],
    norm: dict[str, torch.Tensor],
    costs: dict,
    *,
    kinds: set[str],
    n_remove: int | None,
    macs_to_cut: int | None,
    notes: list[str],
    per_mac: bool = False,
    floors: dict[str, int] | None = None,
) -> dict[str, list[int]]:
    """Walk the global ranking (lowest normalised score first) and pick units to remove (current indices).

    Stops after `n_remove` units or once `macs_to_cut` is reached; never takes a layer below its floor (`floors`,
    default one unit: it keeps its best units and notes it).
    """
    floors = floors or {}
    scope = [u for u in units if u.kind in kinds]
    weight = {u.name: 1.0 for u in scope}
    if per_mac:  # a unit that saves twice the MACs may be twice as important and still go first
        mean_cost = sum(costs[u.name][1] for u in scope) / max(1, len(scope))
        weight = {u.name: max(costs[u.name][1], 1) / max(mean_cost, 1) for u in scope}
    ranking = sorted(
        ((float(norm[u.name][i]) / weight[u.name], u.name, i) for u in scope for i in range(u.size)),
        key=lambda t: (t[0], t[1], t[2]),
    )
    by_name = {u.name: u for u in units}
    removed: dict[str, list[int]] = {u.name: [] for u in units}
    count, cut = 0, 0
    for score, name, i in ranking:
        if n_remove is not None and count >= n_remove:
            break
        if macs_to_cut is not None and cut >= macs_to_cut:
            break
        u = by_name[name]
        floor = max(1, floors.get(name, 1))
        if len(removed[name]) >= u.size - floor:
            what = (u.kind[:-1] if u.kind == "heads" else "channel") + ("s" if floor > 1 else "")
            rule = "every layer keeps at least one" if floor == 1 else "--min-keep"
            note = f"{name}: kept {floor} {what} (the ranking would remove more; {rule})"
            if note not in notes:
                notes.append(note)
            continue
        removed[name].append(i)
        count += 1
        cut += costs[name][1]
    return removed


# ----------------------------------------------------------------------------------------------- plan / apply
def plan_pruning(
    model: nn.Module, pre: dict, calib: Samples | None, req: PruneRequest, show_progress: bool = False
) -> PrunePlan:
    """Score, rank and select on a copy of `model`; the model itself is not changed."""
    req.check()
    work = copy.deepcopy(model).eval()
    units, left = find_units(work, pre)
    if not units:
        ensure_prunable(work, pre)  # raises, naming what was left whole
    criterion = get_criterion(req.criterion, **({"seed": req.seed} if req.criterion == "random" else {}))
    batches = calibration_batches(calib, req.batches, req.batch_size, req.seed) if criterion.needs_data else []
    params0, macs0 = count_params_macs(work, pre)
    costs = unit_costs(work, units, pre)
    orig = {u.name: torch.arange(u.size) for u in units}
    first: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    total = {k: sum(u.size for u in units if u.kind == k) for k in ("heads", "channels")}
    kinds = (
        {"heads", "channels"}
        if req.target_macs is not None
        else {k for k, r in (("heads", req.heads), ("channels", req.channels)) if r is not None}
    )
    if req.heads is not None and total["heads"] == 0:
        why = f" ({left_whole_summary(left, 1)[0]})" if left else ""
        raise EdgeconvError(f"--heads: this model has no attention heads edgeconv can prune{why}")
    if req.channels is not None and total["channels"] == 0:
        raise EdgeconvError("--channels: this model has no prunable hidden channels")
    floors = {u.name: max(1, math.ceil(req.min_keep * u.size)) for u in units}
    notes: list[str] = left_whole_summary(left)
    target = req.target_macs
    if req.target_macs is not None:
        floor = macs0 - sum(costs[u.name][1] * (u.size - floors[u.name]) for u in units)
        if floor > req.target_macs * macs0:
            left_in = "one head and one channel" if req.min_keep == 0 else f"{req.min_keep:.0%} of the heads and channels"
            whole = f", {len(left)} attention module(s) left whole" if left else ""
            notes.append(
                f"--target-macs {req.target_macs} is out of reach: with {left_in} left in every prunable layer the "
                f"model keeps about {floor / macs0:.1%} of its MACs (stem, residual widths and classifier are not "
                f"pruned{whole}); pruned as far as that"
            )
            target = floor / macs0

    first: dict = {}
    for step, attempt in _rounds(req.steps, REFINE_ROUNDS if req.target_macs is not None else 1):
        frac = step / req.steps
        if req.target_macs is not None:
            macs_now = count_params_macs(work, pre)[1]
            goal = macs0 * (1 - (1 - target) * frac)
            if first and macs_now <= goal:
                continue  # this step's goal is met; a refinement round is needed only when it is not
            if attempt > 0:  # per-unit costs changed where coupled units shrank together: measure them again
                costs = unit_costs(work, units, pre)
        raw = criterion.scores(work, units, batches)
        norm = normalise_per_layer(raw, req.normalise)
        if not first:
            first = {n: (raw[n].clone(), norm[n].clone()) for n in raw}
        if req.target_macs is not None:
            removed = _select(
                units,
                norm,
                costs,
                kinds=kinds,
                n_remove=None,
                macs_to_cut=max(0, math.ceil(macs_now - goal)),
                notes=notes,
                per_mac=req.per_mac,
                floors=floors,
            )
        else:
            removed = {u.name: [] for u in units}
            for kind, ratio in (("heads", req.heads), ("channels", req.channels)):
                if ratio is None:
                    continue
                done = sum(int(orig[u.name].numel()) for u in units if u.kind == kind)
                done = total[kind] - done
                want = int(round(ratio * total[kind] * frac)) - done
                part = _select(
                    units, norm, costs, kinds={kind}, n_remove=max(0, want), macs_to_cut=None, notes=notes, floors=floors
                )
                for n, idx in part.items():
                    removed[n] += idx
        for u in units:
            if removed[u.name]:
                keep = torch.tensor(sorted(set(range(u.size)) - set(removed[u.name])), dtype=torch.long)
                keep_unit(work, u, keep)
                orig[u.name] = orig[u.name][keep]

    target_met = True
    if req.target_macs is not None:  # the plan's estimate is checked by measuring
        macs_now = count_params_macs(work, pre)[1]
        target_met = macs_now <= req.target_macs * macs0 * (1 + 1e-9)
        if not target_met:
            notes.append(f"--target-macs {req.target_macs}: reached {macs_now / macs0:.1%} of the MACs")
    for kind, ratio in (("heads", req.heads), ("channels", req.channels)):
        if ratio is not None:
            got = total[kind] - sum(int(orig[u.name].numel()) for u in units if u.kind == kind)
            if got < round(ratio * total[kind]):
                notes.append(
                    f"--{kind} {ratio}: removed {got} of {total[kind]} {kind} "
                    f"(asked {round(ratio * total[kind])}; every layer keeps at least "
                    f"{'one' if req.min_keep == 0 else f'{req.min_keep:.0%}'})"
                )
    params1, macs1 = count_params_macs(work, pre)
    layers = [
        LayerPlan(
            unit=u.name,
            kind=u.kind,
            paths=list(u.paths),
            size=int(first[u.name][0].numel()),
            keep=[int(i) for i in orig[u.name]],
            sensitivity=[float(v) for v in first[u.name][1]],
            raw=[float(v) for v in first[u.name][0]],
            params_per_unit=costs[u.name][0],
            macs_per_unit=costs[u.name][1],
        )
        for u in units
    ]
    return PrunePlan(
        request=asdict(req),
        layers=layers,
        notes=notes,
        params_before=params0,
        macs_before=macs0,
        params_after=params1,
        macs_after=macs1,
        graph_units={
            path: [list(x) for x in m.graph_members]
            for path, m in work.named_modules()
            if is_channel_module(m) and getattr(m, "graph_members", None)
        },
        generic_heads={path: copy.deepcopy(m.head_spec) for path, m in work.named_modules() if is_generic(m)},
        left_whole=left,
        target_met=target_met,
    )


def apply_plan(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Remove every unit the plan does not keep (in place) and record the new structure in `model.cfg`."""
    from edgeconv.models.generic_attention import make_generic_heads
    from edgeconv.models.prunable import adapt, make_graph_unit

    adapt(model)
    mods = dict(model.named_modules())
    for consumer, members in plan.graph_units.items():
        if not is_channel_module(mods[consumer]):
            make_graph_unit(model, consumer, [tuple(x) for x in members])
    for path, spec in plan.generic_heads.items():
        if path not in mods:
            raise EdgeconvError(f"plan does not fit this model: {path} (missing)")
        if not is_generic(mods[path]):
            make_generic_heads(mods[path], copy.deepcopy(spec))
    units = {u.name: u for u in prunable_units(model)}
    for lp in plan.layers:
        u = units.get(lp.unit)
        if u is None or u.size != lp.size:
            raise EdgeconvError(
                f"plan does not fit this model: {lp.unit} "
                f"({'missing' if u is None else f'{u.size} units, plan has {lp.size}'})"
            )
        if len(lp.keep) < lp.size:
            keep_unit(model, u, torch.tensor(lp.keep, dtype=torch.long))
    if isinstance(getattr(model, "cfg", None), dict):
        model.cfg = {**model.cfg, "structure": current_structure(model)}
    return model


def prune_model(model: nn.Module, pre: dict, calib: Samples | None, req: PruneRequest) -> tuple[nn.Module, PrunePlan]:
    """Plan on a copy, then apply to a copy: returns (pruned model, plan); the input model is untouched."""
    from edgeconv.compress.recalibrate import recalibrate_batchnorm

    plan = plan_pruning(model, pre, calib, req)
    pruned = apply_plan(copy.deepcopy(model), plan)
    if req.bn_recalibrate and calib is not None:
        used = recalibrate_batchnorm(pruned, calib, seed=req.seed)
        if used:
            plan.notes.append(f"BatchNorm statistics re-estimated on {used} calibration samples (weights unchanged)")
    return pruned, plan


# ----------------------------------------------------------------------------------------------- reporting
def layer_rows(plan: PrunePlan) -> list[dict]:
    rows = []
    for lp in plan.layers:
        s = lp.sensitivity
        if lp.kind == "heads":
            sens = " ".join(f"{v:.2f}" for v in s)
            removed = ",".join(str(i) for i in lp.removed) or "-"
        else:
            sens = f"min {min(s):.3f} / max {max(s):.3f}"
            removed = str(len(lp.removed))
        rows.append(
            {
                "layer": lp.unit,
                "unit": lp.kind,
                "sensitivity (norm.)": sens,
                "before": lp.size,
                "kept": len(lp.keep),
                "removed": removed,
                "MACs/unit": lp.macs_per_unit,
            }
        )
    return rows


def head_heatmap(plan: PrunePlan, path, title: str = "") -> bool:
    """PNG heatmap of normalised head sensitivity (layers x heads); removed heads are crossed. False if no heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from edgeconv.artifacts import atomic_path

    heads = [lp for lp in plan.layers if lp.kind == "heads"]
    if not heads:
        return False
    width = max(lp.size for lp in heads)
    grid = np.full((len(heads), width), np.nan)
    for r, lp in enumerate(heads):
        grid[r, : lp.size] = lp.sensitivity
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * width, 1.0 + 0.5 * len(heads)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for r, lp in enumerate(heads):
        for h in range(lp.size):
            ax.text(
                h,
                r,
                ("x " if h in lp.removed else "") + f"{lp.sensitivity[h]:.2f}",
                ha="center",
                va="center",
                color="white" if h in lp.removed else "black",
                fontsize=8,
            )
    ax.set_xticks(range(width), [f"h{i}" for i in range(width)])
    ax.set_yticks(range(len(heads)), [lp.unit for lp in heads])
    ax.set_title(title or f"head sensitivity ({plan.request['criterion']})\nper-layer normalised; x = removed", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------- the `prune` command
def run_prune(
    ckpt_path: str,
    data: str,
    req: PruneRequest,
    out: str | None,
    *,
    dry_run: bool = False,
    report_path: str | None = None,
    heatmap_path: str | None = None,
    command: str = "edgeconv prune",
    eval_data: str | None = None,
    allow_train_eval: bool = False,
) -> dict:
    """Load, plan, apply, measure before/after, then write the pruned checkpoint, JSON report and heatmap."""
    from edgeconv import artifacts
    from edgeconv.data.sources import check_held_out, load_samples, split_for
    from edgeconv.models import load_model
    from edgeconv.train.loop import evaluate

    req.check()
    eval_data = check_held_out(data, eval_data, allow_train_eval, "prune")
    if not dry_run and not out:
        raise EdgeconvError("give -o/--out for the pruned checkpoint (or --dry-run to only print the plan)")
    model, ck = load_model(ckpt_path)
    pre = ck["preprocessing"]
    units, left = find_units(model, pre)
    if not units:
        ensure_prunable(model, pre)  # raises, naming what was left whole
    if req.heads is not None and not any(u.kind == "heads" for u in units):  # said before any data is read
        why = f" ({left_whole_summary(left, 1)[0]})" if left else ""
        raise EdgeconvError(f"--heads: this model has no attention heads edgeconv can prune{why}")
    calib = load_samples(data, pre, split_for(data, "calibrate"), classes=ck["classes"])
    test = load_samples(eval_data, pre, split_for(eval_data, "evaluate", trained_on=data), classes=ck["classes"])
    pruned, plan = prune_model(model, pre, calib, req)
    before, after = evaluate(model, test)["top1"], evaluate(pruned, test)["top1"]
    summary = {
        "params": (plan.params_before, plan.params_after),
        "MACs": (plan.macs_before, plan.macs_after),
        f"{test.source} top1 %": (before, after),
    }
    report = {
        "checkpoint": str(ckpt_path),
        "parent_sha256": artifacts.file_sha256(ckpt_path),
        "data": test.source,
        "out": None if dry_run else str(out),
        "dry_run": dry_run,
        **plan.to_dict(),
        "top1_before": before,
        "top1_after": after,
        "mac_reduction": 1 - plan.macs_after / plan.macs_before,
        "param_reduction": 1 - plan.params_after / plan.params_before,
    }
    if not dry_run:
        metrics = {
            "test_top1": after,
            "parent_test_top1": before,
            "params": plan.params_after,
            "macs": plan.macs_after,
            "parent_macs": plan.macs_before,
            "mac_reduction": report["mac_reduction"],
            "criterion": req.criterion,
        }
        artifacts.save_checkpoint(
            out,
            pruned,
            preprocessing=pre,
            classes=ck["classes"],
            metrics=metrics,
            provenance_rec=artifacts.provenance(command, ckpt_path, ck),
            extra={
                "prune": {
                    "request": asdict(req),
                    "notes": plan.notes,
                    "left_whole": plan.left_whole,
                    "removed": {lp.unit: lp.removed for lp in plan.layers},
                }
            },
        )
        reloaded, _ = load_model(out)  # the recorded structure must rebuild the same network
        x = test.x[:8]
        with torch.no_grad():
            if not torch.allclose(reloaded(x), pruned.eval()(x), atol=1e-5):
                raise EdgeconvError(f"{out}: reloaded pruned model does not reproduce the pruned outputs")
    if report_path:
        artifacts.atomic_write_json(report_path, report)
    if heatmap_path:
        report["heatmap"] = str(heatmap_path) if head_heatmap(plan, heatmap_path) else None
    return {"plan": plan, "summary": summary, "report": report}
