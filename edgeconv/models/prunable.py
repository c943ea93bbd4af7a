"""Users' attention and MLP modules made prunable: timm's `Attention` and `Mlp`, LeViT's attention (and its
downsampling attention), EfficientViT's cascaded group attention, MobileViTv2's separable attention (channels: it
has no heads), `nn.MultiheadAttention`, and
hidden channels between two plain layers that a dependency graph found (`make_graph_unit`).

`adapt(model)` gives every module it knows the head (or hidden-channel) protocol of `models/structure.py` in place:
the instance's class becomes a subclass of its own class that adds `head_gate` / `keep_heads(idx)` (or
`hidden_gate` / `keep_hidden(idx)`) and a forward that is the original arithmetic with the gate applied. Parameter
names and shapes are unchanged, so a state dict loads as before, and `keep_heads` updates `num_heads` (and timm's
`attn_dim`, `nn.MultiheadAttention`'s `head_dim` bookkeeping) together with the weights - the fix-up Torch-Pruning
leaves to its users. Each unit stays internal to its module: the residual width (`embed_dim`, the block's output)
is never changed. A module that looks like attention but is not known is named by `structure.unknown_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeconv.models.layers import _keep_cols, _keep_rows, head_channel_index


def _keep_norm(norm: nn.Module, idx: torch.Tensor) -> None:
    """A LayerNorm over the pruned width keeps the same channels (Identity: nothing to do)."""
    if isinstance(norm, nn.LayerNorm):
        with torch.no_grad():
            if norm.weight is not None:
                norm.weight = nn.Parameter(norm.weight[idx].clone())
            if norm.bias is not None:
                norm.bias = nn.Parameter(norm.bias[idx].clone())
        norm.normalized_shape = (len(idx),)


# ----------------------------------------------------------------------------------------------- timm Attention
class _TimmAttention:
    """Mixed into timm.layers.Attention: per-head gate and head removal (q_norm/k_norm act per head: unchanged)."""

    head_gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal
        )
        if self.head_gate is not None:
            x = x * self.head_gate.view(1, -1, 1, 1)
        x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        ch = head_channel_index(heads, self.head_dim)
        inner = self.num_heads * self.head_dim
        _keep_rows(self.qkv, torch.cat([ch, ch + inner, ch + 2 * inner]))
        if self.gate is not None:
            _keep_rows(self.gate, ch)
        _keep_norm(self.norm, ch)
        _keep_cols(self.proj, ch)
        self.num_heads = len(heads)
        self.attn_dim = self.num_heads * self.head_dim


class _TimmMlp:
    """Mixed into timm.layers.Mlp: per-channel gate and hidden-channel removal."""

    hidden_gate: torch.Tensor | None = None

    @property
    def hidden(self) -> int:
        return self.fc1.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop1(self.act(self.fc1(x)))
        if self.hidden_gate is not None:
            h = h * self.hidden_gate
        return self.drop2(self.fc2(self.norm(h)))

    def keep_hidden(self, idx: torch.Tensor) -> None:
        idx = torch.as_tensor(idx, dtype=torch.long).sort().values
        _keep_rows(self.fc1, idx)
        _keep_norm(self.norm, idx)
        _keep_cols(self.fc2, idx)


# ----------------------------------------------------------------------------------------------- nn.MultiheadAttention
class _TorchMHA:
    """Mixed into nn.MultiheadAttention (packed q/k/v, no bias_k/bias_v, no add_zero_attn): heads removable while
    `embed_dim` (the output width) stays; forward is torch's arithmetic written out so the inner width can shrink."""

    head_gate: torch.Tensor | None = None

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        L, B, _ = query.shape
        S = key.shape[0]
        h, hd = self.num_heads, self.head_dim
        inner = h * hd
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:inner], b[inner : 2 * inner], b[2 * inner :])
        q = F.linear(query, w[:inner], bq).reshape(L, B * h, hd).transpose(0, 1)
        k = F.linear(key, w[inner : 2 * inner], bk).reshape(S, B * h, hd).transpose(0, 1)
        v = F.linear(value, w[2 * inner :], bv).reshape(S, B * h, hd).transpose(0, 1)
        logits = (q @ k.transpose(1, 2)) / math.sqrt(hd)  # [B*h, L, S]
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            m = attn_mask if attn_mask.dim() == 3 else attn_mask.unsqueeze(0)
            logits = logits.masked_fill(m, float("-inf")) if m.dtype == torch.bool else logits + m
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(B, 1, 1, S).expand(B, h, 1, S).reshape(B * h, 1, S)
            logits = logits.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else logits + kpm
        attn = F.dropout(logits.softmax(dim=-1), p=self.dropout if self.training else 0.0)
        out = attn @ v  # [B*h, L, hd]
        if self.head_gate is not None:
            out = (out.reshape(B, h, L, hd) * self.head_gate.view(1, -1, 1, 1)).reshape(B * h, L, hd)
        out = self.out_proj(out.transpose(0, 1).reshape(L, B, inner))
        if self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = attn.reshape(B, h, L, S)
        return out, (weights.mean(dim=1) if average_attn_weights else weights)

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        ch = head_channel_index(heads, self.head_dim)
        inner = self.num_heads * self.head_dim
        rows = torch.cat([ch, ch + inner, ch + 2 * inner])
        with torch.no_grad():
            self.in_proj_weight = nn.Parameter(self.in_proj_weight[rows].clone())
            if self.in_proj_bias is not None:
                self.in_proj_bias = nn.Parameter(self.in_proj_bias[rows].clone())
        _keep_cols(self.out_proj, ch)
        self.num_heads = len(heads)

    def unit_weight_l1(self) -> torch.Tensor:
        h = self.num_heads
        rows = self.in_proj_weight.detach().abs().sum(1).view(3, h, -1).sum((0, 2))
        return rows + self.out_proj.weight.detach().abs().sum(0).view(h, -1).sum(1)


