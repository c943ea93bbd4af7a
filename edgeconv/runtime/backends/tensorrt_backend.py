"""TensorRT, imported only when a TensorRT row runs: serialized engines (.engine/.plan, e.g. from
`edgeconv quantize --backend tensorrt`), or an engine built in memory from an ONNX file.

The engine building and the cuda-python runner are the quantize stage's (`edgeconv.quantize.tensorrt`): one
implementation of the TensorRT 10/11 API in the project. Networks are strongly typed where TensorRT supports it, so
the precision is the ONNX's own (float -> FP32 engine, Q/DQ -> INT8, an FP16 ONNX -> FP16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeconv.formats import is_format
from edgeconv.errors import EdgeconvError
from edgeconv.runtime.backends.base import BackendUnavailable, RunOptions

OPT_BATCH, MAX_BATCH = 8, 64  # optimisation profile for ONNX files with a dynamic batch


def _engine_profile(trt, engine_bytes: bytes):
    """The batch profile stored in a serialized engine (profile 0 of its input)."""
    from edgeconv.quantize.tensorrt import Profile

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EdgeconvError("TensorRT could not deserialize the engine (built for another GPU or TensorRT version?)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    shape = tuple(engine.get_tensor_shape(name))
    if shape[0] == -1:
        mn, opt, mx = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
        return Profile(name, tuple(int(d) for d in shape[1:]), int(mn[0]), int(opt[0]), int(mx[0]))
    return Profile(name, tuple(int(d) for d in shape[1:]), int(shape[0]), int(shape[0]), int(shape[0]))


class TensorrtRunner:
    def __init__(self, path: Path, options: RunOptions):
        if options.device == "cpu":
            raise BackendUnavailable("TensorRT runs on NVIDIA GPUs only (asked for device cpu)")
        from edgeconv.quantize import tensorrt as qt

        try:
            trt = qt.require_tensorrt()
            qt.require_gpu()
        except EdgeconvError as e:  # not installed / no GPU: this row cannot run here
            raise BackendUnavailable(str(e).split("; or write")[0]) from None  # the rest is quantize's advice
        self.trt = trt
        if is_format(path, "onnx"):
            from edgeconv.card import load_onnx_proto, onnx_precision

            model = load_onnx_proto(path)
            self.precision = onnx_precision(model)
            self.profile = qt.profile_for(model, 1, OPT_BATCH, MAX_BATCH)
            blob = qt.build_engine(model.SerializeToString(), self.profile, self.precision)
        else:
            blob = path.read_bytes()
            self.profile = _engine_profile(trt, blob)
            self.precision = "engine"
        self.runner = qt.TensorRTRunner(blob, self.profile)

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
