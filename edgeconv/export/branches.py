"""Make every `If` decision of an ONNX graph observable: a copy of the model outputs one code per `If`.

Each `If` (nested ones included) gets an extra int8 [1] graph output: 1 = then-branch taken, 0 = else-branch
taken, -1 = not reached (it sits in a branch that did not run). Inner codes travel out through every enclosing
branch; the sibling branch outputs -1 in their place, so both branches keep the same outputs as `If` requires.
The instrumented copy computes exactly what the original computes; only outputs are added.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

CODE_PREFIX = "__edgeconv_if"


@dataclass
class IfNode:
    """One `If` of the original graph, where it sits and what its branches hold."""

    index: int
    name: str
    depth: int
    parent: int | None  # index of the enclosing If, None at top level
    parent_branch: str | None  # "then" | "else"
    labels: dict[str, str]  # branch -> short description of its content
    output: str = ""  # the code's graph output name in the instrumented model
    taken: Counter = field(default_factory=Counter)  # "then"/"else" -> single samples (batch 1) that took it
    batches: Counter = field(default_factory=Counter)  # "then"/"else" -> multi-sample batches that took it

    def title(self) -> str:
        where = "top level" if self.parent is None else f"in {self.parent_branch} of If #{self.parent}"
        return f"If #{self.index} {self.name} ({where})"


def branch_label(graph) -> str:
    """A short description of a branch: attention, conv, per-sample select of both, nested If, ..."""
    ops = set()

    def visit(g) -> None:
        for n in g.node:
            ops.add(n.op_type)
            for a in n.attribute:
                if a.HasField("g"):
                    visit(a.g)

    top = {n.op_type for n in graph.node}
    visit(graph)
    if (
        "If" in top
        and len(
            top
            - {
                "If",
                "Cast",
                "Constant",
                "ReduceMin",
                "ReduceMax",
                "LessOrEqual",
                "Greater",
                "Less",
                "GreaterOrEqual",
                "Not",
                "Reshape",
            }
        )
        == 0
    ):
        return "nested If"
    attn = "Softmax" in ops
    conv = "Conv" in ops
    if attn and conv and "Where" in ops:
        return "both paths, per-sample select"
    if attn:
        return "attention"
    if conv:
        return "conv"
    return f"{len(graph.node)} nodes"


def instrument(proto) -> tuple[object, list[IfNode]]:
    """A copy of `proto` with one decision-code output per `If`, and the list of `If`s (index order)."""
    import onnx
    from onnx import TensorProto, helper

    model = copy.deepcopy(proto)
    ifs: list[IfNode] = []
    counter = [0]

    def fresh(stem: str) -> str:
        counter[0] += 1
        return f"{CODE_PREFIX}_{stem}_{counter[0]}"

    def const(name: str, values, dtype) -> onnx.NodeProto:
        arr = np.asarray(values, dtype=dtype)
        return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(arr, name=name + "_v"))

    def process(graph, depth: int, parent: int | None, parent_branch: str | None) -> list[tuple[int, str]]:
        """Instrument `graph`; returns (If index, code tensor name in this graph) for every If inside it."""
        found: list[tuple[int, str]] = []
        appended = []
        for node in list(graph.node):
            if node.op_type != "If":
                continue
            branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
            info = IfNode(
                index=len(ifs) + 1,
                name=node.name or f"If_{len(ifs) + 1}",
                depth=depth,
                parent=parent,
                parent_branch=parent_branch,
                labels={"then": branch_label(branches["then_branch"]), "else": branch_label(branches["else_branch"])},
            )
            ifs.append(info)
            # this If's own decision, computed next to it from its condition
            as_i8, shape, code = fresh("i8"), fresh("shape"), fresh("code")
            appended += [
                helper.make_node("Cast", [node.input[0]], [as_i8], to=TensorProto.INT8),
                const(shape, [1], np.int64),
                helper.make_node("Reshape", [as_i8, shape], [code]),
            ]
            found.append((info.index, code))
            # codes of Ifs nested in either branch leave through this If's outputs
            inner = {b: process(branches[f"{b}_branch"], depth + 1, info.index, b) for b in ("then", "else")}
            order = [i for i, _ in inner["then"]] + [i for i, _ in inner["else"]]
            for b in ("then", "else"):
                g = branches[f"{b}_branch"]
                own = dict(inner[b])
                for idx in order:
                    if idx in own:
                        name = own[idx]
                    else:
                        name = fresh("unreached")
                        g.node.append(const(name, [-1], np.int8))
                    g.output.append(helper.make_tensor_value_info(name, TensorProto.INT8, [1]))
            for idx in order:
                out = fresh("lifted")
                node.output.append(out)
                found.append((idx, out))
        graph.node.extend(appended)
        return found

    codes = process(model.graph, 0, None, None)
    for idx, name in codes:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT8, [1]))
        ifs[idx - 1].output = name
    return model, ifs


def record(ifs: list[IfNode], outputs: dict[str, np.ndarray], batch: int) -> None:
    """Count the branch each `If` took in one run (outputs: name -> value of the instrumented model)."""
    for info in ifs:
        code = int(np.asarray(outputs[info.output]).reshape(-1)[0])
        counter = info.taken if batch == 1 else info.batches
        if code == 1:
            counter["then"] += 1
        elif code == 0:
            counter["else"] += 1
