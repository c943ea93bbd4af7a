"""The one way edgeconv opens an onnxruntime session (export checks, validate, quantize, bench, benchmarks).

`level` is the graph-optimisation level by name. FP16 graphs are opened at `extended` by their callers
(ORT_ENABLE_ALL crashed session creation on FP16 graphs on CPU). INT8 accuracy is measured at `all`, the level a
user's default session runs, except where a CPU-independent answer is wanted (`basic`: Q/DQ computed in float).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeconv.common.errors import EdgeconvError

LEVELS = ("disable", "basic", "extended", "all")


def session_options(level: str = "all", threads: int | None = None, sequential: bool = False):
    import onnxruntime as ort

    if level not in LEVELS:
        raise EdgeconvError(f"unknown onnxruntime optimisation level {level!r} ({', '.join(LEVELS)})")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if sequential:
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def session(
    model: Any,
    level: str = "all",
    threads: int | None = None,
    providers: list | None = None,
    disabled_optimizers: list[str] | None = None,
    options=None,
):
    """An InferenceSession on a ModelProto, serialized bytes or a path (CPU unless `providers` says otherwise)."""
    import onnx
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        src: Any = model.SerializeToString()
    elif isinstance(model, bytes):
        src = model
    else:
        src = str(Path(model))
    so = options if options is not None else session_options(level, threads)
    kwargs = {"disabled_optimizers": disabled_optimizers} if disabled_optimizers else {}
    return ort.InferenceSession(src, so, providers=providers or ["CPUExecutionProvider"], **kwargs)
