"""TFLite through `ai_edge_litert` (the `tflite` extra), imported only when a .tflite row runs.

Inputs arrive as float32 NCHW; the runner transposes to NHWC when the model's input is NHWC, and quantises /
dequantises when the model's input or output tensor is integer (scale and zero point from the tensor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeconv.errors import EdgeconvError
from edgeconv.runtime.backends.base import BackendUnavailable, RunOptions


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise BackendUnavailable(
            f"ai_edge_litert is not installed ({e.name or e}); pip install 'edgeconv[tflite]' (or just ai-edge-litert)"
        )
    return Interpreter


def tflite_precision(details: list[dict]) -> str:
    """int8 when integer tensors carry quantisation parameters, fp16 when half-precision tensors exist."""
    dtypes = {np.dtype(d["dtype"]) for d in details}
    quantised = any(
        np.dtype(d["dtype"]) in (np.dtype(np.int8), np.dtype(np.uint8)) and d.get("quantization", (0.0, 0))[0] != 0.0
        for d in details
    )
    if quantised:
        return "int8"
    if np.dtype(np.float16) in dtypes:
        return "fp16"
    return "fp32"


class TfliteRunner:
    def __init__(self, path: Path, options: RunOptions):
        Interpreter = _interpreter_class()
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=options.threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise EdgeconvError(f"{path}: ai_edge_litert could not load the model ({str(e).splitlines()[0][:200]})")
        self.threads = options.threads
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.precision = tflite_precision(self.interp.get_tensor_details())
        self.batch = int(self.inp["shape"][0])

    def _layout(self, x: np.ndarray) -> np.ndarray:
        want = tuple(int(d) for d in self.inp["shape"][1:])
        if tuple(x.shape[1:]) == want:
            return x
        nhwc = x.transpose(0, 2, 3, 1)
        if tuple(nhwc.shape[1:]) == want:
            return np.ascontiguousarray(nhwc)
        raise EdgeconvError(f"input {list(x.shape)} does not fit the TFLite model's input {list(self.inp['shape'])}")

    def _resize(self, batch: int) -> None:
        if batch == self.batch:
            return
        sig = self.inp.get("shape_signature")
        if sig is None or len(sig) == 0 or int(sig[0]) != -1:
            # a graph converted at a fixed batch may hard-code it in reshapes: resizing could fail or, worse,
            # run with wrong shapes, so other batch sizes are not offered
            raise BackendUnavailable(f"the TFLite model was converted with a fixed batch of {self.batch}")
        shape = [batch, *[int(d) for d in self.inp["shape"][1:]]]
        try:
            self.interp.resize_tensor_input(self.inp["index"], shape, strict=False)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendUnavailable(
                f"the TFLite model has a fixed batch of {self.batch} "
                f"and cannot be resized to {batch} ({str(e).splitlines()[0][:120]})"
            )
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.batch = batch

    def run(self, x: np.ndarray) -> np.ndarray:
        self._resize(x.shape[0])
        x = self._layout(x)
        dt = np.dtype(self.inp["dtype"])
        if dt != np.float32:
            scale, zp = self.inp["quantization"]
            info = np.iinfo(dt)
            x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(dt)
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        if np.dtype(self.out["dtype"]) != np.float32:
            scale, zp = self.out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y

    def describe(self) -> dict:
        import ai_edge_litert

        return {
            "backend": "tflite",
            "runtime": f"ai_edge_litert {getattr(ai_edge_litert, '__version__', '?')}",
            "precision": self.precision,
            "threads": self.threads,
            "input": f"{self.inp['name']} {list(self.inp['shape'])} {np.dtype(self.inp['dtype']).name}",
        }


class TfliteBackend:
    name = "tflite"
    accepts = ("tflite",)

    def load(self, path: Path, options: RunOptions) -> TfliteRunner:
        return TfliteRunner(path, options)


BACKEND = TfliteBackend()
