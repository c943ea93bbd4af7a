"""The unit tree of a float ONNX model for INT8: the top-level graph and every `If` branch lifted into a standalone
model, each calibrated once (see `edgeconv.quantize.ort`); `QuantTree.assemble(selection)` grafts the quantized
branches back."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from edgeconv.artifacts.card import copy_props
from edgeconv.common.errors import EdgeconvError
from edgeconv.quantize import onnx_graph as og
from edgeconv.quantize.calibration import CalibrationSet, as_ort_reader, uniform_stride
from edgeconv.quantize.gelu import tanh_where_requantized
from edgeconv.quantize.ort_options import WEIGHT_OPS, Int8Options, ort_session
from edgeconv.quantize.record import quiet


# ----------------------------------------------------------------------------------------------- the unit tree
@dataclass
class Unit:
    """One graph to quantize on its own: the top level, or one `If` branch lifted into a standalone model."""

    path: str
    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]
    prefix: str
    children: list[tuple[str, str, "Unit"]] = field(default_factory=list)
    cache: Path | None = None
    candidates: list[str] = field(default_factory=list)  # node names the op policy would quantize
    float_ops: dict[str, int] = field(default_factory=dict)

    def node_id(self, name: str) -> str:
        return f"{self.path}::{name}" if self.path else name

    def walk(self) -> Iterator["Unit"]:
        yield self
        for _, _, c in self.children:
            yield from c.walk()


def select_candidates(model: onnx.ModelProto, policy: str) -> tuple[list[str], dict[str, int]]:
    """Top-level nodes of `model` the policy quantizes, and counts of op types it leaves float."""
    inits = {t.name for t in model.graph.initializer}
    chosen, left = [], {}
    for node in model.graph.node:
        if node.op_type == "If":
            continue
        if policy == "all":
            chosen.append(node.name)
            continue
        has_weight = any(i in inits for i in node.input[:2])
        if node.op_type in WEIGHT_OPS and has_weight:
            chosen.append(node.name)
        elif node.op_type in ("MatMul", "Softmax", "LayerNormalization", "Gelu", "Conv", "Gemm"):
            key = "MatMul (activation x activation)" if node.op_type == "MatMul" else node.op_type
            left[key] = left.get(key, 0) + 1
    return chosen, left


def node_kind(node, image_inputs: frozenset[str] = frozenset()) -> str:
    """Latency groups for `--ops auto`: layers that behave alike in INT8 on a CPU.

    The conv that reads the image is its own group: with 1-3 input channels its INT8 kernel has almost nothing to
    accumulate per output (k*k*C_in <= 27 products), and its output - the largest activation in the network - would
    be dequantized right after. It holds a tiny share of the weights, so keeping it float costs no size.
    """
    if node.op_type == "Conv":
        if node.input[0] in image_inputs:
            return "input Conv"
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return "depthwise Conv" if group > 1 else "Conv"
    return node.op_type


class QuantTree:
    """The unit tree of a float ONNX model, calibrated once; `assemble(selection)` builds a quantized model."""

    def __init__(
        self,
        model: onnx.ModelProto,
        calib: CalibrationSet,
        options: Int8Options,
        workdir: Path,
        on_step: Callable[[str], None] | None = None,
        share_weights: bool = False,
    ):
        # share_weights: one top-level copy of weights used in several branches (smaller file); off by default
        # because onnxruntime does not pre-pack outer-scope initializers inside `If` branches (measured ~30%
        # slower at batch 16 on routed-tiny).
        self.share_weights = share_weights
        self._memo: dict[tuple, onnx.ModelProto] = {}
        self.options = options
        self.gelu_record: dict | None = None  # of the last assembled model (quantize/gelu.py)
        self.workdir = workdir
        self.float_model = copy.deepcopy(model)
        og.ensure_node_names(self.float_model.graph)
        self.input_name = self.float_model.graph.input[0].name
        self._count = 0
        self.unreached: list[str] = []
        self._step = on_step or (lambda s: None)
        self.root = self._build("", self.float_model, calib.feeds(self.input_name))

    # -- building
    def _build(self, path: str, model: onnx.ModelProto, feeds: list[dict]) -> Unit:
        unit = Unit(path, model, feeds, prefix=f"q{self._count}_")
        self._count += 1
        unit.candidates, unit.float_ops = select_candidates(model, self.options.ops)
        if not feeds:
            self.unreached.append(path or "top level")
        else:
            self._step(f"calibrating {path or 'top level'} on {sum(len(next(iter(f.values()))) for f in feeds)} samples")
            unit.cache = self._calibrate(model, feeds)
        ifs = [n for n in model.graph.node if n.op_type == "If"]
        if not ifs:
            return unit
        types = og.value_info_map(model)
        lifted = []
        for node in ifs:
            for attr_name, branch in og.subgraph_attrs(node):
                sub_path = f"{path}/{node.name}.{attr_name}" if path else f"{node.name}.{attr_name}"
                sub_model, inputs = og.lift_branch(model, branch, types, sub_path)
                lifted.append((node, attr_name, sub_path, sub_model, inputs))
        routed = self._route_feeds(model, feeds, lifted, types)
        for (node, attr_name, sub_path, sub_model, inputs), sub_feeds in zip(lifted, routed):
            self._fill_input_types(sub_model, sub_feeds)
            unit.children.append((node.name, attr_name, self._build(sub_path, sub_model, sub_feeds)))
        return unit

    def _route_feeds(self, model, feeds, lifted, types) -> list[list[dict]]:
        """Run `model` on each feed; give each branch the values it reads, for the feeds whose `If` chose it."""
        graph_inputs = {i.name for i in model.graph.input}
        wanted: dict[str, None] = {}
        for node, _, _, _, inputs in lifted:
            wanted[node.input[0]] = None
            for name in inputs:
                wanted[name] = None
        extra = [n for n in wanted if n not in graph_inputs and n not in {o.name for o in model.graph.output}]
        aug = copy.deepcopy(model)
        for name in extra:
            aug.graph.output.append(copy.deepcopy(types[name]) if name in types else onnx.ValueInfoProto(name=name))
        out_names = [o.name for o in aug.graph.output]
        routed: list[list[dict]] = [[] for _ in lifted]
        if not feeds:
            return routed
        sess = ort_session(aug, level="basic")
        for feed in feeds:
            vals = dict(zip(out_names, sess.run(None, feed)))
            vals.update(feed)
            for k, (node, attr_name, _, _, inputs) in enumerate(lifted):
                cond = bool(np.asarray(vals[node.input[0]]).reshape(-1)[0])
                if cond == (attr_name == "then_branch"):
                    routed[k].append({n: vals[n] for n in inputs})
        return routed

    @staticmethod
    def _fill_input_types(model: onnx.ModelProto, feeds: list[dict]) -> None:
        """Inputs whose type inference could not give get it from the captured data (batch dim symbolic)."""
        if not feeds:
            return
        for vi in model.graph.input:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                continue
            arr = np.asarray(feeds[0][vi.name])
            dims = ["batch" if i == 0 and arr.ndim > 1 else d for i, d in enumerate(arr.shape)]
            vi.CopyFrom(onnx.helper.make_tensor_value_info(vi.name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), dims))

    def _unit_file(self, model: onnx.ModelProto) -> Path:
        # onnxruntime's quantizer may rewrite a ModelProto it is given in place (external data references), so it
        # gets a file; the unit's proto stays untouched for the next selection.
        path = self.workdir / f"unit_{id(model)}.src.onnx"
        if not path.exists():
            onnx.save_model(model, str(path))
        return path

    def _calibrate(self, model: onnx.ModelProto, feeds: list[dict]) -> Path | None:
        from onnxruntime.quantization import quantize_static

        k = len(list(self.workdir.glob("calib_*.json")))
        cache = self.workdir / f"calib_{k}.json"
        scratch = self.workdir / f"calib_{k}.onnx"
        src = self._unit_file(model)
        feeds = sorted(feeds, key=lambda f: len(next(iter(f.values()))))
        kwargs = self.options.ort_kwargs()
        if len({len(next(iter(f.values()))) for f in feeds}) > 1:
            kwargs["extra_options"] = {**kwargs["extra_options"], "CalibStridedMinMax": uniform_stride(feeds)}
        with quiet():
            try:
                quantize_static(str(src), str(scratch), as_ort_reader(feeds), calibration_cache_path=str(cache), **kwargs)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises many types; one readable line
                if "Histogram has not been collected" in str(e):
                    return None  # a graph with nothing to calibrate (only control flow and index ops)
                raise EdgeconvError(f"onnxruntime calibration failed: {str(e).splitlines()[0][:200]}") from e
        scratch.unlink(missing_ok=True)
        return cache

    # -- selection
    def candidates(self) -> list[str]:
        """Global ids of every node the op policy would quantize (in units that calibration data reached)."""
        return [u.node_id(n) for u in self.root.walk() if u.cache for n in u.candidates]

    def kinds(self) -> dict[str, list[str]]:
        """Candidate ids grouped by `node_kind`."""
        out: dict[str, list[str]] = {}
        image = frozenset(i.name for i in self.root.model.graph.input)
        for u in self.root.walk():
            if not u.cache:
                continue
            nodes = {n.name: n for n in u.model.graph.node}
            for c in u.candidates:
                out.setdefault(node_kind(nodes[c], image if u is self.root else frozenset()), []).append(u.node_id(c))
        return out

    def weight_share(self) -> dict[str, float]:
        """Share of the candidates' weight elements (the initializer a layer multiplies by) held by each kind."""
        elements: dict[str, int] = {}  # global node id -> weight elements
        for u in self.root.walk():
            dims = {t.name: int(np.prod(t.dims)) for t in u.model.graph.initializer}
            for n in u.model.graph.node:
                elements[u.node_id(n.name)] = sum(dims.get(i, 0) for i in n.input[:2])
        size = {k: sum(elements[c] for c in ids) for k, ids in self.kinds().items()}
        total = sum(size.values())
        if not total:  # weights that are not initializers (Constant nodes): shares unknown, no kind is free
            return {k: 1.0 for k in size}
        return {k: v / total for k, v in size.items()}

    def float_ops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for u in self.root.walk():
            for k, v in u.float_ops.items():
                out[k] = out.get(k, 0) + v
        return out

    # -- assembly
    def assemble(self, selection: set[str], check: bool = True) -> onnx.ModelProto:
        """The model with exactly the nodes in `selection` quantized (global ids); `check`: full ONNX check
        (skipped for the many trial models of a search; the model that is kept is checked)."""
        units: list[onnx.ModelProto] = []
        model = self._assemble(self.root, selection, units)
        opsets = og.max_opset([self.float_model, *units])
        del model.opset_import[:]
        for dom, ver in opsets.items():
            model.opset_import.append(onnx.helper.make_opsetid(dom, ver))
        if self.share_weights:
            og.hoist_initializers(model)
        og.prune_unused_initializers(model)
        self.gelu_record = tanh_where_requantized(model) if self.options.gelu == "tanh" else None
        missing = og.undefined_references(model.graph)
        if missing:
            raise EdgeconvError(f"internal error: quantized graph reads undefined values {sorted(missing)[:5]}")
        copy_props(self.float_model, model)
        if check:
            try:
                onnx.checker.check_model(model, full_check=True)
            except Exception as e:  # noqa: BLE001
                raise EdgeconvError(f"quantized graph fails onnx.checker: {str(e).splitlines()[0][:200]}") from e
        return model

    def _assemble(self, unit: Unit, selection: set[str], units: list) -> onnx.ModelProto:
        chosen = [n for n in unit.candidates if unit.node_id(n) in selection]
        if chosen and unit.cache is not None:
            model = self._quantize_unit(unit, chosen)
            units.append(model)
        else:
            model = copy.deepcopy(unit.model)
        for if_name, attr_name, child in unit.children:
            sub = self._assemble(child, selection, units)
            node = og.find_node(model.graph, if_name)
            if node is None:
                raise EdgeconvError(f"internal error: If node {if_name} vanished while quantizing {unit.path or 'top'}")
            og.set_branch(node, attr_name, og.as_branch(sub, set(), child.prefix))
        return model

    def _quantize_unit(self, unit: Unit, nodes: list[str]) -> onnx.ModelProto:
        # Mixed-precision search re-assembles the model many times changing one layer at a time: every other unit
        # is served from this memo.
        key = (unit.prefix, tuple(sorted(nodes)))
        if key not in self._memo:
            self._memo[key] = self._quantize_unit_uncached(unit, nodes)
        return copy.deepcopy(self._memo[key])

    def _quantize_unit_uncached(self, unit: Unit, nodes: list[str]) -> onnx.ModelProto:
        from onnxruntime.quantization import quantize_static

        out = self.workdir / f"unit_{unit.prefix}.onnx"
        src = self._unit_file(unit.model)
        with quiet():
            quantize_static(
                str(src),
                str(out),
                None,
                nodes_to_quantize=nodes,
                calibration_cache_path=str(unit.cache),
                **self.options.ort_kwargs(),
            )
        model = onnx.load(str(out))
        out.unlink(missing_ok=True)
        return model
