"""Checks every command runs before any work: inputs exist and are files, outputs are writable, no output is also an
input (writing a report over the model it describes destroys the model), and numbers are finite and in range.

Arguments are named the way the user typed them (`MODEL`, `-o`, `--json`), so each error is one line that says
which argument is wrong and why.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Iterable, Mapping, Union

from edgeconv.common.errors import EdgeconvError

PathArg = Union[str, os.PathLike, None]


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _items(args: Mapping[str, PathArg | Iterable[PathArg]]) -> list[tuple[str, Path]]:
    out = []
    for name, value in args.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is not None and str(v) != "":
                out.append((name, Path(v)))
    return out


def path_kind(name: str, p: Path) -> str:
    """'dir', 'file', 'other' or 'missing'; a path the OS cannot even look up (a name too long) is one line."""
    try:
        st = p.stat()
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        return "missing"
    except OSError as e:
        raise EdgeconvError(f"{name} {_short(p)}: {e.strerror or e}") from None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"


def _short(p: Path, keep: int = 80) -> str:
    """A path as typed, shortened in the middle when longer than `keep` characters (a 300-character name)."""
    s = str(p)
    return s if len(s) <= keep else f"{s[: keep // 2]}...{s[-keep // 2 :]}"


def check_inputs(inputs: Mapping[str, PathArg | Iterable[PathArg]]) -> None:
    """Every given input exists and is a regular file (a FIFO or device would block or never end)."""
    for name, p in _items(inputs):
        kind = path_kind(name, p)
        if kind == "dir":
            raise EdgeconvError(f"{name} {p} is a directory, expected a file")
        if kind == "missing":
            raise EdgeconvError(f"{name}: no such file: {p}")
        if kind == "other":
            raise EdgeconvError(f"{name} {p} is not a regular file (a pipe or device), expected a file")


def check_folders(folders: Mapping[str, PathArg]) -> None:
    """Every given input folder exists and is a folder (`--calib DIR`)."""
    for name, p in _items(folders):
        found = path_kind(name, p)
        if found != "dir":
            raise EdgeconvError(f"{name} {p}: {'no such folder' if found == 'missing' else 'not a folder'}")


def _names_fit(name: str, p: Path) -> None:
    for part in p.parts:
        if len(part.encode()) > 255:
            raise EdgeconvError(
                f"{name} {_short(p)}: a name in the path is too long ({len(part.encode())} bytes; at most 255)"
            )


def _writable_place(name: str, p: Path) -> None:
    """The nearest existing folder above `p` is a folder we may write into (missing ones are created)."""
    existing = next((q for q in [p.parent, *p.parent.parents] if path_kind(name, q) != "missing"), None)
    if existing is not None and (path_kind(name, existing) != "dir" or not os.access(existing, os.W_OK | os.X_OK)):
        raise EdgeconvError(
            f"{name} {p}: cannot write there ({existing} is "
            f"{'not a folder' if path_kind(name, existing) != 'dir' else 'not writable'})"
        )


def check_output_dirs(dirs: Mapping[str, PathArg]) -> None:
    """Every given output folder is a folder or can be made one: not a file, under a writable folder."""
    for name, p in _items(dirs):
        _names_fit(name, p)
        kind = path_kind(name, p)
        if kind in ("file", "other"):
            raise EdgeconvError(f"{name} {p} is a file, expected a folder to write into")
        if kind == "dir":
            if not os.access(p, os.W_OK | os.X_OK):
                raise EdgeconvError(f"{name} {p}: cannot write there (not writable)")
        else:
            _writable_place(name, p)


def check_outputs(outputs: Mapping[str, PathArg], inputs: Mapping[str, PathArg | Iterable[PathArg]] = {}) -> None:
    """Every given output is a file path that can be written and is none of the inputs, nor another output."""
    outs = _items(outputs)
    ins = _items(inputs)
    for name, p in outs:
        _names_fit(name, p)
        if path_kind(name, p) == "dir":
            raise EdgeconvError(f"{name} {p} is a directory, expected a file path to write")
        _writable_place(name, p)
        for in_name, q in ins:
            if _same(p, q):
                raise EdgeconvError(
                    f"{name} {p} is also the input {in_name}: writing it would destroy the input; choose another path"
                )
    for i, (name, p) in enumerate(outs):
        for other, q in outs[i + 1 :]:
            if _same(p, q):
                raise EdgeconvError(f"{name} and {other} are the same file ({p}); give each output its own path")


def check_number(
    name: str,
    value: float | int | None,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
) -> None:
    """`value` (when given) is a finite number within [min, max] (open ends where asked), else one line."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise EdgeconvError(f"{name} must be a finite number, got {value}")
    lo = min is not None and (value <= min if min_open else value < min)
    hi = max is not None and (value >= max if max_open else value > max)
    if lo or hi:
        left = "(" if min_open else "["
        right = ")" if max_open else "]"
        rng = f"{left}{'-inf' if min is None else min}, {'inf' if max is None else max}{right}"
        raise EdgeconvError(f"{name} must be in {rng}, got {value}")


def check_number_list(name: str, text: str | None, *, positive: bool = False) -> list[float] | None:
    """A comma-separated list of finite numbers (`--mean 0.5,0.5,0.5`), positive where asked; None stays None."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise EdgeconvError(f"{name} must be comma-separated numbers, got {text!r}") from None
    for v in values:
        check_number(name, v, min=0 if positive else None, min_open=positive)
    return values


MAX_IMG_SIZE = 2048  # the largest input edge a model is built for (a 2048x2048 stem already needs GBs per batch)
MAX_IN_CHANS = 16


def check_input_shape(img_size: int | None, in_chans: int | None) -> None:
    check_number("--img-size", img_size, min=8, max=MAX_IMG_SIZE)
    check_number("--in-chans", in_chans, min=1, max=MAX_IN_CHANS)


def check_training(
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    label_smoothing: float | None = None,
    clip_grad: float | None = None,
) -> None:
    """Training hyper-parameters (train, distill): finite and in the ranges any run can use."""
    check_number("--epochs", epochs, min=1, max=100_000)
    check_number("--batch-size", batch_size, min=1, max=65_536)
    check_number("--lr", lr, min=0, max=10, min_open=True)
    check_number("--weight-decay", weight_decay, min=0, max=10)
    check_number("--label-smoothing", label_smoothing, min=0, max=1, max_open=True)
    check_number("--clip-grad", clip_grad, min=0)


MIN_OPSET = 18  # the dynamo exporter cannot down-convert below this (it silently keeps 18)


def check_opset(opset: int | None, name: str = "opset") -> None:
    """An opset the dynamo exporter writes and the installed onnx knows, or one line naming `name`."""
    if opset is None:
        return
    if opset < MIN_OPSET:
        raise EdgeconvError(f"{name} {opset} is not supported: the dynamo exporter writes opset {MIN_OPSET} or newer")
    import onnx  # torch-free

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise EdgeconvError(f"{name} {opset} does not exist yet: the installed onnx knows opsets up to {newest}")
