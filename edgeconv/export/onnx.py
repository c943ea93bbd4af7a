"""PyTorch -> ONNX export with routing kept as control flow, self-describing metadata, optional onnxslim pass.

Routing modes for models with routers (`edgeconv.models.routed`):

- `gated` (default): every router's hard decision becomes an ONNX `If`. Batch semantics (the same in PyTorch and
  ONNX): an `If` takes one decision per batch, so each routed block holds nested `If`s - the whole batch routes to
  conv -> only the conv subgraph runs (the outer `If`: the cheap path pays one dispatch); the whole batch routes to
  attention -> only the attention subgraph runs (the inner `If`); the batch is mixed -> both run and each sample
  keeps its own branch (a per-sample select). Every sample
  therefore gets the answer it gets at batch 1, and a batch of one (the edge case) only pays for its branch.
- `soft`: the training-time graph, both branches weighted by the router probabilities (no `If`).
- `static:conv` / `static:attn`: one branch, no router, no `If` (backends without control flow, comparisons).

Models without routers export as they are (routing recorded as `none`).

The exporter is `torch.export` (non-strict) followed by `torch.onnx.export(dynamo=True)`; the example batch is 2
because a batch-1 example can silently come out with a static batch. The batch dimension is asserted symbolic.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from edgeconv import __version__
from edgeconv.artifacts.card import FORMAT_KEY, METADATA_FORMAT, decode_props, encode_props
from edgeconv.common.checks import MIN_OPSET, check_opset  # noqa: F401 - MIN_OPSET re-exported
from edgeconv.common.errors import EdgeconvError

# the routing modes of models/routed.py that make sense in ONNX (`select` is the no-control-flow form for TFLite)
ROUTINGS = ("gated", "soft", "static:conv", "static:attn")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
EXAMPLE_BATCH = 2


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how."""

    path: Path
    family: str
    routing: str
    opset: int
    if_nodes: int
    dynamic_batch: bool
    simplified: bool
    simplify_note: str
    size_bytes: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict:
        return {
            "onnx": str(self.path),
            "family": self.family,
            "routing": self.routing,
            "opset": self.opset,
            "If nodes": self.if_nodes,
            "batch": "dynamic" if self.dynamic_batch else "static",
            "simplified": "yes" if self.simplified else f"no ({self.simplify_note})",
            "size KiB": round(self.size_bytes / 1024, 1),
            "seconds": round(self.seconds, 1),
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# ----------------------------------------------------------------------------------------------- public API
def export_onnx(
    model_or_ckpt: nn.Module | str | Path,
    out_path: str | Path,
    *,
    routing: str | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    simplify: bool = True,
    metadata: dict[str, Any] | None = None,
    preprocessing: dict | None = None,
    classes: list[str] | None = None,
    source: str | Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a checkpoint (path) or a model built by the registry to one self-contained `.onnx` file.

    routing: gated | soft | static:conv | static:attn (default gated for routed models; must be unset or gated for
    models without routers). opset: None = the exporter's default (>= 18). dynamic_batch=False fixes the batch
    dimension to 1. metadata: extra string (or JSON-able) metadata props. preprocessing/classes/source describe a
    bare model (a checkpoint carries its own). on_step(name) is called at each stage (for progress displays).
    The file is written atomically; a failure raises `EdgeconvError` naming the module or operator at fault.
    """
    from edgeconv.artifacts import atomic_path, file_sha256
    from edgeconv.models import load_model, routers, set_routing

    t0 = time.perf_counter()
    step = on_step or (lambda name: None)
    ckpt: dict = {}
    check_opset(opset)
    if isinstance(model_or_ckpt, nn.Module):
        model = copy.deepcopy(model_or_ckpt)  # routing modes and eval() must not leak into the caller's model
    else:
        source = Path(model_or_ckpt)
        model, ckpt = load_model(source)
    cfg = dict(getattr(model, "cfg", None) or {})
    if "family" not in cfg:
        raise EdgeconvError("model has no edgeconv config (model.cfg with a 'family' key); build it with create_model")
    pre = preprocessing or ckpt.get("preprocessing") or _default_preprocessing(cfg)
    class_names = [str(c) for c in (classes or ckpt.get("classes") or range(int(cfg.get("num_classes", 0))))]
    has_routers = bool(routers(model))
    if routing is None:
        routing = "gated" if has_routers else "none"
    from edgeconv.models.routed import ROUTING_ALIASES

    routing = ROUTING_ALIASES.get(routing, routing)
    if routing not in ROUTINGS and not (routing == "none" and not has_routers):
        raise EdgeconvError(f"unknown routing {routing!r}; choose one of: {', '.join(ROUTINGS)}")
    if not has_routers and routing != "none":
        if routing != "gated":
            raise EdgeconvError(f"{cfg['family']} models have no router: --routing {routing} does not apply")
        routing = "none"
    model.eval()
    if has_routers:
        set_routing(model, routing)

    example = torch.randn(EXAMPLE_BATCH, int(pre["channels"]), int(pre["size"]), int(pre["size"]))
    step("tracing (torch.export)")
    with _quiet_exporter():
        program = _trace(model, example)
    step("translating to ONNX")
    with _quiet_exporter():
        proto = _to_onnx(model, program, example, opset)
    _check_batch_symbolic(proto)
    _rename_batch_dim(proto, "batch")
    notes: list[str] = []
    if opset is not None and _opset(proto) != opset:
        raise EdgeconvError(f"asked for opset {opset} but the exporter wrote opset {_opset(proto)}")

    simplified, note = False, "off"
    if simplify:
        step("simplifying (onnxslim)")
        proto, simplified, note = _simplify(proto)
        if not simplified:
            notes.append(f"simplification skipped: {note}; the unsimplified graph was kept")
    if not dynamic_batch:
        _fix_batch(proto, 1)

    meta = {
        FORMAT_KEY: METADATA_FORMAT,
        "family": cfg["family"],
        "variant": str(cfg.get("variant", "")),
        "config": cfg,
        "classes": class_names,
        "preprocessing": pre,
        "routing": routing,
        "source_sha256": file_sha256(source) if source and Path(source).is_file() else "",
        "source_path": str(Path(source).resolve()) if source and Path(source).is_file() else "",
        "edgeconv_version": __version__,
        "exporter": f"torch {torch.__version__} dynamo",
        "simplified": f"onnxslim {_onnxslim_version()}" if simplified else f"no ({note})",
        "dynamic_batch": "true" if dynamic_batch else "false",
        "opset": str(_opset(proto)),
    }
    if ckpt.get("provenance"):
        meta["provenance"] = ckpt["provenance"]
    meta.update(metadata or {})
    encode_props(proto, meta)

    step("checking and writing")
    _check(proto)
    out = Path(out_path)
    import onnx

    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return ExportResult(
        path=out,
        family=cfg["family"],
        routing=routing,
        opset=_opset(proto),
        if_nodes=count_if_nodes(proto),
        dynamic_batch=dynamic_batch,
        simplified=simplified,
        simplify_note=note,
        size_bytes=out.stat().st_size,
        seconds=time.perf_counter() - t0,
        metadata=decode_props(proto),
        notes=notes,
    )


def count_if_nodes(proto_or_graph) -> int:
    """`If` nodes anywhere in the graph, nested branches included."""
    from edgeconv.artifacts.graphwalk import count_op

    return count_op(proto_or_graph, "If")


# ----------------------------------------------------------------------------------------------- stages
def _default_preprocessing(cfg: dict) -> dict:
    return {
        "size": int(cfg.get("img_size", 224)),
        "channels": int(cfg.get("in_chans", 3)),
        "mean": None,
        "std": None,
        "layout": "NCHW",
    }


def _trace(model: nn.Module, example: torch.Tensor):
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            return torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as e:  # noqa: BLE001 - translated into one readable error naming the module
        raise EdgeconvError(f"cannot trace the model for export: {_blame(e, model)}") from e


def _to_onnx(model: nn.Module, program, example: torch.Tensor, opset: int | None):
    try:
        onnx_program = torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            external_data=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
            report=False,
            verify=False,
            optimize=True,
        )
    except Exception as e:  # noqa: BLE001
        raise EdgeconvError(f"cannot translate the model to ONNX: {_blame_op(e, program)}") from e
    return onnx_program.model_proto


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def _check_batch_symbolic(proto) -> None:
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_param:
        raise EdgeconvError(
            f"the exported input came out with a static batch ({dim.dim_value}); a layer fixes the "
            "batch size (e.g. a reshape with a literal batch); export with --static-batch or fix it"
        )


def _rename_batch_dim(proto, name: str) -> None:
    """Call the exporter's symbolic batch dimension (e.g. `s77`) `name` everywhere it appears."""
    old = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param

    def visit(graph) -> None:
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param == old:
                    d.dim_param = name
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    if old and old != name:
        visit(proto.graph)


def _fix_batch(proto, n: int) -> None:
    """Pin the symbolic batch dimension of inputs and outputs to n (the graph itself stays shape-generic)."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].Clear()
            dims[0].dim_value = n


def _simplify(proto):
    """onnxslim, accepted only when the result checks, keeps its `If`s and matches the original numerically."""
    import numpy as np

    try:
        import onnxslim
    except ImportError as e:
        return proto, False, f"onnxslim not installed ({e})"
    try:
        with _quiet_exporter():
            slim = onnxslim.slim(copy.deepcopy(proto))
    except Exception as e:  # noqa: BLE001 - any simplifier failure means: keep the original
        return proto, False, f"onnxslim failed: {_first_line(e)}"
    if slim is None:
        return proto, False, "onnxslim returned nothing"
    try:
        _check(slim)
    except EdgeconvError as e:
        return proto, False, f"simplified graph fails the ONNX check ({e})"
    if count_if_nodes(slim) != count_if_nodes(proto):
        return proto, False, f"simplified graph changed the If count ({count_if_nodes(proto)} -> {count_if_nodes(slim)})"
    try:
        x = np.random.default_rng(0).standard_normal(_input_shape(proto, 2)).astype(np.float32)
        a, b = _ort_run(proto, x), _ort_run(slim, x)
    except Exception as e:  # noqa: BLE001
        return proto, False, f"could not compare simplified and original graphs ({_first_line(e)})"
    err = float(np.abs(a - b).max()) if a.size else 0.0
    if not np.isfinite(err) or err > 1e-4 * max(1.0, float(np.abs(a).max())):
        return proto, False, f"simplified graph differs numerically (max abs {err:.3g})"
    return slim, True, "ok"


def _input_shape(proto, batch: int) -> list[int]:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [batch if d.dim_param or not d.dim_value else d.dim_value for d in dims]


def _ort_run(proto, x):
    from edgeconv.runtime.onnxrt import session

    sess = session(proto)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _check(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise EdgeconvError(f"exported graph fails onnx.checker: {_first_line(e)}")


def _onnxslim_version() -> str:
    try:
        import onnxslim

        return getattr(onnxslim, "__version__", "?")
    except ImportError:
        return "-"


# ----------------------------------------------------------------------------------------------- errors
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _blame(e: BaseException, model: nn.Module) -> str:
    """Name the deepest module of `model` whose forward was running when tracing failed, and the reason."""
    names = {id(m): n or type(model).__name__ for n, m in model.named_modules()}
    culprit = None
    seen: set[int] = set()
    exc: BaseException | None = e
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            obj = frame.f_locals.get("self")
            if isinstance(obj, nn.Module) and id(obj) in names:
                culprit = obj
        exc = exc.__cause__ or exc.__context__
    reason = _reason(e)
    where = _user_code_location(e)
    if culprit is not None:
        return f"module {names[id(culprit)]!r} ({type(culprit).__name__}): {reason}{where}"
    return f"{reason}{where}"


def _reason(e: BaseException) -> str:
    """The most specific one-line reason in an exporter error chain."""
    chain, seen, exc = [], set(), e
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    root = chain[-1]
    text = _first_line(root)
    if type(root).__name__ not in text:
        text = f"{type(root).__name__}: {text}"
    return text


def _user_code_location(e: BaseException) -> str:
    """The last edgeconv source line that dynamo reports ('from user code'), when there is one."""
    text = "\n".join(str(x) for x in _chain(e))
    hits = re.findall(r'File "([^"]*edgeconv[^"]*)", line (\d+), in (\w+)', text)
    if not hits:
        return ""
    f, line, fn = hits[-1]
    return f" (at {Path(f).name}:{line} in {fn})"


def _chain(e: BaseException) -> list[BaseException]:
    out, seen, exc = [], set(), e
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _blame_op(e: BaseException, program) -> str:
    """Name the unsupported operator and the module(s) that call it, from the exported program's node metadata."""
    text = "\n".join(str(x) for x in _chain(e))
    found = re.findall(r"op='([\w.]+)'", text) or re.findall(r"\b((?:aten|prims)[.:]+\w+)", text)
    if not found:
        return _reason(e)
    op = found[0].replace("::", ".")
    base = op.split(".")[1] if "." in op else op
    modules = []
    for node in program.graph.nodes:
        # the program is not decomposed yet: the failing op may appear under its public name (aten.special_<op>)
        if node.op == "call_function" and base in str(getattr(node, "target", "")):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                cls_name = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
                modules.append(f"{_clean_path(path)} ({cls_name})")
    where = f" used by module {', '.join(dict.fromkeys(modules))}" if modules else ""
    return f"operator {op} has no ONNX translation{where} ({_reason(e)[:200]})"


def _clean_path(path: str) -> str:
    # nn_module_stack paths look like "L['self'].blocks[0].attn" or "blocks.0.attn"
    path = re.sub(r"^L\['self'\]\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).replace("._modules['", ".").replace("']", "") or "model"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints and internal log lines (errors still raise)."""
    loggers = [
        logging.getLogger(n)
        for n in (
            "torch.onnx",
            "torch.export",
            "torch._dynamo",
            "torch._export",
            "torch.fx.experimental.symbolic_shapes",
            "onnxscript",
            "onnx_ir",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Null()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


class _Null:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass
