"""Data specs: the one parser of `--data` text, and the loader options that travel with it.

A spec names one source: a bundled set (`digits`, `fashion`), `imagefolder:PATH` or `npz:PATH`. `DataSpec.parse`
is the only place that reads that text; every step asks the parsed spec for its `kind` and `path`. A `DataSpec` is
a `str` (its canonical text), so it is recorded, compared and printed as the text the user wrote, and it carries
the image-folder loader options (`LoaderSettings`: DataLoader workers, unreadable files, a class tree's split)
down to the DataLoader, fixed when the spec was parsed. Torch-free: the command line checks specs before any heavy
import.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from edgeconv.common.errors import EdgeconvError
from edgeconv.common.settings import SETTINGS, LoaderSettings

BUNDLED = ("digits", "fashion")  # sets that ship with edgeconv or a system package (data/sources.py)
PATH_KINDS = ("imagefolder", "npz")
KINDS_HELP = "digits | fashion | imagefolder:PATH | npz:PATH"


class DataSpec(str):
    """A parsed data spec: `kind`, `path` (None for bundled sets) and `loader` (the loader options)."""

    kind: str
    path: Path | None
    loader: LoaderSettings

    def __new__(cls, kind: str, path: Path | None = None, loader: LoaderSettings | None = None) -> "DataSpec":
        self = super().__new__(cls, kind if path is None else f"{kind}:{path}")
        self.kind, self.path = kind, path
        self.loader = loader if loader is not None else dataclasses.replace(SETTINGS)
        return self

    @classmethod
    def parse(cls, spec: "str | DataSpec", loader: LoaderSettings | None = None, *, name: str = "--data") -> "DataSpec":
        """`spec` parsed (a DataSpec is returned as it is unless `loader` replaces its options); one readable
        error naming `name` for anything else. The process's loader options (`edgeconv --workers ...`) are the
        default."""
        if isinstance(spec, DataSpec):
            return spec if loader is None else cls(spec.kind, spec.path, loader)
        if not isinstance(spec, str):
            raise EdgeconvError(f"{name}: expected a data spec ({KINDS_HELP}), got {type(spec).__name__}")
        if spec in BUNDLED:
            return cls(spec, None, loader)
        kind, colon, rest = spec.partition(":")
        if not colon or kind not in PATH_KINDS:
            bundled = ", ".join(BUNDLED)
            raise EdgeconvError(f"{name} {spec!r}: unknown data source; use {bundled}, imagefolder:PATH or npz:PATH")
        if not rest:
            what = "a folder" if kind == "imagefolder" else "a file"
            raise EdgeconvError(f"{name} {spec}: give a path after '{kind}:' ({what}), e.g. {kind}:data/pets")
        return cls(kind, Path(rest), loader)

    @property
    def bundled(self) -> bool:
        return self.path is None

    def __reduce__(self):  # pickles (DataLoader workers, torchrun) keep kind, path and the loader options
        return (DataSpec, (self.kind, self.path, self.loader))


def parse_optional(spec: "str | DataSpec | None", name: str = "--data") -> DataSpec | None:
    return None if spec is None else DataSpec.parse(spec, name=name)


def check_data(specs: Mapping[str, "str | None"]) -> None:
    """Every given data spec names a source that is there: a bundled set, `npz:FILE` (a file), `imagefolder:DIR`
    (a folder). Checked before any model is loaded, so a typo is not reported as a missing --img-size or a bad
    model."""
    from edgeconv.common.checks import path_kind

    for name, text in specs.items():
        if text is None:
            continue
        spec = DataSpec.parse(text, name=name)
        if spec.bundled:
            continue
        found = path_kind(name, spec.path)
        if spec.kind == "npz" and found != "file":
            what = {"missing": "no such file", "dir": "a directory", "other": "not a regular file"}[found]
            raise EdgeconvError(f"{name} {spec}: {what}, expected an .npz file")
        if spec.kind == "imagefolder" and found != "dir":
            raise EdgeconvError(f"{name} {spec}: {'no such folder' if found == 'missing' else 'not a folder'}")
