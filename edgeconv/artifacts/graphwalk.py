"""Walking an ONNX graph and every subgraph in it (`If` branches, loop bodies): the one recursive walker that
export, validate, quantize and the runtimes share."""

from __future__ import annotations

from typing import Iterator

import onnx


def subgraph_attrs(node) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(attribute name, graph) for every graph-valued attribute of `node` (`then_branch`, `else_branch`, `body`)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        for g in attr.graphs:
            yield attr.name, g


def graphs(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """(path, graph) for `graph` ("" or `path`) and every nested subgraph ("NODE.then_branch/...")."""
    yield path, graph
    for node in graph.node:
        for attr, sub in subgraph_attrs(node):
            name = f"{node.name or node.op_type}.{attr}"
            yield from graphs(sub, f"{path}/{name}" if path else name)


def nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph` and of its subgraphs, parents before their branches."""
    for _, g in graphs(graph):
        yield from g.node


def initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for _, g in graphs(graph):
        yield from g.initializer


def count_op(proto_or_graph, op_type: str) -> int:
    graph = getattr(proto_or_graph, "graph", proto_or_graph)
    return sum(n.op_type == op_type for n in nodes(graph))