# ----------------------------------------------------------------------------------------------- timm LeViT
def _keep_linear_norm_rows(ln: nn.Module, idx: torch.Tensor) -> None:
    """LeViT's LinearNorm / ConvNorm (a bias-free layer then a BatchNorm over its outputs): keep outputs `idx`."""
    _keep_rows(ln.linear, idx)
    _keep_rows(ln.bn, idx)


def _per_head(heads: torch.Tensor, block: int, offset: int = 0, stride: int | None = None) -> torch.Tensor:
    """Channels [h * stride + offset, h * stride + offset + block) for every head h (stride defaults to block)."""
    stride = block if stride is None else stride
    return (heads.view(-1, 1) * stride + offset + torch.arange(block).view(1, -1)).flatten()


def _keep_bias_rows(m: nn.Module, heads: torch.Tensor) -> None:
    """The per-head rows of a LeViT / EfficientViT attention-bias table (its cache dropped) and the head count."""
    with torch.no_grad():
        m.attention_biases = nn.Parameter(m.attention_biases[heads].clone())
    m.attention_bias_cache = {}
    m.num_heads = len(heads)


class _LevitAttention:
    """Mixed into timm.models.levit.Attention: qkv is one LinearNorm laid out per head as [q | k | v]; the attention
    bias table has one row per head; proj's LinearNorm reads val_dim channels per head."""

    head_gate: torch.Tensor | None = None

    def forward(self, x):
        gate = None if self.head_gate is None else self.head_gate.view(1, -1, 1, 1)
        if self.use_conv:
            B, C, H, W = x.shape
            q, k, v = self.qkv(x).view(B, self.num_heads, -1, H * W).split([self.key_dim, self.key_dim, self.val_dim], 2)
            attn = ((q.transpose(-2, -1) @ k) * self.scale + self.get_attention_biases(x.device)).softmax(dim=-1)
            out = v @ attn.transpose(-2, -1)
            x = (out if gate is None else out * gate).reshape(B, -1, H, W)
        else:
            B, N, C = x.shape
            q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], 3)
            q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
            attn = (q @ k * self.scale + self.get_attention_biases(x.device)).softmax(dim=-1)
            out = attn @ v
            x = (out if gate is None else out * gate).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        return self.proj(x)

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        _keep_linear_norm_rows(self.qkv, _per_head(heads, 2 * self.key_dim + self.val_dim))
        _keep_cols(self.proj.ln.linear, _per_head(heads, self.val_dim))
        _keep_bias_rows(self, heads)
        self.key_attn_dim = self.key_dim * self.num_heads
        self.val_attn_dim = self.val_dim * self.num_heads


