"""Run one image through a model and collect what its attention layers, routers and saliency gates did.

Attention modules expose `record_attn` / `last_attn` ([B, H, N, N] after a forward); windowed ACMix blocks record
one map per window; saliency layers that drop tokens record the kept indices in `last_keep`, so the token set a
later layer sees is a subset of the first layer's grid, tracked here as grid positions. Routed blocks record their
decision (`last_route`) and score (`last_p_attn`); when a block routes to conv its attention path never runs, so
its map is computed afterwards on the block's real input and marked as not taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from edgeconv.common.errors import EdgeconvError
from edgeconv.models import routers


@dataclass
class AttentionRecord:
    name: str  # module path, e.g. "blocks.0.attn"
    kind: str  # "global" (all grid tokens), "sparse" (a subset) or "window" (per window)
    attn: torch.Tensor  # [H, N, N] for global/sparse; [nW, H, n, n] for window
    grid: tuple[int, int]  # the full token grid (gh, gw) the layer's tokens live on
    positions: torch.Tensor  # [N] flat grid index of each token (global/sparse); all grid cells for window
    window: int | None = None  # window side for kind == "window"
    taken: bool = True  # False: a routed block whose router chose conv (map shown for reference)

    @property
    def heads(self) -> int:
        return int(self.attn.shape[-3])


@dataclass
class RouteRecord:
    name: str
    p_attn: float
    route: str  # "attn" | "conv"
    threshold: float
    mode: str


@dataclass
class SaliencyRecord:
    name: str
    scores: torch.Tensor  # [N] saliency of the tokens this layer saw
    positions: torch.Tensor  # [N] their flat grid indices
    kept: torch.Tensor | None  # flat grid indices that survive this layer's top-k, None when it keeps all
    grid: tuple[int, int]
    tau: float | None = None


@dataclass
class Inspection:
    probs: torch.Tensor  # [num_classes]
    pred: int
    attention: list[AttentionRecord] = field(default_factory=list)
    routes: list[RouteRecord] = field(default_factory=list)
    saliency: list[SaliencyRecord] = field(default_factory=list)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "record_attn")]


def _square_grid(n: int, where: str) -> tuple[int, int]:
    g = math.isqrt(n)
    if g * g != n:
        raise EdgeconvError(f"{where}: {n} tokens do not form a square grid; cannot map attention onto the image")
    return g, g


Positions = tuple[torch.Tensor, int, "torch.Tensor | None"]


def _saliency_positions(model: nn.Module, first_tokens: dict[str, int]) -> dict[str, Positions]:
    """For each saliency layer: (grid positions of the tokens it saw, full token count, positions it kept)."""
    out: dict[str, Positions] = {}
    stage_pos: dict[str, tuple[torch.Tensor, int]] = {}
    for name, m in model.named_modules():
        if not hasattr(m, "last_keep") or not hasattr(m, "attn"):
            continue
        stage = name.rpartition(".")[0]
        if stage not in stage_pos:
            n0 = first_tokens.get(f"{name}.attn")
            if n0 is None:
                continue
            stage_pos[stage] = (torch.arange(n0), n0)
        pos, n0 = stage_pos[stage]
        kept = None
        if getattr(m, "keep_ratio", 1.0) < 1.0 and m.last_keep is not None:
            kept = pos[m.last_keep[0]]
            stage_pos[stage] = (kept, n0)
        out[name] = (pos, n0, kept)
    return out


def _recorder(store: dict, name: str, what):
    # A forward pre-hook that returns something replaces the module's inputs, so this one returns None.
    def hook(module, args) -> None:
        store.setdefault(name, what(args[0]))

    return hook


@torch.no_grad()
def inspect_model(model: nn.Module, x: torch.Tensor) -> Inspection:
    """Forward one normalised image [C, H, W] or [1, C, H, W] and collect attention, routing and saliency."""
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise EdgeconvError(f"inspect takes one image at a time, got a tensor of shape {list(x.shape)}")
    mods = attention_modules(model)
    if not mods:
        raise EdgeconvError("this model has no edgeconv attention layers to inspect")
    model.eval()
    in_shapes: dict[str, tuple[int, ...]] = {}
    block_inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for n, m in mods:
        m.record_attn, m.last_attn = True, None
        hooks.append(m.register_forward_pre_hook(_recorder(in_shapes, n, lambda t: tuple(t.shape))))
    routed = routers(model)
    for n, b in routed:
        b.last_route, b.last_p_attn = None, None
        hooks.append(b.register_forward_pre_hook(_recorder(block_inputs, n, lambda t: t)))
    for m in model.modules():
        if hasattr(m, "last_keep"):
            m.last_keep = None
    try:
        logits = model(x)
        for n, b in routed:
            # A conv-routed block never ran its attention path; run it on the same input only to show the map.
            if getattr(b, "attn", None) is not None and b.attn.last_attn is None and n in block_inputs:
                b.attn_branch(block_inputs[n])
    finally:
        for h in hooks:
            h.remove()
        for _, m in mods:
            m.record_attn = False
    probs = logits.softmax(-1)[0]
    ins = Inspection(probs=probs, pred=int(probs.argmax()))

    for n, b in routed:
        if b.last_p_attn is None:
            continue
        p = float(b.last_p_attn[0])
        ins.routes.append(RouteRecord(n, p, "attn" if bool(b.last_route[0]) else "conv", float(b.threshold), b.mode))
    not_taken = {f"{r.name}.attn" for r in ins.routes if r.route == "conv"}
    not_taken |= {f"{n}.attn" for n, b in routed if b.mode == "static:conv"}

    first_tokens = {n: s[1] for n, s in in_shapes.items() if len(s) == 3}
    sal_pos = _saliency_positions(model, first_tokens)
    attn_pos = {f"{n}.attn": v for n, v in sal_pos.items()}
    for n, m in mods:
        a = m.last_attn
        if a is None:
            continue
        if a.ndim != 4:
            raise EdgeconvError(f"{n}: unexpected attention map shape {list(a.shape)}")
        shape = in_shapes.get(n, ())
        if len(shape) == 4 and getattr(m, "window", None):  # windowed attention on a feature map
            gh, gw = int(shape[2]), int(shape[3])
            ins.attention.append(
                AttentionRecord(n, "window", a, (gh, gw), torch.arange(gh * gw), int(m.window), n not in not_taken)
            )
            continue
        if n in attn_pos:
            pos, n0, _ = attn_pos[n]
            grid = _square_grid(n0, n)
            kind = "global" if len(pos) == n0 else "sparse"
        else:
            grid = _square_grid(int(a.shape[-1]), n)
            pos, kind = torch.arange(grid[0] * grid[1]), "global"
        ins.attention.append(AttentionRecord(n, kind, a[0], grid, pos, None, n not in not_taken))

    for n, (pos, n0, kept) in sal_pos.items():
        att = dict(model.named_modules())[f"{n}.attn"]
        s = getattr(att, "last_saliency", None)
        if s is None and kept is None:
            continue
        # a layer that shares the previous layer's map has no saliency head of its own, but may still drop tokens
        s = torch.full((1, len(pos)), float("nan")) if s is None else s
        tau = getattr(att, "last_tau", None)
        ins.saliency.append(
            SaliencyRecord(n, s[0], pos, kept, _square_grid(n0, n), float(tau[0]) if tau is not None else None)
        )
    return ins
