"""Per-layer INT8 sensitivity of an onnxruntime Q/DQ file: where it departs from its float model, layer by layer.

Built on onnxruntime's own debugging tools (`onnxruntime.quantization.qdq_loss_debug`): every quantized activation of
the float and the INT8 graph is exposed as an output (`modify_model_output_intermediate_tensors`), both run on the
same calibration samples (`collect_activations`), and the tensors are paired by name (`create_activation_matching`;
weights with `create_weight_matching`). For each pair:

- `SQNR dB` / `cosine`: the INT8 graph's tensor against the float graph's (signal over quantization noise,
  20 log10(|float| / |float - int8|), and the cosine of the flattened tensors) - the error accumulated up to here;
- `own SQNR dB` (activations): the tensor before and after its own quantize/dequantize pair inside the INT8 graph -
  the rounding and clipping of this tensor alone, so a layer that is bad by itself stands apart from one that only
  inherits the error of the layers before it;
- weights: the float weight against its dequantized INT8 copy (biases, int32, are listed apart as `bias`).

Top-level graph only: tensors inside `If` branches are not exposed by onnxruntime's tools (the report says how many
`If` nodes it did not look into). Rows come worst first; `write_report` adds JSON and a PNG in graph order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeconv.artifacts.io import atomic_path, atomic_write_json

REPORT_SAMPLES = 32  # calibration samples the report runs (each tensor of each sample is held in memory)


def _sqnr(ref: np.ndarray, other: np.ndarray) -> float:
    eps = np.finfo(np.float32).eps
    return float(20 * np.log10(max(np.linalg.norm(ref), eps) / max(np.linalg.norm(ref - other), eps)))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _flat(tensors) -> np.ndarray:
    return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])


def _producers(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    return {o: (n.op_type, n.name) for n in model.graph.node for o in n.output}


def _consumers(model: onnx.ModelProto) -> dict[str, tuple[str, str, int]]:
    out: dict[str, tuple[str, str, int]] = {}
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            out.setdefault(i, (n.op_type, n.name, k))
    return out


def int8_errors(float_model: onnx.ModelProto, int8_model: onnx.ModelProto, x: np.ndarray) -> dict:
    """Per-tensor INT8 error of `int8_model` against `float_model` on the inputs `x` (N, ...): rows worst first."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    from edgeconv.quantize.calibration import as_ort_reader

    x = np.asarray(x, np.float32)[:REPORT_SAMPLES]
    name = float_model.graph.input[0].name
    feeds = [{name: x[i : i + 1]} for i in range(len(x))]
    with tempfile.TemporaryDirectory(prefix="edgeconv-int8-report-") as tmp:
        paths = {}
        for tag, m in (("float", float_model), ("int8", int8_model)):
            src, aug = Path(tmp) / f"{tag}.onnx", Path(tmp) / f"{tag}.aug.onnx"
            onnx.save_model(m, str(src))
            modify_model_output_intermediate_tensors(str(src), str(aug))
            paths[tag] = (src, aug)
        acts_f = collect_activations(str(paths["float"][1]), as_ort_reader(feeds))
        acts_q = collect_activations(str(paths["int8"][1]), as_ort_reader(feeds))
        weights = create_weight_matching(str(paths["float"][0]), str(paths["int8"][0]))
    matched = create_activation_matching(acts_q, acts_f)
    made_by, read_by = _producers(float_model), _consumers(float_model)
    order = {o: i for i, n in enumerate(float_model.graph.node) for o in n.output}
    order.update({i: k for k, n in enumerate(float_model.graph.node) for i in n.input if i not in order})
    rows = []
    for tensor, m in matched.items():
        if not m.get("float") or not m.get("pre_qdq") or not m.get("post_qdq"):
            continue
        f, q, pre = _flat(m["float"]), _flat(m["post_qdq"]), _flat(m["pre_qdq"])
        if f.shape != q.shape:
            continue
        op, node = made_by.get(tensor) or ("input", tensor)
        rows.append({
            "tensor": tensor, "kind": "activation", "op": op, "node": node,
            "sqnr_db": round(_sqnr(f, q), 2), "cosine": round(_cosine(f, q), 5),
            "own_sqnr_db": round(_sqnr(pre, q), 2), "order": order.get(tensor, 10**9),
        })  # fmt: skip
    for tensor, m in weights.items():
        f, q = np.asarray(m["float"], np.float64).ravel(), np.asarray(m["dequantized"], np.float64).ravel()
        op, node, slot = read_by.get(tensor) or ("?", tensor, 1)
        rows.append({
            "tensor": tensor, "kind": "bias" if slot == 2 and op in ("Conv", "Gemm") else "weight", "op": op, "node": node,
            "sqnr_db": round(_sqnr(f, q), 2), "cosine": round(_cosine(f, q), 5),
            "own_sqnr_db": round(_sqnr(f, q), 2), "order": order.get(tensor, 10**9),
        })  # fmt: skip
    rows.sort(key=lambda r: r["sqnr_db"])
    ifs = sum(1 for n in int8_model.graph.node if n.op_type == "If")
    return {
        "samples": len(x),
        "rows": rows,
        "if_nodes_not_inspected": ifs,
        "method": "onnxruntime.quantization.qdq_loss_debug; SQNR = 20 log10(|float| / |float - int8|)",
    }


def top_rows(report: dict, k: int = 10) -> list[dict]:
    """The k worst activations and the k worst weights, as table rows."""
    out = []
    for kind in ("activation", "weight"):
        rows = [r for r in report["rows"] if r["kind"] == kind][:k]
        for r in rows:
            out.append({
                "kind": kind, "node": r["node"], "op": r["op"], "SQNR dB": r["sqnr_db"], "cosine": f"{r['cosine']:.4f}",
                "own SQNR dB": r["own_sqnr_db"] if kind == "activation" else "-",
            })  # fmt: skip
    return out


def write_report(report: dict, json_path: Path, png_path: Path | None = None, title: str = "") -> list[Path]:
    """The report as JSON, and a PNG of every tensor's SQNR in graph order (activations and weights)."""
    written = [atomic_write_json(json_path, report)]
    if png_path is None or not report["rows"]:
        return written
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=False)
    for ax, kind in zip(axes, ("activation", "weight")):
        rows = sorted((r for r in report["rows"] if r["kind"] == kind), key=lambda r: r["order"])
        if not rows:
            ax.set_visible(False)
            continue
        vals = [r["sqnr_db"] for r in rows]
        worst = sorted(vals)[: min(5, len(vals))]
        colors = ["#d62728" if v in worst else "#1f77b4" for v in vals]
        ax.bar(range(len(vals)), vals, color=colors)
        if kind == "activation":
            ax.plot(range(len(rows)), [r["own_sqnr_db"] for r in rows], "k.", ms=3, label="own quantization only")
            ax.legend(loc="upper right", fontsize=8)
        for i, r in enumerate(rows):
            if r["sqnr_db"] in worst:
                ax.annotate(r["node"][-28:], (i, r["sqnr_db"]), fontsize=6, rotation=90, va="bottom", ha="center")
        ax.set_ylabel(f"{kind} SQNR dB")
        ax.set_xlabel(f"{kind}s in graph order (red: the 5 worst)")
    fig.suptitle(title or f"INT8 vs float, per tensor ({report['samples']} calibration samples)", fontsize=10)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    written.append(png_path)
    return written
