"""`acmix`: ACMix-style block: shared 1x1 q/k/v projections feed a windowed self-attention path and a
convolution path; the two are mixed by learned scalars (alpha, beta).

The convolution path reuses the same q/k/v features: per head, a grouped 1x1 "fully connected" layer turns the
3 * head_dim projected channels into head_dim channels, then a depthwise k x k convolution aggregates the
neighbourhood (the shift-and-sum of the paper written as a depthwise conv). Heads are the structural unit: removing
head h removes its q/k/v channels, its group in the fc layer, its depthwise channels and its columns of `proj`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgeconv.models.layers import (
    HybridNet,
    InvertedResidual,
    Mlp,
    _keep_cols,
    _keep_rows,
    head_channel_index,
    make_stem,
    residual_mlp_on_map,
    stem_grid,
    window_merge,
    window_partition,
)
from edgeconv.models.registry import register_family


class ACMixBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, window: int = 4, kernel: int = 3):
        super().__init__()
        self.num_heads, self.head_dim, self.window = num_heads, dim // num_heads, window
        inner = num_heads * self.head_dim
        self.norm1 = nn.BatchNorm2d(dim)
        self.qkv = nn.Conv2d(dim, 3 * inner, 1)  # shared projections
        self.fc = nn.Conv2d(3 * inner, inner, 1, groups=num_heads)  # conv path: per-head fc over q|k|v
        self.dw = nn.Conv2d(inner, inner, kernel, padding=kernel // 2, groups=inner)
        self.proj = nn.Conv2d(inner, dim, 1)
        self.alpha = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.ones(1))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.head_gate: torch.Tensor | None = None
        self.record_attn = False
        self.last_attn: torch.Tensor | None = None

    def gate_stats(self) -> dict:
        return {"alpha(attn)": float(self.alpha), "beta(conv)": float(self.beta)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        nh, hd, ws = self.num_heads, self.head_dim, self.window
        qkv = self.qkv(self.norm1(x))  # [B, 3*inner, H, W]
        # attention path: windowed MHSA per head
        t = window_partition(qkv, ws)  # [B*nW, ws*ws, 3*inner]
        n = t.shape[1]
        t = t.reshape(-1, n, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = t[0], t[1], t[2]
        attn = ((q @ k.transpose(-2, -1)) * hd**-0.5).softmax(dim=-1)
        if self.record_attn:
            self.last_attn = attn.detach()
        att = (attn @ v).transpose(1, 2).reshape(-1, n, nh * hd)
        att = window_merge(att, ws, B, H, W)
        # conv path: regroup q|k|v head-major so each head's fc group sees its own 3*hd channels
        g = qkv.reshape(B, 3, nh, hd, H, W).transpose(1, 2).reshape(B, 3 * nh * hd, H, W)
        conv = self.dw(self.fc(g))
        y = self.alpha * att + self.beta * conv
        if self.head_gate is not None:
            y = (y.reshape(B, nh, hd, H, W) * self.head_gate.view(1, -1, 1, 1, 1)).reshape(B, nh * hd, H, W)
        x = x + self.proj(y)
        return residual_mlp_on_map(x, self.norm2, self.mlp)

    def keep_heads(self, heads: torch.Tensor) -> None:
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        hd, inner = self.head_dim, self.num_heads * self.head_dim
        ch = head_channel_index(heads, hd)
        _keep_rows(self.qkv, torch.cat([ch, ch + inner, ch + 2 * inner]))
        with torch.no_grad():  # grouped fc: output rows of the kept heads (its inputs follow the group count)
            self.fc.weight = nn.Parameter(self.fc.weight[ch].clone())
            self.fc.bias = nn.Parameter(self.fc.bias[ch].clone())
            self.fc.out_channels, self.fc.in_channels, self.fc.groups = len(ch), 3 * len(ch), len(heads)
        _keep_rows(self.dw, ch)
        _keep_cols(self.proj, ch)
        self.num_heads = len(heads)


VARIANTS = {
    "tiny": {"dim": 48, "depth": 2, "heads": 4, "mlp_ratio": 2.0, "window": 4},
    "small": {"dim": 96, "depth": 4, "heads": 6, "mlp_ratio": 3.0, "window": 4},
}


@register_family(
    "acmix", variants=VARIANTS, description="shared q/k/v feed windowed attention and a conv path, mixed by learned weights"
)
def build(cfg: dict) -> nn.Module:
    d, grid = cfg["dim"], stem_grid(cfg["img_size"])
    ws = cfg["window"] if grid % cfg["window"] == 0 else grid
    stem = nn.Sequential(make_stem(cfg["in_chans"], d, cfg["img_size"]), InvertedResidual(d, d, 2 * d))
    blocks = nn.Sequential(*[ACMixBlock(d, cfg["heads"], int(d * cfg["mlp_ratio"]), ws) for _ in range(cfg["depth"])])
    return HybridNet(cfg, stem, blocks, d)
