"""Artifact formats: one frozen row per file format edgeconv reads or writes, and the only place that knows suffixes.

A row says which suffixes a format has, which runtime backend runs it natively (`runtime/backends`), where its
record lives (inside the file, or a `<file>.json` sidecar written atomically before the file), and which optional
extra it needs; the quantize backends take their suffixes from these rows. Adding a format is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeconv.common.errors import EdgeconvError


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


# ----------------------------------------------------------------------------------------------- what a file holds
SNIFF_LABELS = {
    "empty": "an empty file",
    "checkpoint": "a PyTorch checkpoint",
    "npz": "an .npz archive",
    "zip": "a zip archive",
    "tflite": "a TFLite model",
    "onnx": "an ONNX model",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "text": "a text file",
}


def sniff(path: str | Path) -> str:
    """What a file holds, by content (for error messages when a file has the wrong kind for its suffix):
    a key of SNIFF_LABELS, or "unknown"."""
    import zipfile

    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x80") and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "checkpoint"  # a legacy torch.save file (a bare pickle)
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "checkpoint"
        return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c in "\n\r\t" for c in text):
            return "text"
    except UnicodeDecodeError:
        pass
    if p.stat().st_size < 1 << 30:  # a protobuf has no magic bytes: parse it (error path only)
        try:
            import onnx

            m = onnx.load_model(str(p), load_external_data=False)
            if m.HasField("graph") and m.ir_version > 0:
                return "onnx"
        except Exception:  # noqa: BLE001 - anything that does not parse is not an ONNX model
            pass
    return "unknown"


def not_a(path: str | Path, expected: str, label: str | None = None) -> str | None:
    """`"<path> is <what it holds>, not <label>"` when the content is clearly another kind than `expected` (a key of
    SNIFF_LABELS), else None."""
    try:
        kind = sniff(path)
    except OSError:
        return None
    if kind in ("unknown", expected):
        return None
    return f"{path} is {SNIFF_LABELS[kind]}, not {label or SNIFF_LABELS[expected]}"


def check_content(path: str | Path) -> None:
    """A file whose format has magic bytes holds that format (a TFLite flatbuffer says `TFL3`): checked before a
    runner or a missing record gives a less direct error."""
    if is_format(path, "tflite") and sniff(path) != "tflite":
        raise EdgeconvError(not_a(path, "tflite") or f"{path}: not a TFLite model (no TFL3 file identifier)")
