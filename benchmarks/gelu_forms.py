"""GELU between quantized layers in onnxruntime: the exact (erf) and tanh forms side by side, in one run on this CPU.

Each row times one small graph on an activation shape of hvt-small at 224x224, batch 16 (the stem's 48 x 112 x 112
output and a conv stage's 144 x 28 x 28 expansion): the float `Gelu` alone, and the chain an INT8 graph runs between
two quantized layers (uint8 -> DequantizeLinear -> Gelu -> QuantizeLinear -> uint8), each with `approximate` none
and tanh. One thread, ORT_ENABLE_ALL, the graphs interleaved in a shuffled order per repetition; the ratio is the
median over repetitions of tanh / erf within a repetition, with its 95% bootstrap interval.

    python benchmarks/gelu_forms.py --reps 30
"""

from __future__ import annotations

import argparse

import numpy as np
from onnx import TensorProto, helper


def graph(shape: list[int], approximate: str, chain: bool):
    c = lambda name, v, t: helper.make_tensor(name, t, [], [v])  # noqa: E731
    gelu = helper.make_node("Gelu", ["a" if chain else "x"], ["b" if chain else "y"], approximate=approximate)
    if chain:
        nodes = [
            helper.make_node("DequantizeLinear", ["x", "si", "zi"], ["a"]),
            gelu,
            helper.make_node("QuantizeLinear", ["b", "so", "zo"], ["y"]),
        ]
        inits = [
            c("si", 0.0283, TensorProto.FLOAT),
            c("zi", 128, TensorProto.UINT8),
            c("so", 0.0147, TensorProto.FLOAT),
            c("zo", 12, TensorProto.UINT8),
        ]
        io = TensorProto.UINT8
    else:
        nodes, inits, io = [gelu], [], TensorProto.FLOAT
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", io, shape)], [helper.make_tensor_value_info("y", io, shape)], inits
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def main() -> None:
    from edgeconv.common.console import console, rows_table
    from edgeconv.common.stats import interleaved_times, paired_ratio
    from edgeconv.runtime.hostcpu import cpu_record
    from edgeconv.runtime.onnxrt import session

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30, help="interleaved repetitions")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for label, shape in (("stem 48x112x112", [16, 48, 112, 112]), ("stage 144x28x28", [16, 144, 28, 28])):
        for chain in (False, True):
            x = rng.integers(0, 256, shape).astype(np.uint8) if chain else rng.standard_normal(shape).astype(np.float32)
            calls = []
            for approximate in ("none", "tanh"):
                s = session(graph(shape, approximate, chain), level="all", threads=1)
                calls.append(lambda s=s: s.run(None, {"x": x}))
            erf_t, tanh_t = interleaved_times(calls, seconds=0, min_runs=args.reps)
            r = paired_ratio(tanh_t, erf_t)
            n = int(np.prod(shape))
            rows.append(
                {
                    "activation (batch 16)": label,
                    "graph": "DQ -> Gelu -> Q (uint8)" if chain else "Gelu (float)",
                    "erf ms": round(float(np.median(erf_t)), 2),
                    "tanh ms": round(float(np.median(tanh_t)), 2),
                    "erf ns/value": round(float(np.median(erf_t)) * 1e6 / n, 3),
                    "tanh ns/value": round(float(np.median(tanh_t)) * 1e6 / n, 3),
                    "tanh / erf [95% CI]": f"{r['ratio']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                }
            )
    cpu = cpu_record()
    console.print(rows_table(rows, title=f"GELU forms in onnxruntime on {cpu['model']}, INT8 class {cpu['int8']}"))


if __name__ == "__main__":
    main()
