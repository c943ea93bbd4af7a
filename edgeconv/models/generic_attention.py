"""Attention heads of modules nobody wrote an adapter for, pruned from a recorded description of their structure.

A multi-head attention module (one with an integer `num_heads`) is described by a spec, a JSON-able dict that
`compress/heads.py` derives from the module's own children and checks on an example input, and that a checkpoint's
`cfg["structure"]` records so reloading needs no tracing:

- `rows`: the projections that produce per-head channels ([path, layout, parts]: q, k, v, qkv, kv, ...). Layout
  `split` is [parts, heads, width] (timm's `qkv(x).reshape(B, N, 3, heads, d)`), `head` is [heads, parts * width]
  (LeViT-style per-head [q | k | v]); BatchNorms over a producer's outputs (`norms`: [path, producer]) and
  per-channel layers applied to its output (`per_channel`: a depthwise conv on v) keep the same channels.
- `cols`: the output projection's first weight layer; head h owns its input channels [h * w, (h + 1) * w)
  (head-major concatenation). The head gate scales these input channels (a forward pre-hook), which is exactly
  what removing the head's columns leaves.
- `tables`: parameters with one entry per head along a dimension (`attention_biases` [heads, ...], relative
  position tables [..., heads], per-head temperatures); `mixers`: talking-heads layers (heads -> heads, both
  sides sliced); `head_out`: layers producing one value per head (a relative-position MLP), rows sliced.
- `attrs`: integer attributes derived from the head count (`{name: per-head multiple}`, e.g. total attention dims).
- `fix`: reshapes in the module's forward that take their width from the input (`reshape(B, N, C)`,
  `C // num_heads`): the call's ordinal within one forward, the dimension and how it is replaced once heads are gone
  (applied by a TorchFunctionMode while the module has fewer heads than it was built with).

Per-head norms (q_norm / k_norm over the head width) and window partitioning are untouched. The module keeps its own
class's forward; the instance's class becomes a subclass that adds `head_gate` / `keep_heads(idx)`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from edgeconv.models.layers import _keep_cols, _keep_rows

RESHAPES = (torch.Tensor.reshape, torch.Tensor.view, torch.reshape)


def _shape_args(func, args) -> tuple[torch.Tensor, list] | None:
    """(tensor, requested shape) of a reshape/view call given as (t, *dims) or (t, dims); None for view(dtype)."""
    t, rest = args[0], list(args[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        rest = list(rest[0])
    if not rest or not all(isinstance(d, (int, torch.SymInt)) for d in rest):
        return None
    return t, rest


class ReshapeFix(TorchFunctionMode):
    """Applies (or, with `discover`, finds) what a width-from-input reshape needs once heads are removed.

    Calls are counted in order within one forward; `fixes` is {ordinal: [dimension, how, value]}: how "scale" takes
    the requested width (the input's, C) to C * heads_now / heads_built (the attention's own width), how "const"
    puts back the head width the module was built with (a `C // num_heads` computed from the input). Discovering: a
    call that fails is retried with one of the `suspects` dimensions (the input width, or it divided by the heads
    left) replaced, rightmost first; the first that runs is recorded."""

    def __init__(self, fixes: dict | None = None, heads: tuple[int, int] = (1, 1), suspects: tuple[int, ...] = (),
                 discover: bool = False):  # fmt: skip
        super().__init__()
        self.fixes, self.heads, self.suspects, self.discover = dict(fixes or {}), heads, suspects, discover
        self.found: dict[int, list] = {}
        self.n = 0

    def _value(self, requested: int, how: str, value: int) -> int:
        built, now = self.heads
        return requested * now // built if how == "scale" else int(value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in RESHAPES:
            return func(*args, **kwargs)
        parsed = _shape_args(func, args)
        i, self.n = self.n, self.n + 1
        if parsed is None:
            return func(*args, **kwargs)
        t, shape = parsed
        if i in self.fixes:
            d, how, value = self.fixes[i]
            if isinstance(shape[d], int):
                shape[d] = self._value(shape[d], how, value)
            return func(t, shape, **kwargs)
        if not self.discover:
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except RuntimeError:
            built, now = self.heads
            width = self.suspects[0] if self.suspects else -1
            for d in reversed(range(len(shape))):
                if not isinstance(shape[d], int):
                    continue
                if shape[d] == width and width * now % built == 0:
                    fix = [d, "scale", 0]
                elif shape[d] == width // now and width % built == 0:
                    fix = [d, "const", width // built]
                else:
                    continue
                trial = list(shape)
                trial[d] = self._value(shape[d], fix[1], fix[2])
                try:
                    out = func(t, trial, **kwargs)
                except RuntimeError:
                    continue
                self.found[i] = fix
                return out
            raise


def _layer(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def head_channels(heads: torch.Tensor, n_heads: int, width: int, layout: str = "split", parts: int = 1) -> torch.Tensor:
    """Channel indices of `heads` in a layer of `width` channels holding `parts` per-head blocks for `n_heads` heads."""
    if layout == "head":
        per = width // n_heads
        return (heads.view(-1, 1) * per + torch.arange(per).view(1, -1)).flatten()
    per = width // (parts * n_heads)
    idx = [p * n_heads * per + heads.view(-1, 1) * per + torch.arange(per).view(1, -1) for p in range(parts)]
    return torch.cat([i.flatten() for i in idx])


def _width_out(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.num_features
    return m.out_channels


def _width_in(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


class _GenericHeads:
    """Mixed into an attention module described by `head_spec` (see the module docstring)."""

    head_gate: torch.Tensor | None = None
    head_spec: dict = {}

    def _gate_hook(self, _mod, inputs):
        x = inputs[0]
        n = int(self.num_heads)
        g = self.head_gate.repeat_interleave(x.shape[-1 if x.dim() != 4 else 1] // n)
        g = g.view(1, -1, 1, 1) if x.dim() == 4 else g
        return (x * g, *inputs[1:])

    def forward(self, *args, **kwargs):
        spec = self.head_spec
        hooks = []
        if self.head_gate is not None:  # talking heads: a gated head neither feeds nor reads the mixed heads
            hooks.append(_layer(self, spec["cols"]).register_forward_pre_hook(self._gate_hook))
            hooks += [_layer(self, p).register_forward_pre_hook(self._mixer_hook) for p in spec.get("mixers", [])]
        try:
            if int(self.num_heads) != spec["built"] and spec.get("fix"):
                with ReshapeFix({int(f[0]): f[1:] for f in spec["fix"]}, heads=(spec["built"], int(self.num_heads))):
                    return super().forward(*args, **kwargs)
            return super().forward(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()

    def _mixer_hook(self, mod, inputs):
        x, g = inputs[0], self.head_gate
        g = g.view(1, -1, *([1] * (x.dim() - 2))) if isinstance(mod, nn.Conv2d) else g
        return (x * g, *inputs[1:])

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        spec, n = self.head_spec, int(self.num_heads)
        rows = {}
        for i, (path, layout, parts) in enumerate(spec["rows"]):
            layer = _layer(self, path)
            rows[i] = head_channels(heads, n, _width_out(layer), layout, parts)
            _keep_rows(layer, rows[i])
        for path, i in [*spec.get("norms", []), *spec.get("per_channel", [])]:
            for leaf in _layer(self, path).modules():  # a BatchNorm, a depthwise conv, or a chain of them
                if isinstance(leaf, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
                    _keep_rows(leaf, rows[int(i)])
        cols = _layer(self, spec["cols"])
        _keep_cols(cols, head_channels(heads, n, _width_in(cols), "head"))
        for path in spec.get("head_out", []):
            _keep_rows(_layer(self, path), heads)
        for path in spec.get("mixers", []):
            m = _layer(self, path)
            _keep_rows(m, heads)
            _keep_cols(m, heads)
        with torch.no_grad():
            for name, dim in spec.get("tables", []):
                owner_path, _, attr = name.rpartition(".")
                owner = _layer(self, owner_path)
                t = getattr(owner, attr)
                new = t.index_select(int(dim), heads).clone()
                if isinstance(t, nn.Parameter):
                    setattr(owner, attr, nn.Parameter(new, requires_grad=t.requires_grad))
                else:
                    owner._buffers[attr] = new
        for name, per in spec.get("attrs", {}).items():
            setattr(self, name, int(per) * len(heads))
        for m in self.modules():  # cached per-head tensors (LeViT-style bias caches) are rebuilt on next use
            for k, v in list(vars(m).items()):
                if "cache" in k and isinstance(v, dict):
                    v.clear()
        self.num_heads = len(heads)

    def unit_weight_l1(self) -> torch.Tensor:
        spec, n = self.head_spec, int(self.num_heads)
        total = torch.zeros(n)
        all_heads = torch.arange(n)
        for path, layout, parts in spec["rows"]:
            w = _layer(self, path).weight.detach().abs().flatten(1).sum(1)
            total += (
                w[head_channels(all_heads, n, len(w), layout, parts)].view(parts, n, -1).sum((0, 2))
                if (layout == "split")
                else w[head_channels(all_heads, n, len(w), "head")].view(n, -1).sum(1)
            )
        c = _layer(self, spec["cols"]).weight.detach().abs().transpose(0, 1).flatten(1).sum(1)
        return total + c.view(n, -1).sum(1)


_SUBCLASSES: dict[type, type] = {}


def make_generic_heads(module: nn.Module, spec: dict) -> None:
    """Give `module` the head protocol for `spec` (in place); raises ValueError when the spec does not fit it."""
    from edgeconv.common.errors import EdgeconvError

    try:
        if not isinstance(spec.get("built"), int) or not isinstance(getattr(module, "num_heads", None), int):
            raise ValueError("no integer num_heads")
        for path, layout, parts in spec["rows"]:
            if layout not in ("split", "head") or not isinstance(parts, int) or parts < 1:
                raise ValueError(f"bad layout {layout!r}")
            _layer(module, path)
        _layer(module, spec["cols"])
        for path, _ in [*spec.get("norms", []), *spec.get("per_channel", [])]:
            _layer(module, path)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise EdgeconvError(f"recorded head structure does not fit {type(module).__name__} ({e})") from None
    if not isinstance(module, _GenericHeads):
        cls = type(module)
        if cls not in _SUBCLASSES:
            _SUBCLASSES[cls] = type(f"Prunable{cls.__name__}", (_GenericHeads, cls), {})
        module.__class__ = _SUBCLASSES[cls]
    module.head_spec = spec


def unmake_generic_heads(module: nn.Module) -> None:
    """Give a module its own class back (a candidate description that did not pass its check)."""
    if isinstance(module, _GenericHeads):
        module.__class__ = next(b for b in type(module).__mro__[1:] if b is not _GenericHeads)
        for attr in ("head_spec", "head_gate"):
            module.__dict__.pop(attr, None)


def is_generic(module: nn.Module) -> bool:
    return isinstance(module, _GenericHeads)
