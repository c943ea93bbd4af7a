"""Checks every command runs before any work: inputs exist and are files, outputs are writable, no output is also an
input (writing a report over the model it describes destroys the model), and numbers are finite and in range.

Arguments are named the way the user typed them (`MODEL`, `-o`, `--json`), so each error is one line that says
which argument is wrong and why.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Union

from edgeconv.errors import EdgeconvError

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


def check_inputs(inputs: Mapping[str, PathArg | Iterable[PathArg]]) -> None:
    """Every given input exists and is a file."""
    for name, p in _items(inputs):
        if p.is_dir():
            raise EdgeconvError(f"{name} {p} is a directory, expected a file")
        if not p.exists():
            raise EdgeconvError(f"{name}: no such file: {p}")


def check_outputs(outputs: Mapping[str, PathArg], inputs: Mapping[str, PathArg | Iterable[PathArg]] = {}) -> None:
    """Every given output is a file path that can be written and is none of the inputs, nor another output."""
    outs = _items(outputs)
    ins = _items(inputs)
    for name, p in outs:
        if p.is_dir():
            raise EdgeconvError(f"{name} {p} is a directory, expected a file path to write")
        existing = next((q for q in [p.parent, *p.parent.parents] if q.exists()), None)
        if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
            raise EdgeconvError(
                f"{name} {p}: cannot write there ({existing} is "
                f"{'not a folder' if not existing.is_dir() else 'not writable'})"
            )
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
