"""TensorRT, imported only when a TensorRT row runs: serialized engines (.engine/.plan, e.g. from
`edgeconv quantize --backend tensorrt`), or an engine built in memory from an ONNX file.

The engine building and the cuda-python runner are `edgeconv.runtime.tensorrt`'s, shared with the quantize stage: one
implementation of the TensorRT 10/11 API in the project. Networks are strongly typed where TensorRT supports it, so
the precision is the ONNX's own (float -> FP32 engine, Q/DQ -> INT8, an FP16 ONNX -> FP16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeconv.artifacts.formats import is_format
from edgeconv.common.errors import EdgeconvError
from edgeconv.runtime import tensorrt as trtengine
from edgeconv.runtime.backends.base import BackendUnavailable, RunOptions

OPT_BATCH, MAX_BATCH = 8, 64  # optimisation profile for ONNX files with a dynamic batch


class TensorrtRunner:
    def __init__(self, path: Path, options: RunOptions):
        if options.device == "cpu":
            raise BackendUnavailable("TensorRT runs on NVIDIA GPUs only (asked for device cpu)")
        try:
            trt = trtengine.require_engine_host()
        except EdgeconvError as e:  # not installed / no GPU: this row cannot run here
            raise BackendUnavailable(str(e).split("; or write")[0]) from None  # the rest is quantize's advice
        self.trt = trt
        if is_format(path, "onnx"):
            from edgeconv.artifacts.card import load_onnx_proto, onnx_precision

            model = load_onnx_proto(path)
            self.precision = onnx_precision(model)
            self.profile = trtengine.profile_for(model, 1, OPT_BATCH, MAX_BATCH)
            blob = trtengine.build_engine(model.SerializeToString(), self.profile, self.precision)
        else:
            blob = path.read_bytes()
            self.profile = trtengine.engine_profile(trt, blob)
            self.precision = "engine"
        self.runner = trtengine.TensorRTRunner(blob, self.profile)

    def run(self, x: np.ndarray) -> np.ndarray:
        if not self.profile.min_batch <= len(x) <= self.profile.max_batch:
            raise BackendUnavailable(
                f"the engine's batch profile is {self.profile.min_batch}..{self.profile.max_batch}, asked for {len(x)}"
            )
        return self.runner(x, batch=len(x))  # copies back and synchronises: the timer sees the finished work

    def describe(self) -> dict:
        return {
            "backend": "tensorrt",
            "runtime": f"TensorRT {self.trt.__version__}",
            "precision": self.precision,
            "profile": f"{self.profile.min_batch}/{self.profile.opt_batch}/{self.profile.max_batch}",
        }

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()


class TensorrtBackend:
    name = "tensorrt"
    accepts = ("tensorrt", "ort")  # engines, or ONNX built into an engine in memory

    def load(self, path: Path, options: RunOptions) -> TensorrtRunner:
        return TensorrtRunner(path, options)


BACKEND = TensorrtBackend()
