"""Attention heads found from a module's own structure, for attention classes without a hand-written adapter.

A candidate is any attention-like module (`structure.attention_like`) that no adapter knows. Its description
(`models/generic_attention.py`) comes from its children: projections named q / k / v / qkv / kv / query / ... (the
last weight layer in each, with the BatchNorms after it), the output projection (proj / out_proj / o_proj /
output / ...: its first weight layer), per-channel layers whose input is a projection's output tensor (seen in a
trace: a depthwise conv on v), talking-heads mixers (heads -> heads), one-value-per-head layers, and parameters with
a dimension of `num_heads` entries (bias tables, temperatures). Integer attributes equal to `num_heads` times a
per-head width (or to `num_heads`) are bookkeeping and follow the head count.

Each description is checked the way `dependency.py` checks channels: on the example input, removing head h from a
copy of the module must equal zeroing its gate, at the module's output (where zeroing must change something) and at
the model's output. The first of a few readings that passes is kept (packed projections as [3, heads, d] or as
[heads, 3d]; only q split per head, for multi-query attention; with and without the attribute updates); a module
for which none passes is left whole, with the reason of its last reading.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from edgeconv.models.generic_attention import make_generic_heads, unmake_generic_heads
from edgeconv.models.structure import attention_like, is_channel_module, is_head_module

PRODUCERS = {"qkv": 3, "to_qkv": 3, "qkv_proj": 3, "in_proj": 3, "kv": 2, "to_kv": 2, "qk": 2, "q": 1, "k": 1, "v": 1,
             "query": 1, "key": 1, "value": 1, "to_q": 1, "to_k": 1, "to_v": 1, "q_proj": 1, "k_proj": 1,
             "v_proj": 1}  # fmt: skip
QUERY = ("q", "query", "to_q", "q_proj")
OUTPUTS = ("proj", "out_proj", "o_proj", "to_out", "output", "out", "o", "proj_out")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _weight(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def _per_channel(m: nn.Module) -> bool:
    """A layer (or a chain of layers) that acts on each channel on its own: BatchNorm, depthwise conv, activation."""
    leaves = [c for c in m.modules() if not list(c.children())]
    ok = all(
        isinstance(c, nn.modules.batchnorm._BatchNorm)
        or (isinstance(c, nn.Conv2d) and c.groups == c.in_channels == c.out_channels)
        or not any(True for _ in c.parameters(recurse=False))
        for c in leaves
    )
    return ok and any(isinstance(c, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) for c in leaves)


def _rel(root: nn.Module, target: nn.Module) -> str:
    return next(n for n, m in root.named_modules() if m is target)


def _producer(module: nn.Module, name: str, child: nn.Module) -> tuple[str, list[str]] | None:
    """(path of the producing weight layer, paths of the BatchNorms after it) inside `child`, or None."""
    mods = list(child.named_modules())
    last = max((i for i, (_, m) in enumerate(mods) if _weight(m)), default=None)
    if last is None:
        return None
    layer = mods[last][1]
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    prefix = f"{name}." if mods[last][0] else name
    norms = [f"{name}.{p}" for p, m in mods[last + 1 :] if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.num_features == width]  # fmt: skip
    return (prefix + mods[last][0]).rstrip("."), norms


def describe(module: nn.Module, inputs_seen: dict) -> tuple[list[dict], str]:
    """Candidate specs for `module` (most likely first) or ([], why none)."""
    n = getattr(module, "num_heads", None)
    if not isinstance(n, int) or isinstance(n, bool):
        return [], "not multi-head (no integer num_heads)"
    if n < 2:
        return [], f"{n} head"
    children = dict(module.named_children())
    prods = []
    for name, c in children.items():
        if name in PRODUCERS:
            got = _producer(module, name, c)
            if got:
                prods.append((name, *got))
    if not prods:
        return [], "no q/k/v or qkv projection among its children"
    out = next((c for name in OUTPUTS if (c := children.get(name)) is not None), None)
    cols = next((m for m in out.modules() if _weight(m)), None) if out is not None else None
    if cols is None:
        return [], "no output projection (proj / out_proj / o_proj / output) with a weight layer"
    cols_path = _rel(module, cols)
    if (cols.in_features if isinstance(cols, nn.Linear) else cols.in_channels) % n:
        return [], f"output projection input width is not a multiple of {n} heads"
    taken = {id(module.get_submodule(p)) for _, p, _ in prods} | {id(cols)}
    taken |= {id(module.get_submodule(x)) for _, _, norms in prods for x in norms}
    mixers, head_out = [], []
    for p, m in module.named_modules():
        if id(m) in taken or not _weight(m) or not p:
            continue
        w_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        w_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        if w_in == w_out == n and (isinstance(m, nn.Linear) or m.kernel_size == (1, 1)):
            mixers.append(p)
        elif w_out == n:
            head_out.append(p)
    taken |= {id(module.get_submodule(p)) for p in mixers + head_out}
    tables = []
    for owner_path, owner in module.named_modules():
        if owner is not module and (id(owner) in taken or isinstance(owner, (nn.Linear, nn.Conv1d, nn.Conv2d, *NORM_TYPES))
                                    or "Norm" in type(owner).__name__):  # fmt: skip
            continue
        tensors = [*owner.named_parameters(recurse=False), *owner.named_buffers(recurse=False)]
        for attr, t in tensors:
            if t is None or not t.is_floating_point() or n not in t.shape:
                continue
            tables.append([f"{owner_path}.{attr}" if owner_path else attr, list(t.shape).index(n)])
    per_channel = []
    for p, m in module.named_modules():
        if not p or id(m) in taken or not _per_channel(m) or any(p.startswith(q + ".") for q, _ in per_channel):
            continue
        seen = inputs_seen.get(id(m))
        for i, (name, path, _) in enumerate(prods):
            if seen is not None and seen is inputs_seen.get(("out", id(module.get_submodule(name)))):
                per_channel.append([p, i])
    per_head = {}
    for _, path, _ in prods:
        layer = module.get_submodule(path)
        per_head[_width_out(layer) // n] = True
    per_head[_in(cols) // n] = True
    attrs = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "num_heads" or isinstance(v, bool) or not isinstance(v, int):
            continue
        if v == n:
            attrs[k] = 1
        elif v % n == 0 and v // n in per_head:
            attrs[k] = v // n
    base = {"built": n, "cols": cols_path, "mixers": mixers, "head_out": head_out, "tables": tables, "fix": []}

    def spec(selected, packed_layout, with_attrs):
        rows, norms, pc = [], [], []
        for j, (name, path, ns) in enumerate(selected):
            width = _width_out(module.get_submodule(path))
            parts = PRODUCERS[name] if width % (PRODUCERS[name] * n) == 0 else 1
            if width % (parts * n):
                return None
            rows.append([path, packed_layout if parts > 1 else "split", parts])
            norms += [[x, j] for x in ns]
            orig = prods.index((name, path, ns))
            pc += [[p, j] for p, i in per_channel if i == orig]
        return {**base, "rows": rows, "norms": norms, "per_channel": pc, "attrs": attrs if with_attrs else {}}

    queries = [x for x in prods if x[0] in QUERY]
    readings = [spec(prods, "split", True), spec(prods, "head", True)]
    if queries and len(queries) < len(prods):
        readings.append(spec(queries, "split", True))
    readings += [spec(prods, "split", False), spec(prods, "head", False)]
    out, seen_keys = [], set()
    for r in readings:
        if r is not None and repr(r) not in seen_keys:
            seen_keys.add(repr(r))
            out.append(r)
    if not out:
        return [], "projection widths are not a multiple of num_heads"
    return out, ""


def _width_out(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _in(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        return next((t for t in map(_first_tensor, x) if t is not None), None)
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-4 * a.abs().max().clamp_min(1e-6))


def _check(model: nn.Module, path: str, spec: dict, example: torch.Tensor) -> str:
    """'' when removing one head of `path` (described by `spec`) equals zeroing its gate, else why not. On success
    the reshapes found to need a -1 are written into `spec["fix"]`."""
    from edgeconv.models.generic_attention import ReshapeFix

    module = model.get_submodule(path)
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    n = int(module.num_heads)
    h = n // 2
    captured = {}

    def grab(_m, args, kwargs, out):
        captured.setdefault("args", (args, kwargs))
        captured.setdefault("out", _first_tensor(out))

    make_generic_heads(module, spec)
    try:
        with torch.no_grad():
            handle = module.register_forward_hook(grab, with_kwargs=True)
            try:
                model(example)
            finally:
                handle.remove()
            if "args" not in captured:
                return "not called in the forward pass"
            args, kwargs = captured["args"]
            gate = torch.ones(n)
            gate[h] = 0.0
            module.head_gate = gate
            try:
                masked_m = _first_tensor(module(*args, **kwargs))
                masked = model(example)
            finally:
                module.head_gate = None
            if _close(captured["out"], masked_m):
                return "zeroing a head's gate changes nothing at the module output"
            probe = copy.deepcopy(module)
            probe.keep_heads(torch.tensor([i for i in range(n) if i != h]))
            x0 = args[0] if args else None
            width = int(x0.shape[1] if x0.dim() == 4 else x0.shape[-1]) if isinstance(x0, torch.Tensor) else -1
            mode = ReshapeFix(heads=(n, n - 1), suspects=(width,), discover=True)
            with mode:
                removed_m = _first_tensor(probe(*args, **kwargs))
            found = [[int(i), int(d), how, int(v)] for i, (d, how, v) in sorted(mode.found.items())]
            probe.head_spec = {**spec, "fix": found}
            if not _close(masked_m, removed_m):
                return "removing a head does not give what zeroing its gate gives at the module output"
            setattr(parent, leaf, probe)
            try:
                removed = model(example)
            finally:
                setattr(parent, leaf, module)
            if not _close(masked, removed):
                return "removing a head does not give what zeroing its gate gives at the model output"
    except (RuntimeError, IndexError, TypeError, ValueError, AttributeError) as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        return f"removing a head breaks its forward ({type(e).__name__}: {msg[:120]})"
    finally:
        module.head_gate = None
    spec["fix"] = found
    return ""


def _known(m: nn.Module) -> bool:
    return is_head_module(m) or is_channel_module(m)


def add_generic_heads(model: nn.Module, example: torch.Tensor) -> tuple[list[str], list[tuple[str, type, str]]]:
    """Describe, check and make the head units of every attention-like module no adapter knows (in place).

    Returns (paths made prunable, [(path, class, reason)] of those left whole)."""
    if "_generic_heads" in model.__dict__:  # found once (copies inherit the record): no second trace
        return [], list(model.__dict__["_generic_heads"])
    was_training = model.training
    model.eval()
    made, left = [], []
    try:
        candidates = []
        for path, m in model.named_modules():
            if not attention_like(m) or _known(m) or any(_known(c) for c in m.modules() if c is not m):
                continue
            if any(attention_like(c) for c in m.modules() if c is not m):
                continue  # a block around an attention: the inner module is the candidate
            candidates.append((path, m))
        seen: dict = {}

        def before(mod, args):
            seen.setdefault(id(mod), args[0] if args else None)

        def after(mod, args, out):
            seen.setdefault(("out", id(mod)), out)

        hooks = []
        for _, m in candidates:
            for c in m.modules():
                hooks += [c.register_forward_pre_hook(before), c.register_forward_hook(after)]
        try:
            with torch.no_grad():
                model(example)
        except Exception as e:  # noqa: BLE001 - a model that cannot run its own example: nothing generic
            for p, m in candidates:
                left.append((p, type(m), f"the example input does not run ({type(e).__name__})"))
            candidates = []
        finally:
            for hk in hooks:
                hk.remove()
        model.train()  # cached bias tables computed under no_grad are dropped
        model.eval()
        winners: dict[type, str] = {}  # per class, the reading that passed first: tried first on its siblings
        for path, m in candidates:
            specs, why = describe(m, seen)
            specs.sort(key=lambda s: 0 if repr({**s, "fix": []}) == winners.get(type(m)) else 1)
            for s in specs:
                why = _check(model, path, s, example)
                if not why:
                    winners.setdefault(type(m), repr({**s, "fix": []}))
                    made.append(path)
                    break
                unmake_generic_heads(m)
            if why:
                unmake_generic_heads(m)
                left.append((path, type(m), why))
    finally:
        model.train(was_training)
    model.__dict__["_generic_heads"] = list(left)
    return made, left
