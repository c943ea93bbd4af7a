"""Can this INT8 graph saturate onnxruntime's uint8 x int8 kernels? A property of the file, checked on any machine.

On x86-64 with AVX2 or AVX-512 but without VNNI, onnxruntime's U8S8 integer kernels multiply with VPMADDUBSW: it
multiplies uint8 activations by int8 weights and adds *adjacent pairs* of products into int16 with saturation
(onnxruntime's quantization docs). A pair overflows when a*w0 + a'*w1 leaves [-32768, 32767]; with activations up
to 255 that needs |w0| + |w1| > 128. Symmetric int8 activations do not escape it: onnxruntime shifts int8
activation Q/DQ to uint8 on x86 (QDQS8ToU8Transformer) and runs the same kernels.

`check_model` walks every Conv, ConvTranspose, MatMul and Gemm whose weight is an int8 constant behind a
DequantizeLinear and whose data input is quantized too - top level and inside every `If` branch - and bounds the
worst pair of each output channel: 255 * (the two largest |w| of that channel). Which two weights the kernel pairs
is a detail of its packing, so the bound takes the worst two; a layer under it cannot saturate whatever the
packing. `emulate_u8s8` reproduces the kernel's arithmetic in numpy (pairwise int16 saturation, then int32 sums)
so a test can show what saturation does to one real layer without an AVX2 machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgeconv.artifacts.graphwalk import graphs

INT16_MAX = 32767
U8_MAX = 255
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class IntegerLayer:
    """One layer that onnxruntime runs as an integer kernel: its int8 weight as [outputs, reduction]."""

    graph: str  # "" for the top level, else the If branch path
    node: str
    op: str
    weight: np.ndarray  # int8, [out_channels, reduction]

    @property
    def worst_pair(self) -> int:
        """255 * the largest |w0| + |w1| within one output channel: the largest pair sum any packing can form."""
        w = np.abs(self.weight.astype(np.int32))
        if w.shape[1] < 2:
            return int(U8_MAX * w.max(initial=0))
        top2 = -np.partition(-w, 1, axis=1)[:, :2]
        return int(U8_MAX * top2.sum(axis=1).max(initial=0))

    @property
    def max_abs_weight(self) -> int:
        return int(np.abs(self.weight.astype(np.int32)).max(initial=0))

    @property
    def saturates(self) -> bool:
        return self.worst_pair > INT16_MAX


@dataclass
class SaturationReport:
    layers: list[IntegerLayer] = field(default_factory=list)

    @property
    def unsafe(self) -> list[IntegerLayer]:
        return [layer for layer in self.layers if layer.saturates]

    @property
    def safe(self) -> bool:
        return not self.unsafe

    def summary(self) -> str:
        if not self.layers:
            return "no integer Conv/MatMul/Gemm layers"
        worst = max(self.layers, key=lambda layer: layer.worst_pair)
        where = f"{worst.graph}/{worst.node}" if worst.graph else worst.node
        if self.safe:
            return (
                f"{len(self.layers)} integer layers, worst uint8 x int8 pair sum {worst.worst_pair} <= {INT16_MAX}"
                f" (max |w| {max(layer.max_abs_weight for layer in self.layers)}): cannot saturate"
            )
        return (
            f"{len(self.unsafe)} of {len(self.layers)} integer layers can overflow int16 pair sums "
            f"(worst {worst.worst_pair} > {INT16_MAX} at {where}): exact only on VNNI/AMX x86 and ARM"
        )

    def record(self) -> dict:
        return {
            "integer_layers": len(self.layers),
            "unsafe_layers": len(self.unsafe),
            "worst_pair_sum": max((layer.worst_pair for layer in self.layers), default=0),
            "max_abs_weight": max((layer.max_abs_weight for layer in self.layers), default=0),
            "int16_limit": INT16_MAX,
            "safe_without_vnni": self.safe,
        }


def _as_rows(op: str, w: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """The weight as [outputs, reduction] (the dot products the kernel computes)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if op == "Conv":  # [O, I/g, kh, kw]
        return w.reshape(w.shape[0], -1)
    if op == "ConvTranspose":  # [I, O/g, kh, kw]: each output sums over I and the kernel
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    if op == "Gemm" and attrs.get("transB", 0):  # B [N, K]
        return w.reshape(w.shape[0], -1)
    return w.reshape(-1, w.shape[-1]).T if w.ndim >= 2 else w.reshape(1, -1)  # MatMul / Gemm B [K, N]


def integer_layers(model: onnx.ModelProto) -> list[IntegerLayer]:
    """Every weight layer of `model` whose weight and data input are both quantized (`If` branches included)."""
    inits: dict[str, onnx.TensorProto] = {}
    for _, g in graphs(model.graph):
        inits.update({t.name: t for t in g.initializer})
    producers: dict[str, onnx.NodeProto] = {}
    for _, g in graphs(model.graph):
        for node in g.node:
            for out in node.output:
                producers[out] = node
    out = []
    for path, g in graphs(model.graph):
        for node in g.node:
            if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
                continue
            data, weight = (producers.get(node.input[0]), producers.get(node.input[1]))
            if data is None or weight is None or {data.op_type, weight.op_type} != {"DequantizeLinear"}:
                continue
            w = inits.get(weight.input[0])
            if w is None:
                continue  # activation x activation MatMul: both sides are data (onnxruntime runs it U8U8)
            arr = numpy_helper.to_array(w)
            if arr.dtype != np.int8:
                continue  # uint8 weights run in U8U8 kernels, which widen to int16 before multiplying
            out.append(IntegerLayer(path, node.name, node.op_type, _as_rows(node.op_type, arr, node)))
    return out


def check_model(model: onnx.ModelProto) -> SaturationReport:
    return SaturationReport(integer_layers(model))


# ----------------------------------------------------------------------------------------------- emulation
def emulate_u8s8(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a [M, K] uint8 x w [N, K] int8 -> int32 [M, N] as a VPMADDUBSW kernel computes it: adjacent products summed
    in pairs and saturated to int16, the pair sums then added in int32 (VPMADDWD with ones)."""
    a = a.astype(np.int32)
    w = w.astype(np.int32)
    k = a.shape[1]
    if k % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        w = np.pad(w, ((0, 0), (0, 1)))
    prod = a[:, None, :] * w[None, :, :]  # [M, N, K]
    pairs = prod[..., 0::2] + prod[..., 1::2]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(axis=-1).astype(np.int32)


def exact_u8s8(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    return a.astype(np.int32) @ w.astype(np.int32).T
