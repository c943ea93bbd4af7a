"""`saliency`: attention whose logits are gated by a per-token saliency score, with a dynamic temperature,
optional token sparsification and optional attention-map sharing across adjacent layers.

- saliency s_j = sigmoid(w . x_j) per token; logits_ij += log(s_j), so low-saliency keys are suppressed;
- temperature tau = 0.5 + softplus(w_t . mean(x)) per sample, learned and input-dependent: logits / tau;
- sparsification: after the layers listed in `keep`, only the top-k salient tokens go on (k = ratio * N);
- sharing: with `share_attn`, every second layer reuses the previous layer's attention map (its own values only),
  so the pair's heads are one structural unit for pruning.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeconv.models.layers import Attention, HybridNet, Mlp, ValueOnlyAttention, make_stem, stem_grid, to_tokens
from edgeconv.models.registry import register_family


class SaliencyAttention(Attention):
    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        self.saliency = nn.Linear(dim, 1)
        self.temperature = nn.Linear(dim, 1)
        self.last_saliency: torch.Tensor | None = None
        self.last_tau: torch.Tensor | None = None
        self._log_s: torch.Tensor | None = None
        self._tau: torch.Tensor | None = None

    def token_saliency(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token saliency in (0, 1), [B, N]."""
        return torch.sigmoid(self.saliency(x)).squeeze(-1)

    def forward(
        self, x: torch.Tensor, attn_override: torch.Tensor | None = None, saliency: torch.Tensor | None = None
    ) -> torch.Tensor:
        s = self.token_saliency(x) if saliency is None else saliency  # [B, N]
        self.last_saliency = s.detach()
        self._log_s = torch.log(s + 1e-6).unsqueeze(1).unsqueeze(1)  # [B, 1, 1, N]: gates keys
        self._tau = 0.5 + F.softplus(self.temperature(x.mean(dim=1))).view(-1, 1, 1, 1)
        self.last_tau = self._tau.detach().flatten()
        try:
            return super().forward(x, attn_override)
        finally:  # graph tensors must not outlive the forward (copy.deepcopy of a trained model would fail)
            self._log_s = self._tau = None

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q @ k.transpose(-2, -1)) * (self.head_dim**-0.5) / self._tau + self._log_s


class SaliencyLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, shared: bool, keep_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ValueOnlyAttention(dim, heads, dim // heads) if shared else SaliencyAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.keep_ratio = keep_ratio
        self.last_keep: torch.Tensor | None = None  # kept token indices [B, k] (for inspect)

    def forward(self, t: torch.Tensor, prev_attn: torch.Tensor | None, saliency: torch.Tensor | None):
        if isinstance(self.attn, ValueOnlyAttention):
            t = t + self.attn(self.norm1(t), prev_attn)
        else:
            # The same saliency gates the keys and ranks the tokens kept below (the attention input's, computed
            # once, so eager and exported graphs agree).
            h = self.norm1(t)
            saliency = self.attn.token_saliency(h)
            t = t + self.attn(h, saliency=saliency)
            saliency = saliency.detach()
        t = t + self.mlp(self.norm2(t))
        attn = self.attn.pop_attn_map() if isinstance(self.attn, SaliencyAttention) else prev_attn
        attn = prev_attn if attn is None else attn
        if self.keep_ratio < 1.0:
            k = max(1, math.ceil(self.keep_ratio * t.shape[1]))
            # Background patches often score exactly alike, and runtimes break top-k ties differently: a tiny
            # position-dependent offset makes every runtime keep the same tokens.
            rank = saliency - torch.arange(t.shape[1], dtype=saliency.dtype, device=saliency.device) * 1e-6
            # The k most salient tokens, in spatial order. Written with top-k indices, a gather and a comparison,
            # no sort: TFLite has no sort kernel (a sort, or a top-k whose indices go unused, becomes
            # STABLEHLO_SORT in litert-torch, which its interpreter cannot run). Ranks are distinct (offset
            # above), so `rank >= k-th value` selects exactly the top-k tokens, and a key that falls with the
            # position lists them first to last.
            kth = rank.gather(1, rank.topk(k, dim=1).indices[:, -1:])
            n = t.shape[1]
            key = (rank >= kth).to(rank.dtype) * (n - torch.arange(n, dtype=rank.dtype, device=rank.device))
            idx = key.topk(k, dim=1).indices
            self.last_keep = idx.detach()
            t = t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
            saliency, attn = saliency.gather(1, idx), None
        return t, attn, saliency


class SaliencyStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_hidden: int, grid: int, share: bool, keep: dict):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.layers = nn.ModuleList(
            [
                SaliencyLayer(dim, heads, mlp_hidden, shared=share and i % 2 == 1, keep_ratio=float(keep.get(str(i), 1.0)))
                for i in range(depth)
            ]
        )
        for i, layer in enumerate(self.layers):
            if isinstance(layer.attn, ValueOnlyAttention):
                layer.attn.couples_heads_with = f"blocks.layers.{i - 1}.attn"
                self.layers[i - 1].attn.share_map = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = to_tokens(x) + self.pos
        attn, sal = None, None
        for layer in self.layers:
            t, attn, sal = layer(t, attn, sal)
        return t


VARIANTS = {
    "tiny": {"dim": 48, "depth": 3, "heads": 4, "mlp_ratio": 2.0, "share_attn": False, "keep": {"1": 0.5}},
    "small": {"dim": 96, "depth": 4, "heads": 6, "mlp_ratio": 3.0, "share_attn": True, "keep": {"1": 0.5}},
}


@register_family(
    "saliency", variants=VARIANTS, description="saliency-gated attention, dynamic temperature, top-k tokens, shared maps"
)
def build(cfg: dict) -> nn.Module:
    d = cfg["dim"]
    stem = make_stem(cfg["in_chans"], d, cfg["img_size"])
    stage = SaliencyStage(
        d, cfg["depth"], cfg["heads"], int(d * cfg["mlp_ratio"]), stem_grid(cfg["img_size"]), cfg["share_attn"], cfg["keep"]
    )
    return HybridNet(cfg, stem, stage, d)
