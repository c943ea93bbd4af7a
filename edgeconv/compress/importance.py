"""Importance criteria for structural units (attention heads, hidden channels), behind a small registry.

A criterion scores every unit of every prunable layer: `scores(model, units, batches) -> {unit name: tensor[size]}`,
higher = more important. The gradient criteria attach a gate tensor of ones to each unit (`head_gate` /
`hidden_gate`, one shared tensor for the modules of a coupled unit) and read dL/dgate on calibration batches:

- `gradient`: Michel et al. 2019, I_h = sum over batches of |dL/dgate_h| (accumulated gradient magnitude).
- `taylor`: Molchanov et al. 2019, I_c = mean over batches of (dL/dgate_c)^2; with a gate on the unit's output the
  gate gradient is exactly the first-order Taylor term sum(a * dL/da) of the unit's activations.
- `l1`: sum of |w| of every weight that exists only because of the unit (its rows in the producing layers and its
  columns in the consuming layer); data-free.
- `random`: seeded uniform scores, the baseline every other criterion has to beat.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeconv.common.errors import EdgeconvError
from edgeconv.models.structure import Unit

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Criterion(Protocol):
    name: str
    needs_data: bool

    def scores(self, model: nn.Module, units: list[Unit], batches: Batches) -> dict[str, torch.Tensor]: ...


CRITERIA: dict[str, Callable[[], Criterion]] = {}


def register_criterion(name: str):
    def deco(cls):
        cls.name = name
        CRITERIA[name] = cls
        return cls

    return deco


def get_criterion(name: str, **kwargs) -> Criterion:
    if name not in CRITERIA:
        raise EdgeconvError(f"unknown criterion {name!r}; choose one of: {', '.join(CRITERIA)}")
    return CRITERIA[name](**kwargs)


# ----------------------------------------------------------------------------------------------- gate gradients
def gate_gradients(model: nn.Module, units: list[Unit], batches: Batches) -> dict[str, torch.Tensor]:
    """dL/dgate for every unit and every batch: {unit name: tensor[n_batches, size]}.

    The model runs as it will be deployed (eval mode, its own routing mode), so a routed block's attention heads get
    gradient only from the samples its router sends to attention.
    """
    mods = dict(model.named_modules())
    gates: dict[str, torch.Tensor] = {}
    for u in units:
        g = torch.ones(u.size, requires_grad=True)
        for p in u.paths:
            setattr(mods[p], "head_gate" if u.kind == "heads" else "hidden_gate", g)
        gates[u.name] = g
    per_batch: dict[str, list[torch.Tensor]] = {n: [] for n in gates}
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, list(gates.values()), allow_unused=True)
            for (name, gate), g in zip(gates.items(), grads):
                per_batch[name].append(torch.zeros_like(gate) if g is None else g.detach())
    finally:
        for u in units:
            for p in u.paths:
                setattr(mods[p], "head_gate" if u.kind == "heads" else "hidden_gate", None)
        model.train(was_training)
    if not any(per_batch.values()):
        raise EdgeconvError("no calibration batches: the data source gave no samples")
    return {n: torch.stack(v) for n, v in per_batch.items()}


@register_criterion("gradient")
class GradientSensitivity:
    """Michel et al.: accumulated |dL/dgate| per head (and per channel) over the calibration batches."""

    needs_data = True

    def scores(self, model, units, batches):
        return {n: g.abs().sum(0) for n, g in gate_gradients(model, units, batches).items()}


@register_criterion("taylor")
class TaylorImportance:
    """Molchanov et al. 2019: mean over batches of the squared first-order Taylor term (dL/dgate)^2."""

    needs_data = True

    def scores(self, model, units, batches):
        return {n: g.pow(2).mean(0) for n, g in gate_gradients(model, units, batches).items()}


@register_criterion("random")
class RandomImportance:
    needs_data = False

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def scores(self, model, units, batches):
        return {u.name: torch.rand(u.size, generator=self.gen) for u in units}


# ----------------------------------------------------------------------------------------------- weight magnitude
def _rows_l1(layer: nn.Module) -> torch.Tensor:
    """L1 norm of each output channel's weights (and bias) of a Linear / Conv2d / BatchNorm2d."""
    w = layer.weight.detach().abs()
    s = w.reshape(w.shape[0], -1).sum(1)
    return s + layer.bias.detach().abs() if getattr(layer, "bias", None) is not None else s


def _cols_l1(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach().abs()
    return w.transpose(0, 1).reshape(w.shape[1], -1).sum(1)


def _group(v: torch.Tensor, n_units: int, groups: int = 1) -> torch.Tensor:
    """Sum a per-channel vector laid out [groups, n_units, width] into one value per unit."""
    return v.reshape(groups, n_units, -1).sum(dim=(0, 2))


def unit_weight_l1(m: nn.Module, kind: str) -> torch.Tensor:
    """Weight magnitude per unit of one module, for the unit layouts of edgeconv's layers (or the module's own)."""
    if hasattr(m, "unit_weight_l1"):
        return m.unit_weight_l1()
    if kind == "heads":
        n = int(m.num_heads)
        parts = []
        if hasattr(m, "qkv"):  # Attention / ACMix: q | k | v, head-major each
            parts.append(_group(_rows_l1(m.qkv), n, 3))
        if hasattr(m, "v"):  # ValueOnlyAttention
            parts.append(_group(_rows_l1(m.v), n))
        for extra in ("fc", "dw"):  # ACMix conv path, head-major
            if isinstance(getattr(m, extra, None), nn.Conv2d):
                parts.append(_group(_rows_l1(getattr(m, extra)), n))
        parts.append(_group(_cols_l1(m.proj), n))
        return torch.stack(parts).sum(0)
    # hidden channels: producers' rows + consumer's columns
    layouts = {"fc1": ("fc1", None, "fc2"), "expand": ("expand", "dw", "project"), "reduce": ("conv", None, "expand")}
    for probe, (prod, mid, cons) in layouts.items():
        if hasattr(m, probe) and hasattr(m, cons):

            def first(name):  # ConvBNAct is a Sequential: its conv is [0], its BN [1]
                layer = getattr(m, name)
                return layer[0] if isinstance(layer, nn.Sequential) else layer

            s = _rows_l1(first(prod))
            if mid:
                s = s + _rows_l1(first(mid))
            return s + _cols_l1(first(cons))
    raise EdgeconvError(f"l1 criterion: no known weight layout for {type(m).__name__}; use --criterion gradient")


@register_criterion("l1")
class L1Magnitude:
    needs_data = False

    def scores(self, model, units, batches):
        mods = dict(model.named_modules())
        return {u.name: sum(unit_weight_l1(mods[p], u.kind) for p in u.paths) for u in units}


NORMALISERS = {
    "l2": lambda s: s / s.norm().clamp_min(1e-12),  # Michel et al.: unit L2 norm per layer
    "mean": lambda s: s / s.mean().clamp_min(1e-12),  # 1.0 = the layer's average unit
}


def normalise_per_layer(scores: dict[str, torch.Tensor], how: str = "mean") -> dict[str, torch.Tensor]:
    """Rescale each layer's scores so layers of different scale and width can share one global ranking."""
    if how not in NORMALISERS:
        raise EdgeconvError(f"unknown normalisation {how!r}; choose one of: {', '.join(NORMALISERS)}")
    return {n: NORMALISERS[how](s) for n, s in scores.items()}
