"""Hidden channels of users' models, found with Torch-Pruning's dependency graph.

For every plain producing layer (an `nn.Linear`, or an `nn.Conv2d` with groups 1) the graph gives the group of
layers whose channels must go with its output channels. A group is a hidden-channel unit when it stays inside one
block: the producer's rows, norms over those channels, depthwise convs between, element-wise ops (activations,
dropout), and exactly one consuming layer's columns. A group that reaches anything else (a residual sum, a second
consumer, attention reshapes) couples the residual width and is left alone, as are layers inside units edgeconv
already knows (its own families, timm's Attention/Mlp, `nn.MultiheadAttention`).

Each candidate is then checked on the example input: removing its first channel must give the output that zeroing
that channel's gate gives. Only units that pass are made (`models.adapters.make_graph_unit`), so what Torch-Pruning
traced and what edgeconv slices are the same thing. The pruning itself (gates, criteria, slicing, the record that
reloads without tracing) is edgeconv's.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from edgeconv.common.errors import EdgeconvError
from edgeconv.models.structure import is_channel_module, is_head_module, unknown_attention

ELEMENTWISE_OPS = {"_ElementWiseOp", "_ReshapeOp"}  # Torch-Pruning's pseudo-modules for ops without weights


def _plain(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def _covered(model: nn.Module) -> set[int]:
    """ids of every module inside a unit edgeconv already knows (the unit's own module included), and inside an
    attention module left whole (its internals are not split into channel units behind its back)."""
    out: set[int] = set()
    for m in model.modules():
        if is_head_module(m) or is_channel_module(m):
            out.update(id(c) for c in m.modules())
    mods = dict(model.named_modules())
    for path, _ in unknown_attention(model):
        out.update(id(c) for c in mods[path].modules())
    return out


def _candidates(model: nn.Module, example: torch.Tensor) -> list[tuple[str, list[tuple[str, str]]]]:
    try:
        import torch_pruning as tp
    except ImportError as e:  # a core dependency; only a broken install lands here
        raise EdgeconvError(f"torch-pruning is not installed ({e}); reinstall edgeconv") from None
    names = {id(m): n for n, m in model.named_modules()}
    covered = _covered(model)
    try:
        with warnings.catch_warnings():  # it warns about every bias table it would prune on its last dimension
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as e:  # noqa: BLE001 - a model Torch-Pruning cannot trace: the known units only, said once
        warnings.warn(f"the dependency graph could not trace this model ({type(e).__name__}: {e}); only heads and "
                      "channels of known modules are pruned", stacklevel=2)  # fmt: skip
        return []
    found = []
    mods = dict(model.named_modules())
    for path, m in model.named_modules():
        if not _plain(m) or id(m) in covered or m not in dg.module2node:
            continue
        fn = tp.prune_linear_out_channels if isinstance(m, nn.Linear) else tp.prune_conv_out_channels
        try:
            group = dg.get_pruning_group(m, fn, idxs=[0])
        except Exception:  # noqa: BLE001 - a layer the graph cannot group is not a unit
            continue
        members, consumers, ok = [], [], True
        for dep, _ in group:
            t, handler = dep.target.module, getattr(dep.handler, "__name__", "")
            if t is m and "out" in handler:
                continue
            if type(t).__name__ in ELEMENTWISE_OPS:
                continue
            if id(t) in covered or id(t) not in names:
                ok = False
            elif isinstance(t, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                members.append((names[id(t)], "norm"))
            elif isinstance(t, nn.Conv2d) and t.groups == t.in_channels == t.out_channels and t.groups > 1:
                members.append((names[id(t)], "dw"))
            elif _plain(t) and "in" in handler:
                consumers.append(names[id(t)])
            else:
                ok = False
            if not ok:
                break
        if ok and len(consumers) == 1 and consumers[0] != path:
            width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            widths = {_width(mods[p]) for p, _ in members} | {_in_width(mods[consumers[0]])}
            if widths == {width}:  # a flatten or reshape between them maps channels to other widths: not a unit
                found.append((consumers[0], [(path, "out"), *dict.fromkeys(members)]))
    return found


def _width(m: nn.Module) -> int:
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1]) if len(m.normalized_shape) == 1 else -1
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return int(m.num_features)
    return int(m.out_channels)  # a depthwise conv


def _in_width(m: nn.Module) -> int:
    return int(m.in_features if isinstance(m, nn.Linear) else m.in_channels)


def _passes(model: nn.Module, consumer: str, example: torch.Tensor) -> bool:
    """Removing channel 0 of the unit equals zeroing its gate, at the consumer's output (where zeroing it must change
    something, so the check is not vacuous) and at the model's output (nothing else reads the channel)."""
    mods = dict(model.named_modules())
    c = mods[consumer]
    if c.hidden < 2:
        return False

    def run(m: nn.Module, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        seen = []
        h = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
        try:
            out = m(example)
        finally:
            h.remove()
        return out, seen[0]

    gate = torch.ones(c.hidden)
    gate[0] = 0.0
    try:
        with torch.no_grad():
            full, full_c = run(model, c)
            c.hidden_gate = gate
            try:
                masked, masked_c = run(model, c)
            finally:
                c.hidden_gate = None
            probe = copy.deepcopy(model)
            pc = dict(probe.named_modules())[consumer]
            pc.keep_hidden(torch.arange(1, c.hidden))
            removed, removed_c = run(probe, pc)
    except (RuntimeError, IndexError, TypeError, ValueError):
        return False
    if masked.shape != removed.shape or masked_c.shape != removed_c.shape:
        return False

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool((a - b).abs().max() <= 1e-4 * a.abs().max().clamp_min(1e-6))

    changed = not close(full_c, masked_c)
    return changed and close(masked_c, removed_c) and close(masked, removed)


def add_graph_units(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Find, check and make the hidden-channel units of `model` (in place); the consumers' paths."""
    from edgeconv.models.prunable import make_graph_unit, unmake_graph_unit

    if model.__dict__.get("_graph_units_traced"):  # found once (copies inherit the flag): no second trace
        return []
    was_training = model.training
    model.eval()
    made = []
    try:
        candidates = _candidates(model, example)
        model.train()  # timm's attention-bias caches (LeViT, EfficientViT) hold traced tensors: train() drops them
        model.eval()
        mods = dict(model.named_modules())  # making a unit changes a module's class, not the module tree
        for consumer, members in candidates:
            if is_channel_module(mods[consumer]):  # two producers feeding one consumer: already a unit
                continue
            make_graph_unit(model, consumer, members)
            if _passes(model, consumer, example):
                made.append(consumer)
            else:
                unmake_graph_unit(mods[consumer])
    finally:
        model.train(was_training)
    model.__dict__["_graph_units_traced"] = True
    return made
