"""Pieces every backend shares: reading the source cheaply before heavy work, inputs, and the metadata record."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

from edgeconv import __version__
from edgeconv.artifacts.card import QUANTIZATION_KEY, RECORD_FORMAT, read_metadata
from edgeconv.artifacts.formats import is_format
from edgeconv.common.errors import EdgeconvError
from edgeconv.quantize import QuantizeRequest
from edgeconv.quantize.calibration import CalibrationSet, load_calibration, load_evaluation
from edgeconv.quantize.source import is_checkpoint
from edgeconv.runtime.hostcpu import cpu_record

TOP1_TOLERANCE_NOTE = "top-1 in percent on the evaluation split; drop = float - quantized"


def peek_meta(model: Path) -> dict[str, Any]:
    """The model's preprocessing/classes/routing without exporting anything (fail fast on bad input)."""
    p = Path(model)
    if not p.exists():
        raise EdgeconvError(f"no such file: {p}")
    if is_checkpoint(p):
        from edgeconv.quantize.source import checkpoint_source

        return checkpoint_source(p).meta
    if is_format(p, "onnx"):
        meta = read_metadata(p)
        if QUANTIZATION_KEY in meta:
            raise EdgeconvError(f"{p} is already quantized; quantize the float model instead")
        if not meta.get("preprocessing"):
            raise EdgeconvError(
                f"{p}: no edgeconv metadata (preprocessing); export it with `edgeconv export` or pass the checkpoint"
            )
        return meta
    raise EdgeconvError(f"{p}: expected a checkpoint (.pt) or an ONNX model (.onnx), got {p.suffix or 'no suffix'}")


def inputs_for(req: QuantizeRequest, pre: dict, classes: list[str] | None = None):
    """(calibration set or None, evaluation samples or None) for a request, loaded before any conversion."""
    calib = None
    if req.precision == "int8":
        calib = load_calibration(pre, req.calib, req.data, req.calib_limit, req.calib_seed)
    ev = load_evaluation(pre, req.eval_data, classes=classes)
    if req.max_drop is not None and ev is None:
        raise EdgeconvError("--max-drop needs labelled evaluation data: pass --eval digits|imagefolder:PATH|npz:PATH")
    return calib, ev


def base_record(req: QuantizeRequest, meta: dict, calib: CalibrationSet | None, ev) -> dict:
    """The metadata every quantized artifact carries (completed by the backend with accuracy and sizes)."""
    from edgeconv.artifacts import file_sha256

    rec: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "backend": req.backend,
        "precision": req.precision,
        "source": {
            "path": str(Path(req.model).resolve()),
            "sha256": file_sha256(req.model),
            "family": meta.get("family"),
            "variant": meta.get("variant"),
        },
        "calibration": calib.record() if calib else None,
        "method": req.method if req.precision == "int8" else None,
        "per_channel": (req.per_channel is not False) if req.precision == "int8" else None,
        "target": None,
        "accuracy": None,
        "cpu": cpu_record(),
        "command": req.command,
        "edgeconv_version": __version__,
    }
    if ev is not None:
        rec["accuracy"] = {"data": ev.source, "n": len(ev)}
    return rec


def accuracy_runtime(rec: dict, runtime: str) -> None:
    """Say in the record where the accuracy was measured: which runtime and session, on which CPU class."""
    if rec.get("accuracy") is not None:
        cpu = rec["cpu"]
        rec["accuracy"]["runtime"] = f"{runtime} on {cpu['model']} ({cpu['int8']})"


def accuracy_record(rec: dict, float_top1: float | None, q_top1: float | None) -> None:
    if rec.get("accuracy") is None or float_top1 is None or q_top1 is None:
        return
    rec["accuracy"].update(
        {
            "float_top1": round(float_top1, 4),
            "quantized_top1": round(q_top1, 4),
            "drop": round(float_top1 - q_top1, 4),
            "note": TOP1_TOLERANCE_NOTE,
        }
    )


def size_record(rec: dict, float_bytes: int | None, out_bytes: int) -> None:
    rec["size_bytes"] = {
        "float": float_bytes,
        "quantized": out_bytes,
        "ratio": round(out_bytes / float_bytes, 4) if float_bytes else None,
    }


@contextlib.contextmanager
def quiet(*, stderr: bool = False) -> Iterator[None]:
    """Silence the quantizers' and converters' own chatter; the command shows its own progress and results.

    Always: root logging below ERROR (onnxruntime's quantizer logs advice at WARNING for every call) and stdout
    (histogram calibrators print progress lines). With `stderr`: also stderr and warnings (the TFLite converters
    print progress and tqdm bars there).
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            if stderr:
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            yield
    finally:
        root.setLevel(level)
