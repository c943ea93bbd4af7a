"""`resformer`: HybridBlock = ResNet bottleneck + transformer branch, joined by a learned per-channel gate.

y = x + g * bottleneck(x) + (1 - g) * attention(x), g = sigmoid(w) with one learned w per channel.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgeconv.models.layers import (
    Attention,
    ConvBNAct,
    HybridNet,
    InvertedResidual,
    Mlp,
    _keep_cols,
    _keep_rows,
    make_stem,
    residual_mlp_on_map,
    to_map,
    to_tokens,
)
from edgeconv.models.registry import register_family


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand; the 3x3 output channels are the prunable unit."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.reduce = ConvBNAct(dim, width, 1)
        self.conv = ConvBNAct(width, width, 3)
        self.expand = ConvBNAct(width, dim, 1, act=False)
        self.hidden_gate: torch.Tensor | None = None

    @property
    def hidden(self) -> int:
        return self.conv[0].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.reduce(x))
        if self.hidden_gate is not None:
            h = h * self.hidden_gate.view(1, -1, 1, 1)
        return self.expand(h)

    def keep_hidden(self, idx: torch.Tensor) -> None:
        idx = torch.as_tensor(idx, dtype=torch.long).sort().values
        _keep_rows(self.conv[0], idx)
        _keep_rows(self.conv[1], idx)
        _keep_cols(self.expand[0], idx)


class HybridBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, width: int):
        super().__init__()
        self.res = Bottleneck(dim, width)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.gate_logit = nn.Parameter(torch.zeros(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)

    def gate_stats(self) -> dict:
        return {"mean gate (conv share)": float(torch.sigmoid(self.gate_logit).mean())}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        g = torch.sigmoid(self.gate_logit).view(1, -1, 1, 1)
        a = to_map(self.attn(self.attn_norm(to_tokens(x))), H, W)
        x = x + g * self.res(x) + (1 - g) * a
        return residual_mlp_on_map(x, self.norm2, self.mlp)


VARIANTS = {
    "tiny": {"dim": 48, "depth": 2, "heads": 4, "mlp_ratio": 2.0, "width": 24},
    "small": {"dim": 96, "depth": 4, "heads": 6, "mlp_ratio": 3.0, "width": 48},
}


@register_family(
    "resformer", variants=VARIANTS, description="ResNet bottleneck + transformer branch joined by a learned gate"
)
def build(cfg: dict) -> nn.Module:
    d = cfg["dim"]
    stem = nn.Sequential(make_stem(cfg["in_chans"], d, cfg["img_size"]), InvertedResidual(d, d, 2 * d))
    blocks = nn.Sequential(
        *[HybridBlock(d, cfg["heads"], int(d * cfg["mlp_ratio"]), cfg["width"]) for _ in range(cfg["depth"])]
    )
    return HybridNet(cfg, stem, blocks, d)
