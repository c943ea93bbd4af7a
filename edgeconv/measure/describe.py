"""`edgeconv info`: describe any artifact edgeconv writes.

Each stage registers the describer of its formats where the format is defined (`artifacts.describe`); this module,
above every stage, imports them all, so `describe` knows every suffix.
"""

from __future__ import annotations

import os

import edgeconv.export.onnx_info  # noqa: F401 - registers the .onnx describer
import edgeconv.models.checkpoint  # noqa: F401 - registers the .pt describer
import edgeconv.quantize.info  # noqa: F401 - registers .tflite / .engine and the quantization section of .onnx
from edgeconv.artifacts.describe import describe as _describe


def describe(path: str | os.PathLike) -> dict:
    """A dict of sections -> {key: value} describing any artifact edgeconv knows."""
    return _describe(path)
