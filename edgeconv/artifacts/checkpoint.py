"""Self-describing checkpoints: one file that `torch.load(weights_only=True)` can read.

Plain dicts, lists, strings, numbers and tensors only. The model is rebuilt from the registry by family + config
(`edgeconv.models.load_model`); nothing stored in a file is ever executed.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from edgeconv.artifacts.io import atomic_write_bytes, provenance
from edgeconv.common.errors import EdgeconvError

FORMAT = "edgeconv.checkpoint/1"


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    preprocessing: dict,
    classes: list[str],
    metrics: dict | None = None,
    provenance_rec: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically. `model.cfg` must be the JSON-able config the registry reads."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, dict) or "family" not in cfg:
        raise EdgeconvError("model has no edgeconv config (model.cfg with a 'family' key); build it with create_model")
    payload = {
        "format": FORMAT,
        "family": cfg["family"],
        "config": _plain(cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "preprocessing": _plain(preprocessing),
        "classes": [str(c) for c in classes],
        "metrics": _plain(metrics or {}),
        "provenance": _plain(provenance_rec or provenance("unknown")),
        "extra": _storable(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _plain(obj: Any) -> Any:
    """Round-trip through JSON so only plain types reach the file (weights_only=True can read them back)."""
    return json.loads(json.dumps(obj, default=str))


def _storable(obj: Any) -> Any:
    """Like `_plain` but tensors stay tensors (optimizer and sampler state for resuming training)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {(k if isinstance(k, int) else str(k)): _storable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_storable(v) for v in obj)
    if isinstance(obj, str):
        return str(obj)  # a str subclass (a parsed data spec) is stored as its text: weights-only loads refuse classes
    if obj is None or isinstance(obj, (int, float, bool)):
        return obj
    return _plain(obj)


def safe_torch_load(path: str | os.PathLike, allowed: tuple = (), what: str = "checkpoint"):
    """`torch.load(weights_only=True)` (plus the classes in `allowed`), every way a file can be wrong one line."""
    p = Path(path)
    if not p.exists():
        raise EdgeconvError(f"no such file: {p}")
    if p.is_dir():
        raise EdgeconvError(f"{p} is a directory, expected a {what} file")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing; the error says it
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise EdgeconvError(_other_kind(p, what) or _unpickling_error(p, str(e), what)) from None
    except Exception as e:  # noqa: BLE001 - arbitrary bytes fail inside torch.load in many ways (IndexError, ...)
        raise EdgeconvError(
            _other_kind(p, what) or f"{p}: corrupt or truncated {what} ({type(e).__name__}: {first_line(e)})"
        ) from None


def _other_kind(p: Path, what: str) -> str | None:
    """'X is an ONNX model, not a PyTorch checkpoint (.pt)' when the file is plainly something else."""
    from edgeconv.artifacts.formats import not_a

    return not_a(p, "checkpoint", f"a PyTorch {what}")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint dict safely, turning every way a file can be wrong into one readable error."""
    p = Path(path)
    ckpt = safe_torch_load(p)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise EdgeconvError(
            f"{p}: not an edgeconv checkpoint (expected format {FORMAT!r}); "
            "bring a timm model with --model timm:NAME --weights FILE"
        )
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise EdgeconvError(f"{p}: malformed edgeconv checkpoint ({problem})")
    return ckpt


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _unpickling_error(p: Path, text: str, what: str = "checkpoint") -> str:
    """Name what the file asked for: torch's weights-only unpickler explains at length, we say it in one line."""
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return (
            f"{p}: refusing to load: unpickling it would import and run {m.group(1)!r}; "
            "edgeconv never executes code from a file"
        )
    if "Weights only load failed" in text:
        detail = next(
            (ln.strip() for ln in text.splitlines() if "Unsupported" in ln), "an object weights-only loading does not allow"
        )
        return f"{p}: corrupt or truncated {what}, or a pickle that weights-only loading refuses ({detail[:120]})"
    return f"{p}: corrupt or truncated {what} ({text.splitlines()[0][:160] if text else 'unpickling failed'})"


# Bounds on what a recorded config may ask the builder for: a file must not make `info` build a model for hours.
CONFIG_BOUNDS = {
    "depth": 64,
    "dim": 8192,
    "heads": 256,
    "img_size": 2048,
    "in_chans": 16,
    "num_classes": 100_000,
    "mlp_ratio": 64,
    "token_grid": 2048,
    "window": 2048,
    "topk": 1_000_000,
}


def config_problem(cfg: dict) -> str | None:
    """A recorded number outside what any model needs (None when every bounded key is sane)."""
    for key, top in CONFIG_BOUNDS.items():
        v = cfg.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not 0 < v <= top:
            return f"config {key!r} = {v!r} is outside 1..{top}"
    return None


def _checkpoint_problem(ckpt: dict) -> str | None:
    """What is missing or mistyped in a checkpoint dict (None when its shape is right)."""
    need = {"family": str, "config": dict, "state_dict": dict, "preprocessing": dict, "classes": list}
    for key, typ in need.items():
        if not isinstance(ckpt.get(key), typ):
            return f"{key!r} is missing or not a {typ.__name__}"
    if ckpt["config"].get("family") != ckpt["family"]:
        return f"config family {ckpt['config'].get('family')!r} differs from family {ckpt['family']!r}"
    pre = ckpt["preprocessing"]
    from edgeconv.common.checks import MAX_IMG_SIZE, MAX_IN_CHANS

    for key, top in (("size", MAX_IMG_SIZE), ("channels", MAX_IN_CHANS)):
        if not isinstance(pre.get(key), int) or isinstance(pre.get(key), bool) or not 1 <= pre[key] <= top:
            return f"preprocessing {key!r} is missing or not an integer in 1..{top}"
    bounded = config_problem(ckpt["config"])
    if bounded:
        return bounded
    for key in ("mean", "std"):
        if not isinstance(pre.get(key), list) or len(pre[key]) != pre["channels"]:
            return f"preprocessing {key!r} must list one value per channel"
    bad = next((k for k, v in ckpt["state_dict"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        return f"state_dict entry {bad!r} is not a tensor"
    for key in ("mean", "std"):
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in pre[key]):
            return f"preprocessing {key!r} holds a value that is not a finite number"
    if not all(v > 0 for v in pre["std"]):
        return "preprocessing 'std' must be positive"
    bad = next(
        (k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None
    )
    if bad is not None:
        return f"state_dict entry {bad!r} holds NaN or infinite values (a diverged training run?)"
    return None
