"""onnxruntime quantization: static Q/DQ INT8 (inside `If` branches too), FP16, latency-aware op selection and
accuracy-aware mixed precision.

How INT8 reaches inside control flow: the model is split into a tree of *units* - the top-level graph and, for
every `If`, each branch lifted out as a standalone model. Calibration runs the float model on every sample alone
(each sample then takes its own branch, as at batch 1) and on shuffled mixed batches (which reach the per-sample
select branch), captures what flows into each `If`, and hands every branch the calibration inputs of exactly the
samples that took it. Each unit is calibrated once (onnxruntime's calibration cache), so re-quantizing with a
different set of layers is only a graph rewrite. Quantized branches are grafted back into their `If`s, duplicate
weight copies are shared, and the result passes the full ONNX check with every `If` still in place.

Op selection (`ops`): `weights` quantizes layers with a weight - Conv, Gemm and MatMul with a constant operand.
Activation x activation MatMuls (q.k, attn.v), softmax, layer norm and GELU stay float: on CPUs without fast INT8
dot products they are slower in INT8 and lose the most accuracy (platform-facts.md; measured again in
benchmarks/quantize.py). `auto` (the default) starts from `weights` and, while that model measured on this CPU is slower
than float, puts kinds of weight layer (dense Conv, depthwise Conv, the Conv that reads the image, MatMul, Gemm)
back in float, the one that costs most first; a kind with under 1% of the weights goes float whenever that is
clearly faster; the report says which kinds stayed float and the timings that decided. GELUs whose output is
quantized again run in their tanh form (quantize/gelu.py).
`all` quantizes every operator onnxruntime can; TensorRT uses it with symmetric INT8.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from edgeconv.artifacts.card import copy_props, decode_props, quantization_of
from edgeconv.common.errors import EdgeconvError
from edgeconv.quantize import GELU_FORMS, METHODS, OP_POLICIES
from edgeconv.quantize import onnx_graph as og
from edgeconv.quantize.calibration import CalibrationSet, as_ort_reader, uniform_stride
from edgeconv.quantize.gelu import tanh_where_requantized
from edgeconv.quantize.record import quiet

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


# ----------------------------------------------------------------------------------------------- accuracy
@dataclass
class Evaluator:
    """Top-1 of a model on labelled samples, and logits of a fixed subset for sensitivity ranking."""

    x: np.ndarray
    y: np.ndarray
    subset: int = 128
    float_top1: float = 0.0
    float_logits: np.ndarray | None = None

    def top1(self, model: onnx.ModelProto | Path) -> float:
        return top1(ort_logits(ort_session(model), self.x), self.y)

    def logits_error(self, model: onnx.ModelProto) -> float:
        got = ort_logits(ort_session(model), self.x[: self.subset])
        return float(np.mean((got - self.float_logits) ** 2))


@dataclass
class Int8Result:
    model: onnx.ModelProto
    quantized: list[str]
    kept_float: list[str]  # layers --max-drop kept float
    float_top1: float | None
    int8_top1: float | None
    plain_int8_top1: float | None
    float_ops: dict[str, int]  # op types the op selection left float
    kinds_left_float: dict[str, str]  # op kind -> why (--ops auto measurements)
    latency: dict[str, float]  # measured ms at batch 16 (float, int8) during selection
    unreached: list[str]
    steps: list[dict]
    gelu: dict | None = None  # quantize/gelu.py's record of the returned model


def quantize_int8(
    model: onnx.ModelProto,
    calib: CalibrationSet,
    options: Int8Options,
    *,
    eval_x: np.ndarray | None = None,
    eval_y: np.ndarray | None = None,
    max_drop: float | None = None,
    max_float: int | None = None,
    latency_batch: int = 16,
    on_step: Callable[[str], None] | None = None,
) -> Int8Result:
    """Static Q/DQ INT8 of an ONNX model (`If` branches included).

    `options.ops == "auto"`: every weight layer is INT8 unless the model measured at batch `latency_batch` is
    clearly slower than float (the 95% interval of the paired ratio above 1); then whole kinds (Conv, depthwise
    Conv, image Conv, Gemm, MatMul) go back to float, the one whose removal clearly helps most first, until it is
    not (`_select_by_latency`). With `max_drop`, the
    most sensitive layers are kept float until top-1 is within `max_drop` points of the float model, or this fails
    saying the budget cannot be met (at most `max_float` layers may go back to float; default all but one).
    """
    step = on_step or (lambda s: None)
    with tempfile.TemporaryDirectory(prefix="edgeconv-quant-") as tmp:
        tree = QuantTree(model, calib, options, Path(tmp), on_step=step)
        cands = tree.candidates()
        if not cands:
            raise EdgeconvError(
                "nothing to quantize: the model has no layers the op selection applies to"
                f" (--ops {options.ops}) in graphs the calibration data reaches"
            )
        left, latency = {}, {}
        if options.ops == "auto":
            cands, left, latency = _select_by_latency(tree, calib, latency_batch, step)
        step("assembling INT8 model")
        full = tree.assemble(set(cands))
        ev = None
        if eval_x is not None and eval_y is not None:
            ev = Evaluator(eval_x, eval_y)
            fsess = ort_session(tree.float_model)
            ev.float_top1 = top1(ort_logits(fsess, eval_x), eval_y)
            ev.float_logits = ort_logits(fsess, eval_x[: ev.subset])
        int8_top1 = ev.top1(full) if ev else None
        steps = [{"kept float": 0, "top1": int8_top1}] if ev else []
        result, kept = full, []
        if max_drop is not None:
            if ev is None:
                raise EdgeconvError("--max-drop needs labelled evaluation data (--eval SPEC)")
            drop = ev.float_top1 - int8_top1
            if drop > max_drop:
                limit = len(cands) - 1 if max_float is None else min(max_float, len(cands) - 1)
                step(f"INT8 drops {drop:.2f} points (> {max_drop}); ranking {len(cands)} layers by sensitivity")
                ranked = _rank_sensitivity(tree, cands, ev, step) if limit > 0 else cands
                result = None
                for k in range(1, limit + 1):
                    kept = ranked[:k]
                    step(f"keeping {k} layer(s) float")
                    trial = tree.assemble(set(cands) - set(kept), check=False)
                    acc = ev.top1(trial)
                    steps.append({"kept float": k, "top1": acc, "added": kept[-1]})
                    if ev.float_top1 - acc <= max_drop:
                        result, int8_top1 = tree.assemble(set(cands) - set(kept)), acc
                        break
                if result is None:
                    best = max(steps, key=lambda r: r["top1"])
                    raise EdgeconvError(
                        f"--max-drop {max_drop} cannot be met: float top-1 {ev.float_top1:.2f}%, plain INT8 "
                        f"{steps[0]['top1']:.2f}%, best with up to {limit} of {len(cands)} layers back in float "
                        f"{best['top1']:.2f}% ({best['kept float']} float); nothing was written"
                    )
        return Int8Result(
            result,
            [c for c in cands if c not in kept],
            kept,
            ev.float_top1 if ev else None,
            int8_top1,
            steps[0]["top1"] if steps else None,
            tree.float_ops(),
            left,
            latency,
            tree.unreached,
            steps,
            tree.gelu_record,  # the returned model was the last one assembled
        )


def _select_by_latency(tree: QuantTree, calib: CalibrationSet, batch: int, step) -> tuple[list[str], dict, dict]:
    """Every weight layer INT8 (the smallest file) unless that model is *clearly* slower than float at `batch`; then
    kinds go back to float one at a time, each time the kind whose removal clearly helps most, until it is not.
    A kind holding under `FREE_WEIGHT_SHARE` of the weights (the image-reading conv) costs no size in float: it
    is timed back in float in the first round too and goes float whenever that is clearly faster.

    "Clearly" means outside the measurement's own noise: every comparison is the median of paired ratios (both
    sessions timed in the same interleaved repetition) with its 95% bootstrap interval, and a difference counts
    only when the whole interval is on one side of 1.0. Inside the noise the default stands (all weight layers
    INT8), so the same model on the same machine class gives the same file. Top-down rather than adding kinds one
    by one: the size win needs nearly every weight in INT8.
    """
    from edgeconv.common.stats import paired_ratio

    kinds = tree.kinds()
    x = _timing_input(calib, batch)
    # One thread per session: on a shared machine that keeps timings comparable; the decision is a ratio.
    float_sess = ort_session(tree.float_model, threads=1)

    def session(ks: list[str]):
        return ort_session(tree.assemble({c for k in ks for c in kinds[k]}, check=False), threads=1)

    kept = list(kinds)
    share = tree.weight_share()
    # kinds that hold almost none of the weights cost no size in float: each is timed back in float in the same
    # repetitions (the image-reading conv: its INT8 output, the network's largest activation, is dequantized at once)
    free = [k for k in kept if share[k] < FREE_WEIGHT_SHARE]
    free = free if len(free) < len(kept) else []  # never every kind: the file would be float
    step(f"timing INT8 (all weight layers) against float at batch {batch}")
    all_sess = q_sess = session(kept)  # the session of the current selection is carried, never rebuilt
    free_trials = {k: session([j for j in kept if j != k]) for k in free}
    f_t, q_t, *free_t = interleaved_times(
        [float_sess, q_sess, *free_trials.values()], x, seconds=2.0 + 0.5 * len(free), min_runs=MIN_TIMING_RUNS
    )
    vs_float = paired_ratio(q_t, f_t)
    decisions = [{"int8 kinds": len(kept), "vs float": _fmt_ratio(vs_float)}]
    left: dict[str, str] = {}
    free_left: dict[str, str] = {}  # the free kinds this first round put in float (no size cost, kept below)
    if vs_float["ci"][0] <= 1.0:
        gains = {k: paired_ratio(t, q_t) for k, t in zip(free_trials, free_t)}
        clear = {k: g for k, g in gains.items() if g["ci"][1] < 1.0}
        for k, g in clear.items():
            kept.remove(k)
            left[k] = free_left[k] = (
                f"{100 * share[k]:.2f}% of the weights, clearly faster in float: "
                f"{_fmt_ratio(g)} of the all-INT8 time at batch {batch}"
            )
            decisions.append({"float kind": k, "gain": _fmt_ratio(g), "weights": f"{100 * share[k]:.2f}%"})
        if clear:
            q_sess = session(kept)
            f_t, q_t = interleaved_times([float_sess, q_sess], x, seconds=2.0, min_runs=MIN_TIMING_RUNS)
            vs_float = paired_ratio(q_t, f_t)
            decisions.append({"int8 kinds": len(kept), "vs float": _fmt_ratio(vs_float)})
    while vs_float["ci"][0] > 1.0 and len(kept) > 1:
        step(f"INT8 slower ({_fmt_ratio(vs_float)} of float): timing each of {len(kept)} kinds back in float")
        trials = {k: session([j for j in kept if j != k]) for k in kept}
        times = interleaved_times(
            [float_sess, q_sess, *trials.values()], x, seconds=1.0 + 0.5 * len(trials), min_runs=MIN_TIMING_RUNS
        )
        f_t, q_t, trial_t = times[0], times[1], dict(zip(trials, times[2:]))
        gains = {k: paired_ratio(t, q_t) for k, t in trial_t.items()}
        clear = {k: g for k, g in gains.items() if g["ci"][1] < 1.0}
        if not clear:
            vs_float = paired_ratio(q_t, f_t)  # this round's timing, so record and verdict agree
            decisions.append(
                {
                    "int8 kinds": len(kept),
                    "vs float": _fmt_ratio(vs_float),
                    "stop": "no kind back in float is clearly faster",
                }
            )
            break
        best = min(clear, key=lambda k: clear[k]["ratio"])
        vs_float = paired_ratio(trial_t[best], f_t)
        left[best] = (
            f"INT8 clearly slower with it: {float(np.median(q_t)):.2f} ms, "
            f"{float(np.median(trial_t[best])):.2f} ms with it in float ({_fmt_ratio(clear[best])}; "
            f"float model {float(np.median(f_t)):.2f} ms) at batch {batch}"
        )
        kept.remove(best)
        q_t, q_sess = trial_t[best], trials[best]
        decisions.append({"float kind": best, "gain": _fmt_ratio(clear[best]), "vs float": _fmt_ratio(vs_float)})
    if vs_float["ci"][0] > 1.0 and set(left) - set(free_left):
        # Nothing makes INT8 pay on this CPU: keep every weight layer INT8 (the size win) and say so in the report;
        # free kinds the first round put in float stay there (they cost no size).
        step("INT8 is slower than float here whatever stays float; quantizing all weight layers for size")
        kept, left = [k for k in kinds if k not in free_left], dict(free_left)
        q_sess = session(kept) if free_left else all_sess
        f_t, q_t = interleaved_times([float_sess, q_sess], x, seconds=2.0, min_runs=MIN_TIMING_RUNS)
        vs_float = paired_ratio(q_t, f_t)
        decisions.append(
            {
                "int8 kinds": len(kept),
                "vs float": _fmt_ratio(vs_float),
                "stop": "slower whatever stays float: all weight layers INT8 for size"
                + (f" (but the free kinds: {', '.join(free_left)})" if free_left else ""),
            }
        )
    latency = {
        "batch": batch,
        "float_ms": float(np.median(f_t)),
        "int8_ms": float(np.median(q_t)),
        "ratio": round(vs_float["ratio"], 4),
        "ratio_ci": [round(v, 4) for v in vs_float["ci"]],
        "repetitions": vs_float["n"],
        "rule": "a kind goes float only when the 95% CI of its paired ratio is entirely below 1.0: any kind while "
        f"INT8 is clearly slower than float, a kind under {FREE_WEIGHT_SHARE:.0%} of the weights at any time",
        "decisions": decisions,
    }
    return [c for k in kept for c in kinds[k]], left, latency


MIN_TIMING_RUNS = 15
FREE_WEIGHT_SHARE = 0.01  # a kind under 1% of the weights goes float whenever that is clearly faster


def _fmt_ratio(r: dict) -> str:
    return f"{r['ratio']:.3f}x [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def _timing_input(calib: CalibrationSet, batch: int) -> np.ndarray:
    x = calib.samples.x.numpy().astype(np.float32)
    reps = int(np.ceil(batch / len(x)))
    return np.concatenate([x] * reps)[:batch]


def interleaved_times(
    sessions: list, x: np.ndarray, seconds: float = 2.0, min_runs: int = 7, max_runs: int = 200
) -> list[list[float]]:
    """ms per run of each onnxruntime session on `x`, interleaved (`edgeconv.common.stats.interleaved_times`)."""
    from edgeconv.common.stats import interleaved_times as interleaved

    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    calls = [lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds)]
    return interleaved(calls, seconds=seconds, min_runs=min_runs, max_runs=max_runs)


def _rank_sensitivity(tree: QuantTree, cands: list[str], ev: Evaluator, step) -> list[str]:
    """Layers ordered most sensitive first: the logit error when only that layer is quantized."""
    scores = {}
    for i, c in enumerate(cands):
        step(f"sensitivity {i + 1}/{len(cands)}")
        scores[c] = ev.logits_error(tree.assemble({c}, check=False))
    return sorted(cands, key=lambda c: -scores[c])


# ----------------------------------------------------------------------------------------------- fp16
def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute (inputs and outputs stay float32), `If` branches included."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = copy.deepcopy(model)
    og.uniquify_initializer_names(src)
    with quiet():
        out = convert_float_to_float16(src, keep_io_types=True)
    og.topological_sort(out.graph)
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise EdgeconvError(f"FP16 graph fails onnx.checker: {str(e).splitlines()[0][:200]}") from e
    return out


# ----------------------------------------------------------------------------------------------- latency
def latency_ms(
    model: onnx.ModelProto | Path,
    shape: tuple[int, ...],
    level: str = "all",
    warmup: int = 3,
    runs: int = 20,
    threads: int = 0,
) -> float:
    """Median wall time of one run at this input shape (a quick check; benchmarks/ has the careful numbers)."""
    sess = ort_session(model, threads=threads, level=level)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def quantization_metadata(model: onnx.ModelProto) -> dict | None:
    return quantization_of(decode_props(model))
