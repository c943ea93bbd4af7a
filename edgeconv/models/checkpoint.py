"""Rebuild the model a checkpoint describes (registry family + recorded config) and describe it for `info`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from edgeconv.artifacts.checkpoint import first_line, read_checkpoint
from edgeconv.artifacts.describe import register_describer
from edgeconv.artifacts.formats import FORMATS
from edgeconv.artifacts.io import file_sha256, short_hash
from edgeconv.common.errors import EdgeconvError
from edgeconv.models.registry import count_params_macs, create_model_from_config


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model in eval mode, checkpoint)."""
    ckpt = read_checkpoint(path)
    try:
        model = create_model_from_config(ckpt["config"])
    except EdgeconvError as e:
        e.args = (f"{path}: {e}",)  # keep the type (MissingDependencyError stays one), name the file
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        # the config came from the file: a value the builder cannot use is the file's fault, not a bug
        raise EdgeconvError(
            f"{path}: recorded config does not build a {ckpt['family']!r} model ({type(e).__name__}: {first_line(e)})"
        ) from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise EdgeconvError(f"{path}: weights do not match the recorded config ({first[:200]})") from None
    model.eval()
    return model, ckpt


@register_describer(*FORMATS["checkpoint"].suffixes)
def describe_checkpoint(path: Path) -> dict:
    model, ckpt = load_model(path)
    pre = ckpt["preprocessing"]
    params, macs = count_params_macs(model, pre)
    cfg = dict(ckpt["config"])
    prov = ckpt.get("provenance", {})
    return {
        "artifact": {
            "path": str(path),
            "type": "edgeconv checkpoint",
            "sha256": short_hash(file_sha256(path)),
            "size": f"{path.stat().st_size / 1024:.1f} KiB",
        },
        "model": {
            "family": ckpt["family"],
            "variant": cfg.get("variant", "?"),
            "params": f"{params:,}",
            "MACs": f"{macs:,}",
            "config": json.dumps({k: v for k, v in cfg.items() if k != "structure"}),
            "pruned structure": json.dumps(cfg.get("structure")) if cfg.get("structure") else "none",
        },
        "input": {
            "shape": f"[N, {pre['channels']}, {pre['size']}, {pre['size']}]",
            "layout": pre.get("layout", "NCHW"),
            "mean/std": f"{pre.get('mean')} / {pre.get('std')}",
            "classes": ", ".join(ckpt["classes"]),
        },
        "metrics": {k: (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in ckpt.get("metrics", {}).items()},
        "provenance": {
            "command": prov.get("command"),
            "edgeconv": prov.get("edgeconv_version"),
            "parent": prov.get("parent_sha256") and short_hash(prov["parent_sha256"]),
            "chain": " <- ".join(str(c.get("command")) for c in reversed(prov.get("chain", []))) or "-",
        },
    }
