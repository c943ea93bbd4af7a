"""`timm:NAME`: users' own timm models (MobileViT, EfficientFormer, FastViT, LeViT, CoAtNet, ...).

Built with `pretrained=False` (no hub access); trained weights come from a local state-dict file. timm is an
optional extra and is imported only when such a model is asked for.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgeconv.common.errors import EdgeconvError, MissingDependencyError
from edgeconv.models.registry import register_family


def _timm():
    try:
        import timm
    except ImportError as e:
        # timm needs torchvision, which only imports beside torch 2.14.1: it lives in its own venv, so the hint
        # never suggests swapping the torch of the environment the user is in
        raise MissingDependencyError(
            "timm",
            f"use the timm environment (`make setup-timm`, then "
            f".venv-timm/bin/edgeconv), or pip install the extra '.[timm]' with "
            f"torch 2.14.1 + torchvision 0.29.1 ({e})",
        )
    return timm


class TimmModel(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        timm = _timm()
        name = cfg["timm_name"]
        if not timm.list_models(name):
            raise EdgeconvError(f"timm has no model named {name!r} (see timm.list_models())")
        kwargs = dict(pretrained=False, num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
        try:
            self.net = timm.create_model(name, img_size=cfg["img_size"], **kwargs)
        except TypeError:  # families without an img_size argument adapt to any input size
            self.net = timm.create_model(name, **kwargs)
        cfg.setdefault("timm_version", timm.__version__)  # informational: the version that built it first
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_family("timm", variants={}, description="a timm model (timm:NAME), randomly initialised or from --weights")
def build(cfg: dict) -> nn.Module:
    return TimmModel(cfg)


def pretrained_preprocessing(name: str, size: int | None = None, channels: int = 3) -> dict:
    """The preprocessing timm's pretrained config gives `name` (input size, interpolation, crop fraction, mean/std),
    at `size` when given. For a 1-channel model the RGB mean/std are averaged (timm's in_chans=1 convention)."""
    timm = _timm()
    from timm.data import resolve_data_config

    pcfg = timm.models.get_pretrained_cfg(name)
    dc = resolve_data_config(pretrained_cfg=pcfg.to_dict() if pcfg is not None else {}, use_test_size=False)
    mean, std = [float(v) for v in dc["mean"]], [float(v) for v in dc["std"]]
    if channels != len(mean):
        mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
    return {
        "size": int(size or dc["input_size"][-1]),
        "channels": int(channels),
        "mean": [round(v, 6) for v in mean],
        "std": [round(v, 6) for v in std],
        "interpolation": str(dc.get("interpolation", "bilinear")),
        "crop_pct": float(dc.get("crop_pct", 1.0)),
        "layout": "NCHW",
        "pixel_range": "[0,1] before normalisation",
        "source": f"timm {timm.__version__} pretrained_cfg of {name}",
    }
