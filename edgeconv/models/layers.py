"""Building blocks shared by the model families.

Structural units are explicit so compression can remove them and update the config in one place:
- `Attention`: heads are `num_heads` slices of width `head_dim` in `qkv` and `proj`; `head_gate` (None normally) is
  the per-head mask whose gradient measures head sensitivity; `keep_heads()` removes heads in place.
- `Mlp` / `ConvMlp`: hidden channels, `keep_hidden()` removes them.
- `InvertedResidual`: expanded channels (pw-expand -> depthwise -> pw-project), `keep_hidden()`.
Residual-stream widths are never pruned (they couple every block of a stage).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _keep_rows(layer: nn.Module, idx: torch.Tensor) -> None:
    """Keep output channels `idx` of a Linear/Conv2d/BatchNorm in place."""
    with torch.no_grad():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer.weight = nn.Parameter(layer.weight[idx].clone())
            if layer.bias is not None:
                layer.bias = nn.Parameter(layer.bias[idx].clone())
            if isinstance(layer, nn.Linear):
                layer.out_features = len(idx)
            else:
                layer.out_channels = len(idx)
                if layer.groups > 1:  # depthwise: one input channel per output channel
                    layer.groups = len(idx)
                    layer.in_channels = len(idx)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):  # 1d/2d, affine or not, with or without stats
            if layer.weight is not None:
                layer.weight = nn.Parameter(layer.weight[idx].clone())
                layer.bias = nn.Parameter(layer.bias[idx].clone())
            if layer.running_mean is not None:
                layer.running_mean = layer.running_mean[idx].clone()
                layer.running_var = layer.running_var[idx].clone()
            layer.num_features = len(idx)
        else:
            raise TypeError(f"cannot prune outputs of {type(layer).__name__}")


def _keep_cols(layer: nn.Module, idx: torch.Tensor) -> None:
    """Keep input channels `idx` of a Linear/Conv2d (groups == 1) in place."""
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight[:, idx].clone())
        if isinstance(layer, nn.Linear):
            layer.in_features = len(idx)
        else:
            layer.in_channels = len(idx)


def head_channel_index(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channel indices covered by the given head indices (head h owns [h*head_dim, (h+1)*head_dim))."""
    return (heads.view(-1, 1) * head_dim + torch.arange(head_dim).view(1, -1)).flatten()


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.GELU() if act else nn.Identity(),
        )


class Attention(nn.Module):
    """Multi-head self-attention over tokens [B, N, C] with prunable heads.

    `qkv` projects to 3 * num_heads * head_dim (q | k | v, each head-major); `proj` maps num_heads * head_dim back.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, qkv_bias: bool = True):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.head_gate: torch.Tensor | None = None  # set by the pruner to measure per-head sensitivity
        self.record_attn = False  # set by `inspect` to keep the last attention map
        self.last_attn: torch.Tensor | None = None
        # True only where the next layer reuses the map (saliency's shared pairs): a stored map holds the autograd
        # graph (copy.deepcopy of a trained model fails) and torch.cond branches must not store state
        self.share_map = False
        self._attn: torch.Tensor | None = None

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention logits [B, H, N, N]; families override this to gate or rescale logits."""
        return (q @ k.transpose(-2, -1)) * (self.head_dim**-0.5)

    def forward(self, x: torch.Tensor, attn_override: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = attn_override if attn_override is not None else self.scores(q, k).softmax(dim=-1)
        if self.record_attn:
            self.last_attn = attn.detach()
        out = attn @ v  # [B, H, N, hd]
        if self.head_gate is not None:
            out = out * self.head_gate.view(1, -1, 1, 1)
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        if self.share_map:
            self._attn = attn  # kept for attention-map sharing with the next layer, which takes it (pop_attn_map)
        return self.proj(out)

    def pop_attn_map(self) -> torch.Tensor | None:
        attn, self._attn = self._attn, None
        return attn

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        ch = head_channel_index(heads, self.head_dim)
        inner = self.num_heads * self.head_dim
        _keep_rows(self.qkv, torch.cat([ch, ch + inner, ch + 2 * inner]))
        _keep_cols(self.proj, ch)
        self.num_heads = len(heads)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    @property
    def hidden(self) -> int:
        return self.fc1.out_features

    hidden_gate: torch.Tensor | None = None  # per-channel mask; its gradient is the first-order Taylor score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if self.hidden_gate is not None:
            h = h * self.hidden_gate
        return self.fc2(h)

    def keep_hidden(self, idx: torch.Tensor) -> None:
        idx = torch.as_tensor(idx, dtype=torch.long).sort().values
        _keep_rows(self.fc1, idx)
        _keep_cols(self.fc2, idx)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on tokens."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, attn: Attention | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn or Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, attn_override: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_override)
        return x + self.mlp(self.norm2(x))


class InvertedResidual(nn.Module):
    """MobileNetV2-style block: 1x1 expand -> 3x3 depthwise -> 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int = 1):
        super().__init__()
        self.expand = ConvBNAct(cin, hidden, 1)
        self.dw = ConvBNAct(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBNAct(hidden, cout, 1, act=False)
        self.use_res = stride == 1 and cin == cout

    @property
    def hidden(self) -> int:
        return self.expand[0].out_channels

    hidden_gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        if self.hidden_gate is not None:
            h = h * self.hidden_gate.view(1, -1, 1, 1)
        y = self.project(h)
        return x + y if self.use_res else y

    def keep_hidden(self, idx: torch.Tensor) -> None:
        idx = torch.as_tensor(idx, dtype=torch.long).sort().values
        _keep_rows(self.expand[0], idx)
        _keep_rows(self.expand[1], idx)
        _keep_rows(self.dw[0], idx)
        _keep_rows(self.dw[1], idx)
        _keep_cols(self.project[0], idx)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def to_map(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


def residual_mlp_on_map(x: torch.Tensor, norm: nn.Module, mlp: nn.Module) -> torch.Tensor:
    """x + mlp(norm(x)) at every position of a feature map [B, C, H, W] (the blocks' feed-forward half)."""
    B, C, H, W = x.shape
    t = to_tokens(x)
    return to_map(t + mlp(norm(t)), H, W)


class ClassifierHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3)) if x.ndim == 4 else x.mean(dim=1)  # feature map or tokens
        return self.fc(self.norm(pooled))


