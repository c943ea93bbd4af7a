"""`hvt`: serial hybrid (CoAtNet "C-C-T-T"): convolution stages at high resolution, then transformer stages on the
downsampled token grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgeconv.models.layers import ConvBNAct, HybridNet, InvertedResidual, TransformerBlock, to_map, to_tokens
from edgeconv.models.registry import register_family


class TransformerStage(nn.Module):
    """Transformer blocks on a feature map: map -> tokens (+ learned position bias) -> blocks -> map."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_hidden: int, grid: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_hidden) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        t = to_tokens(x) + self.pos
        for blk in self.blocks:
            t = blk(t)
        return to_map(t, H, W)


VARIANTS = {
    "tiny": {"dims": [32, 64], "conv_depth": 2, "depth": 2, "heads": 4, "mlp_ratio": 2.0},
    "small": {"dims": [48, 128], "conv_depth": 3, "depth": 3, "heads": 8, "mlp_ratio": 3.0},
}


@register_family("hvt", variants=VARIANTS, description="conv stages first, transformer stages after (C-C-T-T)")
def build(cfg: dict) -> nn.Module:
    c0, c1 = cfg["dims"]
    layers = [ConvBNAct(cfg["in_chans"], c0, 3, 2)]
    size = (cfg["img_size"] + 1) // 2  # a 3x3 stride-2 conv (padding 1) maps s to ceil(s / 2)
    while size > 32:  # conv stages run at <= 32x32, the transformer at half that
        layers.append(ConvBNAct(c0, c0, 3, 2))
        size = (size + 1) // 2
    stem = nn.Sequential(*layers)
    conv_stages = [InvertedResidual(c0, c0, 3 * c0) for _ in range(cfg["conv_depth"])]
    conv_stages.append(InvertedResidual(c0, c1, 3 * c0, stride=2))
    grid = (size + 1) // 2
    blocks = nn.Sequential(*conv_stages, TransformerStage(c1, cfg["depth"], cfg["heads"], int(c1 * cfg["mlp_ratio"]), grid))
    return HybridNet(cfg, stem, blocks, c1)
