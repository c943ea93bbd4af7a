"""onnxruntime INT8 options (`Int8Options`, resolved from a target) and the session helpers every onnxruntime
quantization step shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeconv.common.errors import EdgeconvError
from edgeconv.quantize import GELU_FORMS, METHODS, OP_POLICIES

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# ----------------------------------------------------------------------------------------------- options
@dataclass
class Int8Options:
    """How to quantize: calibration method, per-channel weights, symmetric activations, which ops."""

    method: str = "minmax"
    per_channel: bool = True
    symmetric: bool = False  # symmetric INT8 activations (zero point 0), as TensorRT requires
    ops: str = "auto"
    percentile: float = 99.999
    reduce_range: bool = True  # 7-bit weights (|w| <= 64): exact on every CPU (quantize/targets.py)
    gelu: str = "tanh"  # re-quantized GELUs in their tanh form (quantize/gelu.py) | "exact"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgeconvError(f"unknown calibration method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.ops not in OP_POLICIES:
            raise EdgeconvError(f"unknown op selection {self.ops!r}; choose one of: {', '.join(OP_POLICIES)}")
        if self.gelu not in GELU_FORMS:
            raise EdgeconvError(f"unknown GELU form {self.gelu!r}; choose one of: {', '.join(GELU_FORMS)}")

    def ort_kwargs(self) -> dict:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.method]
        extra = {
            "ActivationSymmetric": self.symmetric,
            "WeightSymmetric": True,
            "CalibPercentile": self.percentile,
            # TensorRT's explicit quantization takes float biases (it fuses the scales itself); INT32 bias
            # Q/DQ is for onnxruntime's integer kernels.
            "QuantizeBias": not self.symmetric,
        }
        if not self.symmetric:
            # A weight MatMul's output stays float unless its consumer is quantized: onnxruntime then runs
            # DequantizeLinear x2 -> MatMul as one MatMulIntegerToFloat (the same integer GEMM, scaled to float in the
            # kernel) instead of QLinearMatMul -> DequantizeLinear before the float bias Add. One QuantizeLinear and one
            # DequantizeLinear fewer per linear layer; hvt-small at 224, batch 16: 0.97x of the time (VNNI).
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
        return {
            "quant_format": QuantFormat.QDQ,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "activation_type": QuantType.QInt8 if self.symmetric else QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
            "calibrate_method": method,
            "extra_options": extra,
        }

    def record(self) -> dict:
        return {
            "method": self.method,
            "per_channel": self.per_channel,
            "activations": "int8 symmetric" if self.symmetric else "uint8 asymmetric",
            "weights": "int8 symmetric, 7-bit (|w| <= 64)" if self.reduce_range else "int8 symmetric",
            "ops": self.ops,
            **({} if self.symmetric else {"matmul_outputs": "float (MatMulIntegerToFloat)"}),
        }

    @classmethod
    def for_target(
        cls, target, method: str = "minmax", per_channel: bool | None = None, ops: str = "auto", gelu: str = "tanh"
    ) -> "Int8Options":
        """Options that write an INT8 file for `target` (quantize/targets.py); `per_channel` None = on. TensorRT's
        graph keeps the exact GELU (TensorRT fuses it on the GPU)."""
        return cls(
            method=method,
            per_channel=True if target.per_channel or per_channel is None else per_channel,
            symmetric=target.symmetric_activations,
            ops="all" if target.symmetric_activations else ops,
            reduce_range=target.reduce_range,
            gelu="exact" if target.symmetric_activations else gelu,
        )


# ----------------------------------------------------------------------------------------------- sessions
def ort_session(model: onnx.ModelProto | str | Path, threads: int = 0, level: str = "all"):
    """An onnxruntime CPU session (level `all`, or `extended` where ORT_ENABLE_ALL is unsafe: FP16)."""
    from edgeconv.runtime.onnxrt import session

    return session(model, level=level, threads=threads or None)


def ort_logits(sess, x: np.ndarray, batch: int = 64) -> np.ndarray:
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i : i + batch].astype(np.float32)})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean() * 100.0)
