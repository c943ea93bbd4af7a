"""`edgeconv info model.onnx`: inputs/outputs, opset, operator inventory, `If` count, size and edgeconv metadata."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from edgeconv.artifacts import file_sha256, short_hash
from edgeconv.artifacts.card import decode_props, load_onnx_proto
from edgeconv.artifacts.describe import register_describer
from edgeconv.artifacts.formats import FORMATS
from edgeconv.artifacts.graphwalk import nodes


def value_shape(vi) -> str:
    t = vi.type.tensor_type
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in t.shape.dim]
    import onnx

    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
    return f"{dtype} ({', '.join(dims)})"  # parentheses: square brackets would read as rich markup


def operator_inventory(graph, counter: Counter | None = None) -> Counter:
    """Operator counts over the graph and every subgraph (`If` branches, loops)."""
    counter = Counter() if counter is None else counter
    for node in nodes(graph):
        counter[f"{node.domain + '.' if node.domain and node.domain != 'ai.onnx' else ''}{node.op_type}"] += 1
    return counter


def initializer_bytes(graph) -> int:
    total = sum(len(t.raw_data) or _typed_len(t) for t in graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                total += initializer_bytes(attr.g)
    return total


def _typed_len(t) -> int:
    return 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data))


@register_describer(*FORMATS["onnx"].suffixes)
def describe_onnx(path: Path) -> dict:
    from edgeconv.export.onnx import count_if_nodes

    proto = load_onnx_proto(path)
    meta = decode_props(proto)
    ops = operator_inventory(proto.graph)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in proto.opset_import)
    desc = {
        "artifact": {
            "path": str(path),
            "type": "ONNX model",
            "sha256": short_hash(file_sha256(path)),
            "size": f"{path.stat().st_size / 1024:.1f} KiB",
            "weights": f"{initializer_bytes(proto.graph) / 1024:.1f} KiB",
            "producer": f"{proto.producer_name} {proto.producer_version}".strip() or "-",
            "ir version": proto.ir_version,
            "opset": opsets,
        },
        "graph": {
            **{f"input {i.name}": value_shape(i) for i in proto.graph.input},
            **{f"output {o.name}": value_shape(o) for o in proto.graph.output},
            "nodes (top level)": len(proto.graph.node),
            "If nodes": count_if_nodes(proto),
            "operators": ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])),
        },
    }
    if meta:
        shown = {}
        for k, v in meta.items():
            if k == "provenance" and isinstance(v, dict):
                v = v.get("command", json.dumps(v))
            shown[k] = v if isinstance(v, str) else json.dumps(v)
        desc["edgeconv metadata"] = shown
    else:
        desc["edgeconv metadata"] = {"note": "none (not written by edgeconv export)"}
    return desc
