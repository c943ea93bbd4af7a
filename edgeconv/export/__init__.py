"""Export: PyTorch -> ONNX (routing as `If`), the `.onnx` describer for `info`, and `validate`'s checks."""

from edgeconv.artifacts.card import read_metadata
from edgeconv.export.onnx import ROUTINGS, ExportResult, count_if_nodes, export_onnx

__all__ = ["ROUTINGS", "ExportResult", "count_if_nodes", "export_onnx", "read_metadata"]
