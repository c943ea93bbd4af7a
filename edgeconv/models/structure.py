"""Prunable structural units and how a recorded pruned structure is re-applied on load.

A unit is a set of modules whose heads (or hidden channels) must be removed together. Heads live in modules with
`num_heads`, `head_dim`, `head_gate` and `keep_heads(idx)`; hidden channels in modules with `hidden`,
`hidden_gate` and `keep_hidden(idx)`. Couplings across modules (a layer that reuses another layer's attention map)
are declared by the module with `couples_heads_with` (the path of the module it shares heads with).

The dependencies are declared by our own families rather than traced: every unit is internal to one block, and the
residual widths (which would couple whole stages) are never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from edgeconv.errors import EdgeconvError


@dataclass
class Unit:
    name: str  # display name, e.g. "blocks.2.attn"
    kind: str  # "heads" | "channels"
    paths: list[str]  # module paths pruned together with the same indices
    size: int  # current number of heads or channels


def is_head_module(m: nn.Module) -> bool:
    return hasattr(m, "keep_heads") and hasattr(m, "num_heads")


def is_channel_module(m: nn.Module) -> bool:
    return hasattr(m, "keep_hidden") and hasattr(m, "hidden")


def prunable_units(model: nn.Module) -> list[Unit]:
    units: list[Unit] = []
    by_path: dict[str, Unit] = {}
    for path, m in model.named_modules():
        if is_head_module(m):
            partner = getattr(m, "couples_heads_with", None)
            if partner and partner in by_path:
                by_path[partner].paths.append(path)
                by_path[path] = by_path[partner]
                continue
            u = Unit(path, "heads", [path], int(m.num_heads))
            units.append(u)
            by_path[path] = u
        elif is_channel_module(m):
            units.append(Unit(path, "channels", [path], int(m.hidden)))
    return units


def current_structure(model: nn.Module) -> dict[str, dict]:
    """{module path: {"heads": n} | {"hidden": n}} for every unit narrower than the family's config built it."""
    return {
        p: ({"heads": int(m.num_heads)} if is_head_module(m) else {"hidden": int(m.hidden)})
        for p, m in model.named_modules()
        if is_head_module(m) or is_channel_module(m)
    }


def keep_unit(model: nn.Module, unit: Unit, keep: torch.Tensor) -> None:
    if len(keep) < 1:
        raise EdgeconvError(f"{unit.name}: refusing to remove every {unit.kind[:-1]} of a layer")
    mods = dict(model.named_modules())
    for p in unit.paths:
        (mods[p].keep_heads if unit.kind == "heads" else mods[p].keep_hidden)(keep)
    unit.size = len(keep)


def apply_structure(model: nn.Module, structure: dict[str, dict]) -> None:
    """Shrink a freshly built model to the recorded widths (weights are loaded afterwards)."""
    mods = dict(model.named_modules())
    for path, spec in structure.items():
        m = mods.get(path)
        if m is None:
            raise EdgeconvError(f"recorded structure names {path!r}, which this model does not have")
        if "heads" in spec and is_head_module(m) and spec["heads"] != m.num_heads:
            m.keep_heads(torch.arange(int(spec["heads"])))
        elif "hidden" in spec and is_channel_module(m) and spec["hidden"] != m.hidden:
            m.keep_hidden(torch.arange(int(spec["hidden"])))
