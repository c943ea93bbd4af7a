"""edgeconv: take hybrid convolution + attention vision models to edge devices.

Pipeline: train -> prune -> distill -> export (ONNX, routing as `If`) -> quantize -> validate / bench.
"""

__version__ = "0.1.0"
