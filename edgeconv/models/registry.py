"""The family registry and factory: `register_family`, `create_model`, `create_model_from_config`.

A family module registers its builder with `@register_family`; `edgeconv/models/__init__.py` imports every family
module, so adding a family is one new file and one line there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from edgeconv.common.errors import EdgeconvError
from edgeconv.common.trust import is_factory_name, trust
from edgeconv.models.prunable import adapt
from edgeconv.models.structure import apply_structure


@dataclass
class Family:
    name: str
    build: Callable[[dict], nn.Module]
    variants: dict[str, dict]
    description: str
    has_attention: bool = True
    routed: bool = False
    extra: dict = field(default_factory=dict)
    # `init(model, cfg)`: initial weights for a freshly created model (e.g. pretrained ones); never run when a
    # checkpoint is rebuilt, whose own weights replace them
    init: Callable[[nn.Module, dict], None] | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    variants: dict[str, dict],
    description: str,
    routed: bool = False,
    has_attention: bool = True,
    init: Callable[[nn.Module, dict], None] | None = None,
):
    """Decorator for a family's builder `build(cfg) -> nn.Module` (the module must set `model.cfg = cfg`)."""

    def deco(fn: Callable[[dict], nn.Module]):
        _FAMILIES[name] = Family(name, fn, variants, description, has_attention, routed, init=init)
        return fn

    return deco


def families() -> dict[str, Family]:
    """Every registered family (`edgeconv.models` imports each family module, so all are registered)."""
    return dict(_FAMILIES)


def list_models() -> list[str]:
    return [f"{f.name}-{v}" for f in families().values() for v in f.variants]


def parse_name(name: str) -> tuple[str, str]:
    if name.startswith("timm:"):
        return "timm", name[5:]
    if is_factory_name(name):
        return "module", name
    fams = families()
    fam, _, variant = name.rpartition("-")
    if fam not in fams or variant not in fams[fam].variants:
        raise EdgeconvError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}, timm:NAME or package.module:factory"
        )
    return fam, variant


def create_model(name: str, *, num_classes: int = 10, in_chans: int = 1, img_size: int = 32, **overrides) -> nn.Module:
    """Build a zoo variant (`family-size`), a timm model (`timm:NAME`) or a user's module (`package.module:factory`,
    which naming it here allows to be imported) with freshly initialised weights."""
    fam, variant = parse_name(name)
    if fam == "timm":
        cfg = {"family": "timm", "variant": variant, "timm_name": variant}
    elif fam == "module":
        trust(name)
        cfg = {"family": "module", "variant": name.rpartition(":")[2], "factory": name}
    else:
        cfg = {"family": fam, "variant": variant, **families()[fam].variants[variant]}
    cfg.update(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **overrides)
    model = create_model_from_config(cfg)
    init = families()[fam].init if fam in _FAMILIES else None
    if init is not None:
        init(model, cfg)
    return model


def create_model_from_config(cfg: dict) -> nn.Module:
    """Rebuild a model from a recorded config: the family builder, then any recorded pruned structure."""
    fams = families()
    fam = cfg.get("family")
    if fam not in fams:
        raise EdgeconvError(f"unknown model family {fam!r} in config (known: {', '.join(sorted(fams))})")
    model = fams[fam].build(dict(cfg))
    model.cfg = {**cfg, **(getattr(model, "cfg", None) or {})}  # what the builder adds (e.g. timm_version) is kept
    if cfg.get("structure"):
        adapt(model)  # users' timm / nn.MultiheadAttention modules take the recorded widths like ours
        apply_structure(model, cfg["structure"])
    return model


def set_routing(model: nn.Module, mode: str) -> int:
    """Set every router's inference mode (models/routed.py ROUTING_MODES); returns how many were set."""
    n = 0
    for m in model.modules():
        if hasattr(m, "set_routing_mode"):
            m.set_routing_mode(mode)
            n += 1
    return n


def routers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "set_routing_mode")]


@torch.no_grad()
def count_params_macs(model: nn.Module, pre: dict) -> tuple[int, int]:
    """Parameters and multiply-accumulates for one input (routed blocks counted with both branches)."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    saved = [(m, m.mode) for _, m in routers(model)]
    set_routing(model, "soft")
    # a parameter handed to a submodule as an input (PiT's class token) would make the counter's module tracker
    # ask for a gradient function under no_grad: count with gradients off
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        x = torch.zeros(1, pre["channels"], pre["size"], pre["size"])
        with FlopCounterMode(display=False) as fc:
            model(x)
        macs = fc.get_total_flops() // 2
    finally:
        for p, g in grads:
            p.requires_grad_(g)
        for m, mode in saved:
            m.set_routing_mode(mode)
        model.train(was_training)
    return params, int(macs)
