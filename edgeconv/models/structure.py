"""Prunable structural units and how a recorded pruned structure is re-applied on load.

A unit is a set of modules whose heads (or hidden channels) must be removed together. Heads live in modules with
`num_heads`, `head_dim`, `head_gate` and `keep_heads(idx)`; hidden channels in modules with `hidden`,
`hidden_gate` and `keep_hidden(idx)`. Couplings across modules (a layer that reuses another layer's attention map)
are declared by the module with `couples_heads_with` (the path of the module it shares heads with).

Our own families declare their units rather than trace them: every unit is internal to one block, and the residual
widths (which would couple whole stages) are never pruned. Users' models also get the hidden channels that
Torch-Pruning's dependency graph finds between two plain layers (`compress/dependency.py`); such a unit is recorded
with its members (`{"hidden": n, "graph": [[path, role], ...]}`), so reloading needs no tracing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from edgeconv.common.errors import EdgeconvError
from edgeconv.models.generic_attention import is_generic, make_generic_heads
from edgeconv.models.prunable import make_graph_unit


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
    out = {}
    for p, m in model.named_modules():
        if is_head_module(m):
            out[p] = {"heads": int(m.num_heads)}
            if is_generic(m):  # described from its own structure: the description travels with the checkpoint
                out[p]["generic"] = m.head_spec
            if hasattr(m, "head_ids"):  # heads that are not interchangeable (a cascade): which ones remain
                out[p]["head_ids"] = [int(h) for h in m.head_ids]
        elif is_channel_module(m):
            out[p] = {"hidden": int(m.hidden)}
            if getattr(m, "graph_members", None):
                out[p]["graph"] = [list(x) for x in m.graph_members]
    return out


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
        if spec.get("graph") and not is_channel_module(m):
            graph = spec["graph"]
            if not isinstance(graph, list) or not all(isinstance(x, list) and len(x) == 2 for x in graph):
                raise EdgeconvError(f"recorded channel unit {path!r} has a malformed member list")
            make_graph_unit(model, path, [(str(a), str(b)) for a, b in graph])
        if spec.get("generic") and not is_head_module(m):
            if not isinstance(spec["generic"], dict):
                raise EdgeconvError(f"recorded head unit {path!r} has a malformed description")
            make_generic_heads(m, spec["generic"])
        if "head_ids" in spec and is_head_module(m) and hasattr(m, "head_ids"):
            ids = spec["head_ids"]
            bad = not isinstance(ids, list) or not ids or len(set(map(str, ids))) != len(ids)
            if (
                bad
                or any(not isinstance(h, int) or not 0 <= h < m.num_heads for h in ids)
                or spec.get("heads", len(ids)) != len(ids)
            ):
                raise EdgeconvError(f"recorded structure gives {path!r} head ids {ids!r}; the model builds {m.num_heads}")
            if len(ids) != m.num_heads:
                m.keep_heads(torch.tensor(sorted(set(ids))))
            continue
        for key, holds, width in (("heads", is_head_module, "num_heads"), ("hidden", is_channel_module, "hidden")):
            if key in spec and holds(m):
                n, full = spec[key], int(getattr(m, width))
                if not isinstance(n, int) or not 1 <= n <= full:
                    raise EdgeconvError(f"recorded structure gives {path!r} {n!r} {key}; the model builds 1..{full}")
                if n != full:
                    (m.keep_heads if key == "heads" else m.keep_hidden)(torch.arange(n))
                break


def attention_like(m: nn.Module) -> bool:
    """A module that looks like attention: its class name says so, or it has an integer `num_heads` and a child
    named like a q/k/v projection. (Squeeze-excite style "attention" without heads is named too, and left whole.)"""
    name = type(m).__name__.lower()
    if "attention" in name or "attn" in name:
        return True
    n = getattr(m, "num_heads", None)
    return isinstance(n, int) and any(c in dict(m.named_children()) for c in ("qkv", "q", "kv", "query", "to_qkv"))


def unknown_attention(model: nn.Module) -> list[tuple[str, type]]:
    """(path, class) of modules that look like attention and have no head structure edgeconv can prune (the
    innermost such module where one holds another)."""

    def known(m: nn.Module) -> bool:
        return is_head_module(m) or is_channel_module(m)

    out = []
    for path, m in model.named_modules():
        if attention_like(m) and not known(m) and not any(known(c) for c in m.modules() if c is not m):
            if not any(attention_like(c) for c in m.modules() if c is not m):
                out.append((path, type(m)))
    return out
