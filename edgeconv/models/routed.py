"""`routed`: unified conv/attention blocks whose router picks a depthwise-conv path or a self-attention path.

Both paths start from one shared 1x1 projection (the shared kernel). The router is global pool ->
Linear(d, 128) -> ReLU -> Linear(128, 2) -> softmax, giving p = (p_conv, p_attn) per sample.

- Training (`soft`): y = p_conv * conv(x) + p_attn * attn(x); an auxiliary loss makes each decision confident
  (low entropy) while keeping both paths in use over a batch (balance), so the hard decision matches the soft mix.
- Inference (`gated`, the default): per sample, attention when p_attn > 0.5, else conv; the chosen path is scaled by
  its probability. Under export this is written with `torch.cond`, so ONNX gets `If` nodes: when the whole batch
  agrees (always at batch 1) only the chosen path runs; a batch whose samples disagree computes both paths and
  selects per sample. PyTorch and ONNX therefore give every sample the same answer at any batch size.
- `select`: the same answers as `gated` without `torch.cond`: both paths computed, each sample keeps its own (for
  converters without control flow, e.g. TFLite; saves no compute).
- `static:conv` / `static:attn`: one path, no router (for comparisons and backends without control flow).

One vocabulary: these names are what export, eval, inspect, quantize and every record use (`hard`, the old name of
`gated`, is still accepted on input).
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

ROUTING_MODES = ("gated", "soft", "select", "static:conv", "static:attn")
ROUTING_ALIASES = {"hard": "gated"}
ROUTED_MODES = ("gated", "soft", "select")  # modes in which the router runs and records its decisions


def routing_mode(name: str) -> str:
    """The canonical name of a routing mode, or a ValueError naming the choices."""
    mode = ROUTING_ALIASES.get(name, name)
    if mode not in ROUTING_MODES:
        raise ValueError(f"routing mode {name!r} not in {ROUTING_MODES}")
    return mode


def _is_exporting() -> bool:
    try:
        return bool(torch.compiler.is_exporting())
    except AttributeError:  # older torch
        return False


class Router(nn.Module):
    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.mean(dim=(2, 3))))).softmax(dim=-1)


class RoutedBlock(nn.Module):
    route_names = ("conv", "attn")

    def __init__(self, dim: int, heads: int, mlp_hidden: int, threshold: float = 0.5, router_hidden: int = 128):
        super().__init__()
        self.shared = ConvBNAct(dim, dim, 1)  # shared projection kernel for both paths
        self.conv_path = nn.Sequential(ConvBNAct(dim, dim, 3, groups=dim), ConvBNAct(dim, dim, 1, act=False))
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.attn.share_map = False  # the attention path runs inside torch.cond under export: no stored state
        self.router = Router(dim, router_hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.threshold = threshold
        self.mode = "gated"
        self.aux: torch.Tensor | None = None
        self.last_route: torch.Tensor | None = None  # bool [B]: True = attention, for eval/bench reports
        self.last_p_attn: torch.Tensor | None = None

    def set_routing_mode(self, mode: str) -> None:
        self.mode = routing_mode(mode)

    def conv_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_path(self.shared(x))

    def attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shared(x)
        H, W = s.shape[2], s.shape[3]
        # contiguous: torch.cond needs both branches to return the same memory layout
        return to_map(self.attn(self.attn_norm(to_tokens(s))), H, W).contiguous()

    # The three ways a hard-routed batch can go; each takes (x, p_attn) so torch.cond can hold them.
    def _attn_only(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.attn_branch(x) * p.view(-1, 1, 1, 1)

    def _conv_only(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.conv_branch(x) * (1 - p).view(-1, 1, 1, 1)

    def _per_sample(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        use_attn = (p > self.threshold).view(-1, 1, 1, 1)
        return torch.where(use_attn, self._attn_only(x, p), self._conv_only(x, p))

    def _not_all_conv(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return torch.cond(p.min() > self.threshold, self._attn_only, self._per_sample, (x, p))

    def gated(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if _is_exporting():
            # The cheap conv path is tested first: a batch routed to conv pays one `If` dispatch, the attention
            # path (far costlier itself) a second one.
            # max/min instead of (p <= t).all(): the same test in two ONNX nodes instead of four.
            return torch.cond(p.max() <= self.threshold, self._conv_only, self._not_all_conv, (x, p))
        use_attn = p > self.threshold
        if not bool(use_attn.any()):
            return self._conv_only(x, p)
        if bool(use_attn.all()):
            return self._attn_only(x, p)
        return self._per_sample(x, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.aux = None
        mode = "soft" if self.training and not self.mode.startswith("static") else self.mode
        if mode == "static:conv":
            y = self.conv_branch(x)
        elif mode == "static:attn":
            y = self.attn_branch(x)
        else:
            probs = self.router(x)
            p = probs[:, 1]
            if not _is_exporting():
                self.last_p_attn = p.detach()
                self.last_route = (p > self.threshold).detach()
            if mode == "soft":
                y = self._conv_only(x, p) + self._attn_only(x, p)
                if self.training:
                    entropy = -(probs * probs.clamp_min(1e-8).log()).sum(-1).mean()
                    balance = (p.mean() - 0.5) ** 2
                    self.aux = 0.05 * entropy + 0.5 * balance
            elif mode == "select":
                y = self._per_sample(x, p)
            else:
                y = self.gated(x, p)
        x = x + y
        return residual_mlp_on_map(x, self.norm2, self.mlp)


VARIANTS = {
    "tiny": {"dim": 48, "depth": 2, "heads": 4, "mlp_ratio": 2.0},
    "small": {"dim": 96, "depth": 4, "heads": 6, "mlp_ratio": 3.0},
}


@register_family(
    "routed",
    variants=VARIANTS,
    routed=True,
    description="router picks depthwise-conv or self-attention per input (shared 1x1 kernel)",
)
def build(cfg: dict) -> nn.Module:
    d = cfg["dim"]
    # token_grid: the largest token grid the stem may leave (16 by default); larger grids make attention - and so
    # the routing decision - a larger share of the cost.
    stem = nn.Sequential(
        make_stem(cfg["in_chans"], d, cfg["img_size"], cfg.get("token_grid", 16)), InvertedResidual(d, d, 2 * d)
    )
    blocks = nn.Sequential(
        *[RoutedBlock(d, cfg["heads"], int(d * cfg["mlp_ratio"]), cfg.get("threshold", 0.5)) for _ in range(cfg["depth"])]
    )
    return HybridNet(cfg, stem, blocks, d)
