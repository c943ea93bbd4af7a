"""What `quantize` starts from: a checkpoint (exported to ONNX first) or an ONNX written by `edgeconv export`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.artifacts.card import QUANTIZATION_KEY, quantization_of, read_metadata
from edgeconv.artifacts.formats import is_format
from edgeconv.common.errors import EdgeconvError


@dataclass
class ModelSource:
    """The float model to quantize: its ONNX file, its edgeconv metadata and the checkpoint it came from."""

    onnx_path: Path | None
    meta: dict[str, Any]
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> dict:
        return self.meta.get("preprocessing") or {}

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    @property
    def routing(self) -> str:
        return str(self.meta.get("routing", "none"))


def is_checkpoint(path: Path) -> bool:
    return is_format(path, "checkpoint")


def checkpoint_source(path: Path) -> ModelSource:
    """A checkpoint without an ONNX yet (TFLite converts from PyTorch directly)."""
    from edgeconv.artifacts import read_checkpoint

    ck = read_checkpoint(path)
    meta = {
        "family": ck["family"],
        "variant": ck["config"].get("variant", ""),
        "config": ck["config"],
        "classes": ck["classes"],
        "preprocessing": ck["preprocessing"],
        "routing": "none",
        "source_path": str(path.resolve()),
    }
    return ModelSource(None, meta, checkpoint=path)


def resolve_onnx(model: str | Path, workdir: Path, routing: str | None = None) -> ModelSource:
    """An ONNX for `model`: exported into `workdir` when it is a checkpoint, read as it is when it is an ONNX."""
    from edgeconv.export.onnx import export_onnx

    p = Path(model)
    if not p.exists():
        raise EdgeconvError(f"no such file: {p}")
    if is_checkpoint(p):
        out = workdir / f"{p.stem}.fp32.onnx"
        res = export_onnx(p, out, routing=routing)
        return ModelSource(
            out, dict(res.metadata), checkpoint=p, notes=[f"exported {p.name} to ONNX (routing {res.routing})", *res.notes]
        )
    if not is_format(p, "onnx"):
        raise EdgeconvError(f"{p}: expected a checkpoint (.pt) or an ONNX model (.onnx), got {p.suffix or 'no suffix'}")
    if routing is not None:
        raise EdgeconvError("--routing applies when quantizing from a checkpoint; this ONNX was exported already")
    meta = read_metadata(p)
    if QUANTIZATION_KEY in meta:
        precision = (quantization_of(meta) or {}).get("precision") or "?"
        raise EdgeconvError(f"{p} is already quantized ({precision}); quantize the float model instead")
    src = meta.get("source_path")
    ckpt = Path(src) if src and Path(src).is_file() else None
    return ModelSource(p, meta, checkpoint=ckpt)