class _LevitAttentionDownsample:
    """Mixed into timm.models.levit.AttentionDownsample: kv laid out per head as [k | v], q per head; the output
    width (the next stage's) is unchanged."""

    head_gate: torch.Tensor | None = None

    def forward(self, x):
        gate = None if self.head_gate is None else self.head_gate.view(1, -1, 1, 1)
        if self.use_conv:
            B, C, H, W = x.shape
            HH, WW = (H - 1) // self.stride + 1, (W - 1) // self.stride + 1
            k, v = self.kv(x).view(B, self.num_heads, -1, H * W).split([self.key_dim, self.val_dim], dim=2)
            q = self.q(x).view(B, self.num_heads, self.key_dim, -1)
            attn = ((q.transpose(-2, -1) @ k) * self.scale + self.get_attention_biases(x.device)).softmax(dim=-1)
            out = v @ attn.transpose(-2, -1)
            x = (out if gate is None else out * gate).reshape(B, self.val_attn_dim, HH, WW)
        else:
            B, N, C = x.shape
            k, v = self.kv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
            k, v = k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
            q = self.q(x).view(B, -1, self.num_heads, self.key_dim).permute(0, 2, 1, 3)
            attn = (q @ k * self.scale + self.get_attention_biases(x.device)).softmax(dim=-1)
            out = attn @ v
            x = (out if gate is None else out * gate).transpose(1, 2).reshape(B, -1, self.val_attn_dim)
        return self.proj(x)

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        _keep_linear_norm_rows(self.kv, _per_head(heads, self.key_dim + self.val_dim))
        _keep_linear_norm_rows(self.q.ln, _per_head(heads, self.key_dim))
        _keep_cols(self.proj.ln.linear, _per_head(heads, self.val_dim))
        _keep_bias_rows(self, heads)
        self.key_attn_dim = self.key_dim * self.num_heads
        self.val_attn_dim = self.val_dim * self.num_heads


# ----------------------------------------------------------------------------------------------- timm EfficientViT
class _CascadedGroupAttention:
    """Mixed into timm.models.efficientvit_msra.CascadedGroupAttention. Head h reads its own slice of the input
    (chunk h) plus the output of head h-1 (the cascade), has its own qkv and depthwise q conv, and one row of the
    attention-bias table; proj reads val_dim channels per head. A removed head's link in the cascade is gone, which
    is what its gate at zero gives: `head_ids` keeps each remaining head's original index (its input slice and its
    cascade partner), and the structure records it."""

    head_gate: torch.Tensor | None = None

    @property
    def head_ids(self) -> list[int]:
        return self.__dict__.get("_head_ids") or list(range(self.num_heads))

    def forward(self, x):
        B, C, H, W = x.shape
        ids = self.head_ids
        width = C // self.__dict__.get("_heads_built", self.num_heads)
        attn_bias = self.get_attention_biases(x.device)
        outs, prev, prev_id = [], None, None
        for t, (qkv, dws) in enumerate(zip(self.qkvs, self.dws)):
            h = ids[t]
            feat = x[:, h * width : (h + 1) * width]
            if prev is not None and prev_id == h - 1:
                feat = feat + prev
            q, k, v = qkv(feat).view(B, -1, H, W).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q, k, v = dws(q).flatten(2) * self.scale, k.flatten(2), v.flatten(2)
            attn = (q.transpose(-2, -1) @ k + attn_bias[t]).softmax(dim=-1)
            out = (v @ attn.transpose(-2, -1)).view(B, self.val_dim, H, W)
            if self.head_gate is not None:
                out = out * self.head_gate[t]
            outs.append(out)
            prev, prev_id = out, h
        return self.proj(torch.cat(outs, 1))

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        ids = self.head_ids
        self.__dict__.setdefault("_heads_built", self.num_heads)
        self.qkvs = nn.ModuleList([self.qkvs[int(t)] for t in heads])
        self.dws = nn.ModuleList([self.dws[int(t)] for t in heads])
        _keep_cols(self.proj[1].conv, _per_head(heads, self.val_dim))
        _keep_bias_rows(self, heads)
        self.__dict__["_head_ids"] = [ids[int(t)] for t in heads]


