"""Self-describing checkpoints, atomic writes, content hashes and `info` describers.

A checkpoint is one file that `torch.load(weights_only=True)` can read: plain dicts, lists, strings, numbers and
tensors. The model is rebuilt from the registry by family + config; nothing stored in a file is ever executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import sys
import tempfile
import warnings
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edgeconv import __version__
from edgeconv.errors import EdgeconvError
from edgeconv.formats import FORMATS

FORMAT = "edgeconv.checkpoint/1"


# ----------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block finishes.

    The temp file lives in the destination directory so the final `os.replace` is atomic on the same filesystem;
    an interrupted run leaves the previous file (or nothing), never half a file.
    """
    dest = Path(path)
    if dest.is_dir():
        raise EdgeconvError(f"{dest} is a directory, expected a file path to write")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{_tmp_stem(dest)}.{os.getpid()}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise EdgeconvError(f"cannot write {dest}: {e.strerror or e}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); the artifact gets the mode any new file gets here (umask)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _tmp_stem(dest: Path) -> str:
    """The part of a temp file's name taken from `dest` (short enough that the temp name fits in 255 bytes)."""
    return dest.name[:120]


def _remove_orphans(dest: Path) -> None:
    """Temp files of `dest` left by a writer that was killed (its pid, in the name, no longer runs)."""
    stem = _tmp_stem(dest)
    for tmp in dest.parent.glob(f".{glob_escape(stem)}.*.tmp"):
        pid = tmp.name[len(stem) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


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
        return {(k if isinstance(k, (str, int)) else str(k)): _storable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_storable(v) for v in obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
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
            _other_kind(p, what) or f"{p}: corrupt or truncated {what} ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _other_kind(p: Path, what: str) -> str | None:
    """'X is an ONNX model, not a PyTorch checkpoint (.pt)' when the file is plainly something else."""
    from edgeconv.formats import not_a

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


def _first_line(e: BaseException) -> str:
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
    from edgeconv.checks import MAX_IMG_SIZE, MAX_IN_CHANS

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


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model in eval mode, checkpoint)."""
    from edgeconv.models import create_model_from_config

    ckpt = read_checkpoint(path)
    try:
        model = create_model_from_config(ckpt["config"])
    except EdgeconvError as e:
        e.args = (f"{path}: {e}",)  # keep the type (MissingDependencyError stays one), name the file
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        # the config came from the file: a value the builder cannot use is the file's fault, not a bug
        raise EdgeconvError(
            f"{path}: recorded config does not build a {ckpt['family']!r} model ({type(e).__name__}: {_first_line(e)})"
        ) from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise EdgeconvError(f"{path}: weights do not match the recorded config ({first[:200]})") from None
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


Section = Callable[[Path, dict], None]
_SECTIONS: dict[str, list[Section]] = {}


def register_section(*suffixes: str) -> Callable[[Section], Section]:
    """Register a function that adds sections to the description of these suffixes (a later stage's view of an
    earlier stage's format, e.g. the quantization record of a quantized `.onnx`); it edits the dict in place."""

    def deco(fn: Section) -> Section:
        for s in suffixes:
            if fn not in _SECTIONS.setdefault(s.lower(), []):
                _SECTIONS[s.lower()].append(fn)
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
    desc = fn(p)
    for extra in _SECTIONS.get(p.suffix.lower(), []):
        extra(p, desc)
    return desc


def _load_describer_modules() -> None:
    # Describers for other formats live with their stage; importing is enough to register them.
    import importlib

    for mod in ("edgeconv.export.onnx_info", "edgeconv.quantize.info"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


@register_describer(*FORMATS["checkpoint"].suffixes)
def describe_checkpoint(path: Path) -> dict:
    from edgeconv.models import count_params_macs

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


def python_command() -> str:
    return " ".join(["edgeconv", *sys.argv[1:]]) if sys.argv else "edgeconv"
