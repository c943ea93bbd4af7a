"""GELU in an onnxruntime INT8 graph: the tanh form wherever its output is quantized again.

Between two quantized layers a GELU runs in float: DequantizeLinear -> Gelu -> QuantizeLinear, on the largest
activations of a conv stage. onnxruntime's exact GELU evaluates erf, and on x86 CPUs its tanh form (`Gelu` with
`approximate="tanh"`, fused with a bias into `FastGelu`) runs in about two thirds of the time (measured in
docs/quantization.md). The two differ by at most 4.7e-4 (at |x| = 2.7), far below one step of the 8-bit code the
result is quantized to; so where every consumer of a GELU is a QuantizeLinear, the INT8 graph uses the tanh form.

That it cannot change a code by more than one is checked per layer, not assumed: over every value the GELU can see
(the 256 codes of the DequantizeLinear in front of it, else a dense grid up to where the output code saturates),
the largest difference of the two forms must be under half the output's quantization step. A layer that fails
keeps the exact form. Where the input is a dequantized code, the codes that change are counted exactly.
TensorRT files are left alone (TensorRT fuses GELU on the GPU itself).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from edgeconv.artifacts.graphwalk import subgraph_attrs
from edgeconv.quantize.onnx_graph import free_variables

MAX_DEVIATION = 0.5  # of the output quantization step: codes then move by at most one
_ERF = np.frompyfunc(math.erf, 1, 1)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _quantize(x: np.ndarray, scale: float, zero: int, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.round(x / scale) + zero, lo, hi)  # np.round: half to even, as QuantizeLinear


def _scalar(t: onnx.TensorProto | None) -> tuple[float | int, int] | None:
    """(value, onnx dtype) of a one-element tensor, else None."""
    if t is None:
        return None
    a = numpy_helper.to_array(t)
    return (a.reshape(-1)[0].item(), t.data_type) if a.size == 1 else None


_RANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


def _qparams(node, inits: dict) -> tuple[float, int, int, int] | None:
    """(scale, zero point, code min, code max) of a per-tensor Q/DQ node with constant parameters."""
    # the zero point must be explicit: without it the code type comes from elsewhere (the tensor, `output_dtype`)
    s = _scalar(inits.get(node.input[1]))
    z = _scalar(inits.get(node.input[2])) if len(node.input) > 2 and node.input[2] else None
    if s is None or z is None or z[1] not in _RANGE or s[0] <= 0:
        return None
    return float(s[0]), int(z[0]), *_RANGE[z[1]]


def check_layer(inputs: np.ndarray, out_q: tuple[float, int, int, int], dequantized: bool) -> dict:
    """How far the tanh form is from the exact GELU on `inputs`, in steps of the output quantization."""
    scale, zero, lo, hi = out_q
    exact, approx = gelu_erf(inputs), gelu_tanh(inputs)
    # where both forms fall outside the codes' range they saturate to the same code: no difference counts there
    seen = (np.maximum(exact, approx) >= scale * (lo - zero)) & (np.minimum(exact, approx) <= scale * (hi - zero))
    dev = float(np.abs(exact - approx)[seen].max()) if seen.any() else 0.0
    rec = {"max_deviation_steps": round(dev / scale, 4)}
    if dequantized:
        moved = _quantize(exact, *out_q) != _quantize(approx, *out_q)
        rec["codes_changed"] = f"{int(moved.sum())} of {len(inputs)}"
    return rec


def _candidate_inputs(node, producers: dict, inits: dict, out_q) -> tuple[np.ndarray, bool]:
    dq = producers.get(node.input[0])
    q_in = _qparams(dq, inits) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q_in is not None:
        s, z, lo, hi = q_in
        return s * (np.arange(lo, hi + 1, dtype=np.float64) - z), True
    scale, zero, _, hi = out_q
    top = scale * (hi - zero) + 1.0  # above it both forms saturate the top code (GELU(x) ~ x there)
    return np.linspace(-12.0, max(top, 1.0), 1 << 16), False  # GELU(-12) ~ -2e-32: both give the zero code


# ops that hand values on unchanged (a routed model's select branch reshapes and transposes a GELU's output first)
MOVES = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Concat", "Slice", "Split"})


def _requantizers(value: str, consumers: dict, outputs: set[str]) -> list | None:
    """The QuantizeLinear nodes `value` reaches through value-preserving ops, or None when any path reaches
    something else (a float op, a graph output)."""
    found, todo, seen = [], [value], set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        users = consumers.get(v, [])
        if v in outputs or not users:
            return None
        for u in users:
            if u.op_type == "QuantizeLinear" and u.input[0] == v:
                found.append(u)
            elif u.op_type in MOVES and u.input[0] == v:
                todo.extend(u.output)
            else:
                return None
    return found


def is_exact_gelu(node) -> bool:
    if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx", "com.microsoft"):
        return False
    approx = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
    return approx == "none"


def tanh_where_requantized(model: onnx.ModelProto) -> dict:
    """Rewrite in place every exact GELU (any graph, `If` branches included) whose output reaches only per-tensor
    QuantizeLinear nodes (directly or through ops that move values unchanged) into the tanh form, when
    `check_layer` keeps it under half an output step for every one of those nodes. Returns the record: how many
    were rewritten, kept exact (and why), and each rewritten layer's check (its worst consumer)."""
    layers: dict[str, dict] = {}
    kept: dict[str, str] = {}
    _rewrite(model.graph, "", {}, layers, kept)
    return {
        "form": "tanh where re-quantized" if layers else ("exact (erf)" if kept else "no GELU"),
        "tanh": len(layers),
        "exact": kept,
        "rule": f"tanh form only where it stays under {MAX_DEVIATION} of every output quantization step",
        "layers": layers,
    }