# ----------------------------------------------------------------------------------------------- timm MobileViTv2
class _LinearSelfAttention:
    """Mixed into timm.models.mobilevit.LinearSelfAttention (separable attention: one context score per token, no
    heads). Channel c of its key and value meet only each other (context_vector[c] * relu(value[c])) before out_proj,
    so (key c, value c, out_proj column c) is a hidden-channel unit; the scores row and the input width stay."""

    hidden_gate: torch.Tensor | None = None

    @property
    def hidden(self) -> int:
        return int(self.embed_dim)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor | None = None) -> torch.Tensor:
        if x_prev is not None:
            raise NotImplementedError("edgeconv's pruned LinearSelfAttention supports self-attention only")
        query, key, value = self.qkv_proj(x).split([1, self.embed_dim, self.embed_dim], dim=1)
        scores = self.attn_drop(F.softmax(query, dim=-1))
        context = (key * scores).sum(dim=-1, keepdim=True)
        out = F.relu(value) * context.expand_as(value)
        if self.hidden_gate is not None:
            out = out * self.hidden_gate.view(1, -1, 1, 1)
        return self.out_drop(self.out_proj(out))

    def keep_hidden(self, idx: torch.Tensor) -> None:
        idx = torch.as_tensor(idx, dtype=torch.long).sort().values
        e = self.embed_dim
        _keep_rows(self.qkv_proj, torch.cat([torch.zeros(1, dtype=torch.long), 1 + idx, 1 + e + idx]))
        _keep_cols(self.out_proj, idx)
        self.embed_dim = len(idx)

    def unit_weight_l1(self) -> torch.Tensor:
        w = self.qkv_proj.weight.detach().abs().flatten(1).sum(1)
        e = self.embed_dim
        return w[1 : 1 + e] + w[1 + e :] + self.out_proj.weight.detach().abs().transpose(0, 1).flatten(1).sum(1)


# ----------------------------------------------------------------------------------------------- graph channel units
GRAPH_ROLES = ("out", "norm", "dw")  # producer rows, a norm over the channels, a depthwise conv between


def _keep_member(m: nn.Module, idx: torch.Tensor) -> None:
    """A member of a graph unit keeps channels `idx`: a LayerNorm its affine entries, anything else its rows (a
    depthwise conv keeps its groups equal to its channels)."""
    if isinstance(m, nn.LayerNorm):
        _keep_norm(m, idx)
    else:
        _keep_rows(m, idx)


class _GraphChannels:
    """Mixed into the consuming layer (nn.Linear, or nn.Conv2d with groups 1) of a hidden-channel unit: the channels
    its input shares with the producing layer (and the norms and depthwise convs between them). The gate multiplies
    the consumer's input, which is what removing those channels leaves; `keep_hidden` slices every member."""

    hidden_gate: torch.Tensor | None = None
    graph_members: list = []  # [(path, role)] as recorded
    _graph_modules: list = []  # [(module, role)]

    @property
    def hidden(self) -> int:
        return self.in_features if isinstance(self, nn.Linear) else self.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hidden_gate is not None:
            g = self.hidden_gate
            x = x * (g.view(1, -1, *([1] * (x.dim() - 2))) if isinstance(self, nn.Conv2d) else g)
        return super().forward(x)

    def keep_hidden(self, idx: torch.Tensor) -> None:
        idx = torch.as_tensor(idx, dtype=torch.long).sort().values
        for m, _role in self._graph_modules:
            _keep_member(m, idx)
        _keep_cols(self, idx)

    def unit_weight_l1(self) -> torch.Tensor:
        rows = [m.weight.detach().abs().reshape(m.weight.shape[0], -1).sum(1) for m, r in self._graph_modules if r != "norm"]
        cols = self.weight.detach().abs().transpose(0, 1).reshape(self.hidden, -1).sum(1)
        return cols + sum(rows)


