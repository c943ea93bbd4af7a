"""TFLite through `ai_edge_litert` (the `tflite` extra), imported only when a .tflite row runs.

The interpreter, the NCHW -> NHWC layout and the integer input / output handling are `edgeconv.runtime.tflite`'s, the
runner quantize measures accuracy with; a row runs each batch in one invoke, resizing the input tensor when the
graph has a dynamic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeconv.common.errors import MissingDependencyError
from edgeconv.runtime.backends.base import BackendUnavailable, RunOptions
from edgeconv.runtime.tflite import BatchUnsupported, TFLiteRunner, litert_version


class TfliteRunner:
    """A .tflite for bench: one invoke per batch; a batch the graph cannot take makes the row unavailable."""

    def __init__(self, path: Path, options: RunOptions):
        try:
            self.runner = TFLiteRunner(path, threads=options.threads)
        except MissingDependencyError as e:
            raise BackendUnavailable(str(e)) from None
        self.threads = options.threads
        self.precision = self.runner.precision

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.runner.run(x)
        except BatchUnsupported as e:
            raise BackendUnavailable(str(e)) from None

    def describe(self) -> dict:
        inp = self.runner.inp
        return {
            "backend": "tflite",
            "runtime": litert_version(),
            "precision": self.precision,
            "threads": self.threads,
            "input": f"{inp['name']} {list(inp['shape'])} {np.dtype(inp['dtype']).name}",
        }


class TfliteBackend:
    name = "tflite"
    accepts = ("tflite",)

    def load(self, path: Path, options: RunOptions) -> TfliteRunner:
        return TfliteRunner(path, options)


BACKEND = TfliteBackend()
