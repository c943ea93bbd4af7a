"""`timm:NAME`: users' own timm models (MobileViT, EfficientFormer, FastViT, LeViT, CoAtNet, ...).

Built with `pretrained=False` (no hub access); trained weights come from a local state-dict file. timm is an
optional extra and is imported only when such a model is asked for.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgeconv.errors import EdgeconvError, MissingDependencyError
from edgeconv.models import register_family


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
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_family("timm", variants={}, description="a timm model (timm:NAME), randomly initialised or from --weights")
def build(cfg: dict) -> nn.Module:
    return TimmModel(cfg)


def load_timm_weights(model: nn.Module, path: str) -> None:
    """Load a plain state dict (or {'state_dict': ...}) into a timm model, safely."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise EdgeconvError(f"no such file: {p}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the same user error
        raise EdgeconvError(f"{p}: cannot read weights ({str(e).splitlines()[0][:160]})")
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    try:
        model.net.load_state_dict(sd)
    except RuntimeError as e:
        raise EdgeconvError(f"{p}: weights do not fit {model.cfg['timm_name']} ({str(e).splitlines()[0][:160]})")