def make_graph_unit(model: nn.Module, consumer: str, members: list) -> None:
    """Make `consumer` (a path in `model`) the holder of a hidden-channel unit with `members` [(path, role)]."""
    from edgeconv.common.errors import EdgeconvError

    mods = dict(model.named_modules())
    c = mods.get(consumer)
    ok = isinstance(c, nn.Linear) or (isinstance(c, nn.Conv2d) and c.groups == 1)
    if not ok or not members:
        raise EdgeconvError(f"recorded channel unit {consumer!r} is not a Linear/Conv2d of this model")
    resolved = []
    for path, role in members:
        m = mods.get(path)
        fits = {
            "out": isinstance(m, (nn.Linear, nn.Conv2d)),
            "norm": isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)),
            "dw": isinstance(m, nn.Conv2d) and m.groups > 1,
        }
        if m is None or not fits.get(role, False):
            raise EdgeconvError(f"recorded channel unit {consumer!r} names {path!r} ({role}), not such a layer here")
        resolved.append((m, role))
    if not isinstance(c, _GraphChannels):
        key = (type(c), _GraphChannels)
        if key not in _SUBCLASSES:
            _SUBCLASSES[key] = type(f"Prunable{type(c).__name__}", (_GraphChannels, type(c)), {})
        c.__class__ = _SUBCLASSES[key]
    c.graph_members = [[str(p), str(r)] for p, r in members]
    c._graph_modules = resolved


def unmake_graph_unit(m: nn.Module) -> None:
    """Give a layer its own class back (a candidate unit that did not pass its check)."""
    if isinstance(m, _GraphChannels):
        m.__class__ = next(b for b in type(m).__mro__[1:] if b is not _GraphChannels and issubclass(b, nn.Module))
        for attr in ("graph_members", "_graph_modules", "hidden_gate"):
            m.__dict__.pop(attr, None)


def _timm_classes() -> dict[type, type]:
    try:
        from timm.layers import Attention, Mlp
        from timm.models import efficientvit_msra, levit, mobilevit
    except ImportError:
        return {}
    # attention without an entry here gets its heads from its own structure (models/generic_attention.py)
    return {
        mobilevit.LinearSelfAttention: _LinearSelfAttention,  # no heads: its unit is channels, not a head gate
        efficientvit_msra.CascadedGroupAttention: _CascadedGroupAttention,  # head h reads head h-1: not a gate at proj
        Attention: _TimmAttention,  # written before the generic path; not yet checked against it
        Mlp: _TimmMlp,  # an MLP, not attention
        levit.Attention: _LevitAttention,  # written before the generic path; not yet checked against it
        levit.AttentionDownsample: _LevitAttentionDownsample,  # written before the generic path; not yet checked
    }


def _mixin_for(m: nn.Module) -> type | None:
    if type(m) is nn.MultiheadAttention:  # projections in in_proj_weight, not children: the generic path cannot
        if m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn:
            return _TorchMHA
        return None
    return _timm_classes().get(type(m))


_SUBCLASSES: dict[tuple[type, type], type] = {}


def adapt(model: nn.Module) -> list[str]:
    """Make every known foreign attention/MLP module of `model` prunable in place; the paths adapted."""
    done = []
    for path, m in model.named_modules():
        mixin = _mixin_for(m)
        if mixin is None:
            continue
        key = (type(m), mixin)
        if key not in _SUBCLASSES:
            _SUBCLASSES[key] = type(f"Prunable{type(m).__name__}", (mixin, type(m)), {})
        m.__class__ = _SUBCLASSES[key]
        done.append(path)
    return done
