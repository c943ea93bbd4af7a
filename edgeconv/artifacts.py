"""Self-describing checkpoints, atomic writes, content hashes and `info` describers.

A checkpoint is one file that `torch.load(weights_only=True)` can read: plain dicts, lists, strings, numbers and
tensors. The model is rebuilt from the registry by family + config; nothing stored in a file is ever executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edgeconv import __version__
from edgeconv.errors import EdgeconvError

FORMAT = "edgeconv.checkpoint/1"


# ----------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block finishes.

    The temp file lives in the destination directory so the final `os.replace` is atomic on the same filesystem;
    an interrupted run leaves the previous file (or nothing), never half a file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------- hashing
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_hash(digest: str) -> str:
    return digest[:12]


# ----------------------------------------------------------------------------------------------- checkpoints
def provenance(command: str, parent: str | os.PathLike | None = None, parent_info: dict | None = None) -> dict:
    """A provenance record: what made this artifact, from which parent, with which edgeconv."""
    rec: dict[str, Any] = {"command": command, "edgeconv_version": __version__, "parent_sha256": None, "chain": []}
    if parent is not None and Path(parent).exists():
        rec["parent_sha256"] = file_sha256(parent)
        rec["parent_path"] = str(parent)
    if parent_info:
        prev = parent_info.get("provenance", {})
        rec["chain"] = list(prev.get("chain", [])) + [
            {"command": prev.get("command"), "parent_sha256": prev.get("parent_sha256")}
        ]
    return rec


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, *, preprocessing: dict, classes: list[str],
                    metrics: dict | None = None, provenance_rec: dict | None = None,
                    extra: dict | None = None) -> Path:
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
        "extra": _plain(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _plain(obj: Any) -> Any:
    """Round-trip through JSON so only plain types reach the file (weights_only=True can read them back)."""
    return json.loads(json.dumps(obj, default=str))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint dict safely, turning every way a file can be wrong into one readable error."""
    p = Path(path)
    if not p.exists():
        raise EdgeconvError(f"no such file: {p}")
    if p.is_dir():
        raise EdgeconvError(f"{p} is a directory, expected a checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses globals it does not know: such a file asks to run code, and we never do.
        msg = str(e).splitlines()[0] if str(e) else "unsupported object"
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise EdgeconvError(f"{p}: refusing to load, the file needs code execution to unpickle ({msg[:160]})")
        raise EdgeconvError(f"{p}: corrupt or truncated checkpoint ({msg[:160]})")
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeconvError(f"{p}: corrupt or truncated checkpoint ({first[:160]})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise EdgeconvError(f"{p}: not an edgeconv checkpoint (expected format {FORMAT!r}); "
                            "bring a timm model with --model timm:NAME --weights FILE")
    return ckpt


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model in eval mode, checkpoint)."""
    from edgeconv.models import create_model_from_config

    ckpt = read_checkpoint(path)
    model = create_model_from_config(ckpt["config"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise EdgeconvError(f"{path}: weights do not match the recorded config ({first[:200]})")
    model.eval()
    return model, ckpt


# ----------------------------------------------------------------------------------------------- describers for `info`
Describer = Callable[[Path], dict]
_DESCRIBERS: dict[str, Describer] = {}


def register_describer(*suffixes: str) -> Callable[[Describer], Describer]:
    """Register a function that describes artifacts with these file suffixes for `edgeconv info`."""

    def deco(fn: Describer) -> Describer:
        for s in suffixes:
            _DESCRIBERS[s.lower()] = fn
        return fn

    return deco


def describe(path: str | os.PathLike) -> dict:
    """A dict of sections -> {key: value} describing any artifact edgeconv knows."""
    p = Path(path)
    if not p.exists():
        raise EdgeconvError(f"no such file: {p}")
    _load_describer_modules()
    fn = _DESCRIBERS.get(p.suffix.lower())
    if fn is None:
        known = ", ".join(sorted(_DESCRIBERS))
        raise EdgeconvError(f"{p}: unknown artifact type {p.suffix!r} (known: {known})")
    return fn(p)


def _load_describer_modules() -> None:
    # Describers for other formats live with their stage; importing is enough to register them.
    import importlib

    for mod in ("edgeconv.export.onnx_info", "edgeconv.quantize.info"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


@register_describer(".pt", ".pth", ".ckpt")
def describe_checkpoint(path: Path) -> dict:
    from edgeconv.models import count_params_macs

    model, ckpt = load_model(path)
    pre = ckpt["preprocessing"]
    params, macs = count_params_macs(model, pre)
    cfg = dict(ckpt["config"])
    prov = ckpt.get("provenance", {})
    return {
        "artifact": {"path": str(path), "type": "edgeconv checkpoint", "sha256": short_hash(file_sha256(path)),
                     "size": f"{path.stat().st_size / 1024:.1f} KiB"},
        "model": {"family": ckpt["family"], "variant": cfg.get("variant", "?"), "params": f"{params:,}",
                  "MACs": f"{macs:,}", "config": json.dumps({k: v for k, v in cfg.items() if k != "structure"}),
                  "pruned structure": json.dumps(cfg.get("structure")) if cfg.get("structure") else "none"},
        "input": {"shape": f"[N, {pre['channels']}, {pre['size']}, {pre['size']}]", "layout": pre.get("layout", "NCHW"),
                  "mean/std": f"{pre.get('mean')} / {pre.get('std')}", "classes": ", ".join(ckpt["classes"])},
        "metrics": {k: (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in ckpt.get("metrics", {}).items()},
        "provenance": {"command": prov.get("command"), "edgeconv": prov.get("edgeconv_version"),
                       "parent": prov.get("parent_sha256") and short_hash(prov["parent_sha256"]),
                       "chain": " <- ".join(str(c.get("command")) for c in reversed(prov.get("chain", []))) or "-"},
    }


def python_command() -> str:
    return " ".join(["edgeconv", *sys.argv[1:]]) if sys.argv else "edgeconv"
