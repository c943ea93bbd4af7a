"""`can`: parallel convolution and self-attention branches fused by an SE-style dynamic gate.

g = sigmoid(W2 relu(W1 pool(conv + attn))) is a channel-wise weight per sample; y = g * conv + (1 - g) * attn.
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
    make_stem,
    residual_mlp_on_map,
    to_map,
    to_tokens,
)
from edgeconv.models.registry import register_family


class SEGate(nn.Module):
    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(dim, max(8, dim // reduction))
        self.fc2 = nn.Linear(max(8, dim // reduction), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))).unsqueeze(-1).unsqueeze(-1)


class CANBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.conv = nn.Sequential(ConvBNAct(dim, dim, 3, groups=dim), ConvBNAct(dim, dim, 1, act=False))
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.gate = SEGate(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.last_gate: torch.Tensor | None = None

    def gate_stats(self) -> dict:
        return {} if self.last_gate is None else {"mean gate (conv share)": float(self.last_gate.mean())}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        c = self.conv(x)
        a = to_map(self.attn(self.attn_norm(to_tokens(x))), H, W)
        g = self.gate(c + a)
        self.last_gate = g.detach()
        x = x + g * c + (1 - g) * a
        return residual_mlp_on_map(x, self.norm2, self.mlp)


VARIANTS = {
    "tiny": {"dim": 48, "depth": 2, "heads": 4, "mlp_ratio": 2.0},
    "small": {"dim": 96, "depth": 4, "heads": 6, "mlp_ratio": 3.0},
}


@register_family("can", variants=VARIANTS, description="parallel conv + attention fused by an SE dynamic gate")
def build(cfg: dict) -> nn.Module:
    d = cfg["dim"]
    stem = nn.Sequential(make_stem(cfg["in_chans"], d, cfg["img_size"]), InvertedResidual(d, d, 2 * d))
    blocks = nn.Sequential(*[CANBlock(d, cfg["heads"], int(d * cfg["mlp_ratio"])) for _ in range(cfg["depth"])])
    return HybridNet(cfg, stem, blocks, d)
