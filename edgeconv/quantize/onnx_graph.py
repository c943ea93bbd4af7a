"""ONNX graph surgery for quantizing inside control flow.

onnxruntime's quantizer only sees a model's top-level nodes; the branches of an `If` are left in float without a
word. To quantize them, each branch is lifted out as a standalone model (its outer-scope references become graph
inputs, or initializers when they are constants), quantized on its own, and grafted back as the branch. These are
the pieces: scopes and free variables, lifting, renaming, grafting, and hoisting duplicate initializers.
"""

from __future__ import annotations

import copy
import hashlib

import onnx
from onnx import helper, numpy_helper

from edgeconv.artifacts.graphwalk import initializers, subgraph_attrs  # noqa: F401 - subgraph_attrs is used here and re-exported

SUBGRAPH_OPS = {"If", "Loop", "Scan"}


def defined_names(graph, recursive: bool = True) -> set[str]:
    """Names a graph defines: inputs, initializers, node outputs (and those of nested subgraphs)."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(o for o in node.output if o)
        if recursive:
            for _, g in subgraph_attrs(node):
                names |= defined_names(g)
    return names


def free_variables(graph) -> list[str]:
    """Names a (sub)graph reads from its enclosing scopes, in first-use order."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    out: dict[str, None] = {}
    for node in graph.node:
        for name in node.input:
            if name and name not in local:
                out[name] = None
        for _, g in subgraph_attrs(node):
            for name in free_variables(g):
                if name not in local:
                    out[name] = None
        local.update(o for o in node.output if o)
    for o in graph.output:
        if o.name not in local:
            out[o.name] = None
    return list(out)


def ensure_node_names(graph, prefix: str = "") -> None:
    """Give every node (nested ones too) a unique name: node names identify what is quantized."""
    seen: set[str] = set()

    def visit(g, path: str) -> None:
        for i, node in enumerate(g.node):
            if not node.name or node.name in seen:
                node.name = f"{path}{node.op_type}_{i}"
            seen.add(node.name)
            for attr_name, sub in subgraph_attrs(node):
                visit(sub, f"{node.name}.{attr_name}/")

    visit(graph, prefix)


def value_info_map(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Types of every value (nested graphs included) after ONNX shape inference; best effort."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a convenience: missing types are filled from data later
        inferred = model
    out: dict[str, onnx.ValueInfoProto] = {}

    def visit(g) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                out.setdefault(vi.name, vi)
        for node in g.node:
            for _, sub in subgraph_attrs(node):
                visit(sub)

    visit(inferred.graph)
    return out


def lift_branch(
    parent: onnx.ModelProto, branch: onnx.GraphProto, types: dict[str, onnx.ValueInfoProto], name: str
) -> tuple[onnx.ModelProto, list[str]]:
    """A standalone model computing `branch`: outer constants become initializers, other outer values inputs.

    Returns (model, input names); input names equal the outer-scope names, so grafting needs no rewiring.
    """
    inits = {t.name: t for t in parent.graph.initializer}
    free = free_variables(branch)
    inputs, extra_inits = [], []
    for v in free:
        if v in inits:
            extra_inits.append(copy.deepcopy(inits[v]))
        elif v in types:
            vi = copy.deepcopy(types[v])
            inputs.append(vi)
        else:
            inputs.append(helper.make_empty_tensor_value_info(v))
    g = helper.make_graph(
        [copy.deepcopy(n) for n in branch.node],
        name,
        inputs,
        [copy.deepcopy(o) for o in branch.output],
        initializer=[copy.deepcopy(t) for t in branch.initializer] + extra_inits,
        value_info=[copy.deepcopy(v) for v in branch.value_info],
    )
    m = helper.make_model(g, opset_imports=list(parent.opset_import), ir_version=parent.ir_version)
    return m, [i.name for i in inputs]


def rename_values(graph, mapping: dict[str, str]) -> None:
    """Rename values everywhere in `graph` and its subgraphs (names are SSA, so one map serves all scopes)."""
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name in mapping:
            vi.name = mapping[vi.name]
    for t in graph.initializer:
        if t.name in mapping:
            t.name = mapping[t.name]
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n in mapping:
                node.input[i] = mapping[n]
        for i, n in enumerate(node.output):
            if n in mapping:
                node.output[i] = mapping[n]
        for _, sub in subgraph_attrs(node):
            rename_values(sub, mapping)


def as_branch(model: onnx.ModelProto, outer: set[str], prefix: str) -> onnx.GraphProto:
    """Turn a lifted (and quantized) branch model back into an `If` branch.

    Its inputs were outer-scope values: they are dropped (the branch reads them from the enclosing graph). Every
    name the branch defines gets `prefix`, so nothing it adds (Q/DQ outputs, scales) shadows an outer name.
    """
    g = copy.deepcopy(model.graph)
    inputs = {i.name for i in g.input}
    mapping = {n: f"{prefix}{n}" for n in defined_names(g) if n not in inputs and n not in outer}
    # Outer constants were copied in as initializers; they are local copies now and get renamed as well.
    for t in g.initializer:
        mapping[t.name] = f"{prefix}{t.name}"
    rename_values(g, mapping)
    for node in g.node:
        node.name = f"{prefix}{node.name}"
        _prefix_nested_node_names(node, prefix)
    del g.input[:]
    return g


def _prefix_nested_node_names(node, prefix: str) -> None:
    for _, sub in subgraph_attrs(node):
        for n in sub.node:
            n.name = f"{prefix}{n.name}"
            _prefix_nested_node_names(n, prefix)


def find_node(graph, name: str):
    return next((n for n in graph.node if n.name == name), None)


def set_branch(node, attr_name: str, graph: onnx.GraphProto) -> None:
    for attr in node.attribute:
        if attr.name == attr_name and attr.type == onnx.AttributeProto.GRAPH:
            graph.name = attr.g.name or graph.name
            attr.g.CopyFrom(graph)
            return
    raise KeyError(f"node {node.name} has no graph attribute {attr_name}")


def undefined_references(graph, outer: set[str] | None = None) -> set[str]:
    """Names read somewhere that no enclosing scope defines (a broken graph)."""
    scope = set(outer or ()) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    missing: set[str] = set()
    for node in graph.node:
        missing.update(n for n in node.input if n and n not in scope)
        for _, sub in subgraph_attrs(node):
            missing |= undefined_references(sub, scope)
        scope.update(o for o in node.output if o)
    missing.update(o.name for o in graph.output if o.name not in scope)
    return missing


def all_initializers(graph) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in initializers(graph)}


