"""The `info` registry: each stage registers a describer for its file suffixes, and later stages add sections.

Registration happens where each format is defined; `edgeconv.measure.describe` imports every describer module and
is what `edgeconv info` calls.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from edgeconv.common.errors import EdgeconvError

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
    """A dict of sections -> {key: value} describing an artifact whose describer is registered."""
    p = Path(path)
    if not p.exists():
        raise EdgeconvError(f"no such file: {p}")
    fn = _DESCRIBERS.get(p.suffix.lower())
    if fn is None:
        known = ", ".join(sorted(_DESCRIBERS))
        raise EdgeconvError(f"{p}: unknown artifact type {p.suffix!r} (known: {known})")
    desc = fn(p)
    for extra in _SECTIONS.get(p.suffix.lower(), []):
        extra(p, desc)
    return desc