def _rewrite(g: onnx.GraphProto, path: str, outer: dict, layers: dict, kept: dict) -> None:
    inits = {**outer, **{t.name: t for t in g.initializer}}  # names resolve innermost first
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        reads = list(n.input)
        for _, sub in subgraph_attrs(n):  # a branch reads outer values without naming them as inputs
            reads += free_variables(sub)
        for i in reads:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    for node in list(g.node):
        if is_exact_gelu(node):
            name = f"{path}/{node.name}" if path else node.name
            users = _requantizers(node.output[0], consumers, outputs)
            qs = [_qparams(u, inits) for u in users or []]
            if not users or any(q is None for q in qs):
                kept[name] = "its output is not only quantized again (per tensor)"
                continue
            recs = []
            for out_q in dict.fromkeys(qs):  # every consumer's grid: one may see values another saturates
                x, dequantized = _candidate_inputs(node, producers, inits, out_q)
                recs.append(check_layer(x, out_q, dequantized))
            rec = max(recs, key=lambda r: r["max_deviation_steps"])
            if rec["max_deviation_steps"] >= MAX_DEVIATION:
                kept[name] = f"tanh form {rec['max_deviation_steps']} of an output step away"
                continue
            _to_tanh(node)
            layers[name] = rec
    for node in g.node:
        for attr, sub in subgraph_attrs(node):
            sub_path = f"{node.name or node.op_type}.{attr}"
            _rewrite(sub, f"{path}/{sub_path}" if path else sub_path, inits, layers, kept)


def summary(rec: dict) -> str:
    """One line on a `tanh_where_requantized` record (the quantize notes and `info`)."""
    worst = max((v.get("max_deviation_steps", 0) for v in (rec.get("layers") or {}).values()), default=0)
    exact = f"; {len(rec['exact'])} kept exact" if rec.get("exact") else ""
    return f"tanh form in {rec['tanh']} re-quantized GELU(s), at most {worst:.3f} of an output step from erf{exact}"


def _to_tanh(node) -> None:
    if node.domain == "com.microsoft":  # contrib Gelu (exact) -> FastGelu (tanh form, same input and domain)
        node.op_type = "FastGelu"
        return
    keep = [a for a in node.attribute if a.name != "approximate"]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.append(onnx.helper.make_attribute("approximate", "tanh"))