def _tensor_key(t: onnx.TensorProto) -> str:
    arr = numpy_helper.to_array(t)
    h = hashlib.sha256(arr.tobytes())
    h.update(str((t.data_type, tuple(t.dims))).encode())
    return h.hexdigest()


def hoist_initializers(model: onnx.ModelProto) -> int:
    """Move subgraph initializers to the top level, sharing byte-identical tensors; returns how many were shared.

    Lifting copies an outer weight into every branch that reads it, and quantizing each copy gives identical bytes;
    without this the INT8 file would carry a copy per branch.
    """
    top = model.graph
    by_key: dict[str, str] = {}
    for t in top.initializer:
        by_key.setdefault(_tensor_key(t), t.name)
    top_names = {t.name for t in top.initializer}
    shared = 0

    def visit(g) -> None:
        nonlocal shared
        for node in g.node:
            for _, sub in subgraph_attrs(node):
                mapping: dict[str, str] = {}
                keep = []
                for t in sub.initializer:
                    key = _tensor_key(t)
                    if key in by_key:
                        mapping[t.name] = by_key[key]
                        shared += 1
                    elif t.name in top_names:
                        keep.append(t)  # same name, different bytes: leave it local
                    else:
                        top.initializer.append(copy.deepcopy(t))
                        top_names.add(t.name)
                        by_key[key] = t.name
                del sub.initializer[:]
                sub.initializer.extend(keep)
                if mapping:
                    rename_values(sub, {k: v for k, v in mapping.items() if k != v})
                visit(sub)

    visit(top)
    return shared


def prune_unused_initializers(model: onnx.ModelProto) -> int:
    """Drop top-level initializers nothing reads (after grafting, float weights replaced by INT8 ones)."""
    used: set[str] = set()

    def visit(g) -> None:
        for node in g.node:
            used.update(node.input)
            for _, sub in subgraph_attrs(node):
                visit(sub)
        used.update(o.name for o in g.output)

    visit(model.graph)
    keep = [t for t in model.graph.initializer if t.name in used]
    n = len(model.graph.initializer) - len(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return n


def max_opset(models: list[onnx.ModelProto]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in models:
        for o in m.opset_import:
            out[o.domain] = max(out.get(o.domain, 0), o.version)
    return out


def uniquify_initializer_names(model: onnx.ModelProto) -> int:
    """Give subgraph-local initializers that repeat a name used elsewhere a unique one; returns how many.

    Branch subgraphs may each hold a local copy under the same name (legal, scopes differ), but tools that keep one
    table for the whole model (onnxruntime's FP16 converter) reject it.
    """
    seen = {t.name for t in model.graph.initializer}
    renamed = 0

    def visit(g, path: str) -> None:
        nonlocal renamed
        for node in g.node:
            for attr_name, sub in subgraph_attrs(node):
                where = f"{path}{node.name}.{attr_name}"
                mapping = {}
                for t in sub.initializer:
                    if t.name in seen:
                        new = f"{where}/{t.name}"
                        while new in seen:
                            new += "_"
                        mapping[t.name] = new
                    seen.add(mapping.get(t.name, t.name))
                if mapping:
                    rename_values(sub, mapping)
                    renamed += len(mapping)
                visit(sub, where + "/")

    visit(model.graph, "")
    return renamed


def topological_sort(graph) -> None:
    """Order a graph's nodes so each comes after the producers of everything it reads (subgraph reads included).

    Some converters append nodes (e.g. input casts) at the end; onnxruntime sorts on load but onnx.checker
    rejects such a graph.
    """
    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = []
    for n in graph.node:
        reads = set(x for x in n.input if x)
        for _, sub in subgraph_attrs(n):
            reads.update(free_variables(sub))
        deps.append({produced_by[r] for r in reads if r in produced_by})
    order, state = [], [0] * len(graph.node)

    def visit(i: int) -> None:
        stack = [(i, iter(sorted(deps[i])))]
        state[i] = 1
        while stack:
            node, it = stack[-1]
            nxt = next((d for d in it if state[d] == 0), None)
            if nxt is None:
                stack.pop()
                state[node] = 2
                order.append(node)
            else:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))

    for i in range(len(graph.node)):
        if state[i] == 0:
            visit(i)
    nodes = [graph.node[i] for i in order]
    copies = [copy.deepcopy(n) for n in nodes]
    del graph.node[:]
    graph.node.extend(copies)
