"""Artifact formats: one frozen row per file format edgeconv reads or writes, and the only place that knows suffixes.

A row says which suffixes a format has, which runtime backend runs it natively (`runtime/backends`), where its
record lives (inside the file, or a `<file>.json` sidecar written atomically before the file), and which optional
extra it needs; the quantize backends take their suffixes from these rows. Adding a format is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeconv.errors import EdgeconvError


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]  # the first is what edgeconv writes
    runtime: str  # runtime backend that runs it natively (runtime/backends registry name)
    label: str
    sidecar: bool = False  # the record is a `<file>.json` next to it (it cannot carry metadata itself)
    extra: str | None = None  # optional extra of edgeconv that runs it
    module: str | None = None  # import that the extra provides

    @property
    def suffix(self) -> str:
        return self.suffixes[0]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("checkpoint", (".pt", ".pth", ".ckpt"), "torch", "PyTorch checkpoint (weights_only)"),
        Format("onnx", (".onnx",), "ort", "ONNX model (record in metadata_props)"),
        Format("tflite", (".tflite",), "tflite", "TFLite flatbuffer", sidecar=True, extra="tflite", module="ai_edge_litert"),
        Format(
            "engine", (".engine", ".plan"), "tensorrt", "TensorRT engine", sidecar=True, extra="tensorrt", module="tensorrt"
        ),
    )
}

SIDECAR_SUFFIX = ".json"


def _by_suffix() -> dict[str, Format]:
    return {s: f for f in FORMATS.values() for s in f.suffixes}


def all_suffixes() -> list[str]:
    return sorted(_by_suffix())


def format_of(path: str | Path) -> Format:
    """The format of a file by its suffix, or one line naming the known ones."""
    fmt = _by_suffix().get(Path(path).suffix.lower())
    if fmt is None:
        raise EdgeconvError(
            f"{path}: unknown artifact type {Path(path).suffix or '(no suffix)'!r} (known: {', '.join(all_suffixes())})"
        )
    return fmt


def is_format(path: str | Path, name: str) -> bool:
    fmt = _by_suffix().get(Path(path).suffix.lower())
    return fmt is not None and fmt.name == name


def sidecar_path(path: str | Path) -> Path:
    """Where the record of a sidecar format lives: `<file>.json`."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def sidecar_paths(path: str | Path) -> list[Path]:
    """Every sidecar a file may have: `<file>.json` (what edgeconv writes) and `<stem>.json` (older files)."""
    p = Path(path)
    return [sidecar_path(p), p.with_suffix(SIDECAR_SUFFIX)]