class HybridNet(nn.Module):
    """Stem -> stages of blocks (feature maps [B, C, H, W] between blocks) -> pooled classifier.

    `cfg` is the JSON-able config the registry rebuilds the model from; `structure` in it records pruned widths.
    """

    def __init__(self, cfg: dict, stem: nn.Module, blocks: nn.Sequential, head_dim: int):
        super().__init__()
        self.cfg = cfg
        self.stem = stem
        self.blocks = blocks
        self.head = ClassifierHead(head_dim, cfg["num_classes"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def aux_loss(self) -> torch.Tensor | None:
        """Extra training loss collected from blocks (router balance/decisiveness); None when there is none.

        Collecting consumes it: the blocks drop their references, so no autograd graph outlives the step.
        """
        losses = []
        for m in self.modules():
            if getattr(m, "aux", None) is not None:
                losses.append(m.aux)
                m.aux = None
        return torch.stack(losses).sum() if losses else None


def _stem_convs(img_size: int, max_grid: int = 16) -> int:
    """How many stride-2 convs the stem uses: /4 at least, then halving until the grid is at most `max_grid`
    (16 by default: /4 up to 64 px inputs, /8 up to 128, /16 beyond)."""
    n, size = 2, img_size // 4
    while size > max_grid:
        n, size = n + 1, size // 2
    return n


def make_stem(in_chans: int, dim: int, img_size: int, max_grid: int = 16) -> nn.Sequential:
    """Downsample to a token grid that attention can afford (see `_stem_convs`)."""
    layers = [ConvBNAct(in_chans, dim // 2, 3, 2), ConvBNAct(dim // 2, dim, 3, 2)]
    layers += [ConvBNAct(dim, dim, 3, 2) for _ in range(_stem_convs(img_size, max_grid) - 2)]
    return nn.Sequential(*layers)


def stem_grid(img_size: int, max_grid: int = 16) -> int:
    """The stem's output grid: each 3x3 stride-2 conv (padding 1) maps s to ceil(s / 2)."""
    size = img_size
    for _ in range(_stem_convs(img_size, max_grid)):
        size = (size + 1) // 2
    return size


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, C, H, W] -> [B * nW, ws*ws, C] (H and W must be multiples of ws)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // ws, ws, W // ws, ws).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, ws * ws, C)


def window_merge(t: torch.Tensor, ws: int, B: int, H: int, W: int) -> torch.Tensor:
    C = t.shape[-1]
    x = t.reshape(B, H // ws, W // ws, ws, ws, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, H, W)


class ValueOnlyAttention(nn.Module):
    """Attention that reuses another layer's attention map: only values and the output projection are its own."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.v = nn.Linear(dim, num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)
        self.head_gate: torch.Tensor | None = None
        self.record_attn = False
        self.last_attn: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        if self.record_attn:
            self.last_attn = attn.detach()
        out = attn @ v
        if self.head_gate is not None:
            out = out * self.head_gate.view(1, -1, 1, 1)
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        ch = head_channel_index(heads, self.head_dim)
        _keep_rows(self.v, ch)
        _keep_cols(self.proj, ch)
        self.num_heads = len(heads)
