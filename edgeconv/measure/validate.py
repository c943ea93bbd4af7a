"""`edgeconv validate`: prove an ONNX file is well-formed and still computes what its PyTorch source computes.

Checks, in order (a failed structural check stops the ones that need a runnable graph):

1. `onnx checker`   - onnx.checker full check (types, schemas, topological order, initialisers).
2. `shape inference` - strict shape and type inference over the whole graph, subgraphs included.
3. `opset`          - the declared opset, the opset recorded at export, and whether every operator has a schema at
                      the declared opset; the operator inventory is reported.
4. `onnxruntime session` - a CPU session can be created.
5. `parity`         - every sample through onnxruntime at batch 1 against the PyTorch source (max abs / relative
                      error, top-1 agreement). The source is `against`, else the checkpoint recorded at export when
                      it is still there with the same hash; without one, parity is SKIPPED and says so.
6. `branch coverage` - for every `If` (nested included), how many samples took each branch. Batch-1 runs observe each
                      sample's own decision; batched runs cover the mixed-batch branch. A branch no input took is
                      unvalidated and fails the check (unless allow_uncovered).
7. `dynamic batch`  - when the batch dimension is symbolic, batched outputs must equal the batch-1 outputs.

The run passes only when no check FAILED.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeconv.common.errors import EdgeconvError
from edgeconv.runtime.onnxrt import LEVELS as ORT_LEVELS  # noqa: F401 - the CLI's --ort-level choices

PASSED, FAILED, SKIPPED, WARNING = "PASSED", "FAILED", "SKIPPED", "WARNING"  # WARNING passes, with a reason


@dataclass
class Check:
    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class ValidationReport:
    model: str
    source: str | None
    data: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.status != FAILED for c in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def rows(self) -> list[dict]:
        return [{"check": c.name, "result": c.status, "detail": c.detail} for c in self.checks]

    def summary(self) -> str:
        n_fail = sum(c.status == FAILED for c in self.checks)
        n_skip = sum(c.status == SKIPPED for c in self.checks)
        n_warn = sum(c.status == WARNING for c in self.checks)
        extra = "".join(f" ({n} {what})" for n, what in ((n_skip, "skipped"), (n_warn, "with a warning")) if n)
        if self.passed:
            return f"PASSED: {self.model}: {len(self.checks) - n_skip} checks passed{extra}"
        failed = ", ".join(c.name for c in self.checks if c.status == FAILED)
        return f"FAILED: {self.model}: {n_fail} check(s) failed ({failed}){extra}"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "source": self.source,
            "data": self.data,
            "passed": self.passed,
            "summary": self.summary(),
            "checks": [asdict(c) for c in self.checks],
        }


def ort_session(model: str | Path | bytes, level: str = "all", threads: int | None = None):
    """An onnxruntime CPU session at the given graph-optimisation level (disable | basic | extended | all)."""
    from edgeconv.runtime.onnxrt import session

    return session(model, level=level, threads=threads)


# ----------------------------------------------------------------------------------------------- the run
def validate_onnx(
    model_path: str | Path,
    *,
    against: str | Path | None = None,
    data: str | None = None,
    split: str = "test",
    tolerance: float = 1e-4,
    min_agreement: float = 100.0,
    limit: int | None = None,
    batch: int = 16,
    ort_level: str = "all",
    allow_uncovered: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ValidationReport:
    """Run every check on `model_path`; see the module docstring. Raises EdgeconvError only for unusable input
    (missing file, unreadable data); a broken graph is a FAILED check, not an exception."""
    from edgeconv.artifacts.card import decode_props, load_onnx_proto, quantization_of

    path = Path(model_path)
    proto = load_onnx_proto(path)
    meta = decode_props(proto)
    progress = on_progress or (lambda what, done, total: None)
    report = ValidationReport(model=str(path), source=None, data=data)
    add = report.checks.append

    add(_timed(lambda: _check_checker(proto)))
    add(_timed(lambda: _check_shapes(proto)))
    add(_timed(lambda: _check_opset(proto, meta)))
    qrec = quantization_of(meta)
    if qrec is not None:
        add(_timed(lambda: _check_int8_target(path, proto, qrec)))
    if any(c.status == FAILED for c in report.checks):
        for name in ("onnxruntime session", "parity", "branch coverage", "dynamic batch"):
            add(Check(name, SKIPPED, "not run: the graph failed a structural check above"))
        return report

    t0 = time.perf_counter()
    try:
        sess = ort_session(proto.SerializeToString(), ort_level)
    except Exception as e:  # noqa: BLE001 - the session's own message is the finding
        add(
            Check(
                "onnxruntime session",
                FAILED,
                f"onnxruntime cannot load the graph: {_first_line(e)}",
                seconds=time.perf_counter() - t0,
            )
        )
        for name in ("parity", "branch coverage", "dynamic batch"):
            add(Check(name, SKIPPED, "not run: no onnxruntime session"))
        return report
    inp = sess.get_inputs()[0]
    add(
        Check(
            "onnxruntime session",
            PASSED,
            f"CPUExecutionProvider, optimisation {ort_level}, input {inp.name} {inp.shape}",
            {"input": inp.name, "shape": [str(d) for d in inp.shape], "ort_level": ort_level},
            time.perf_counter() - t0,
        )
    )

    source, source_note = _resolve_source(against, meta)
    report.source = str(source) if source else None
    pre = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else None
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else None
    ref_model = None
    if source is not None:
        from edgeconv.models import load_model

        ref_model, ckpt = load_model(source)
        pre = pre or ckpt["preprocessing"]
        classes = classes or ckpt.get("classes")
    if pre is None:
        raise EdgeconvError(
            f"{path}: no preprocessing recorded in the ONNX metadata; pass --against CKPT "
            "(an edgeconv checkpoint) so validate knows how to prepare the data"
        )
    from edgeconv.data.sources import data_for, load_samples

    samples = load_samples(data_for(data, pre, "validate"), pre, split, limit, classes=classes)
    report.data = samples.source
    x = samples.x.numpy().astype(np.float32)
    _check_input_shape(inp.shape, x.shape, path)
    batch_dim = inp.shape[0]
    dynamic = not isinstance(batch_dim, int)
    single = 1 if dynamic else int(batch_dim)

    # batch-1 outputs of the file itself (parity) and decisions of the instrumented copy (coverage)
    t0 = time.perf_counter()
    outs = _run_chunks(sess, x, single, lambda d, t: progress("onnxruntime, batch 1", d, t))
    ifs, covered = _coverage(proto, x, single, batch if dynamic else single, ort_level, progress)
    run_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if ref_model is None:
        add(Check("parity", SKIPPED, f"no PyTorch source: {source_note}", seconds=0.0))
    else:
        add(
            _check_parity(
                ref_model, meta, samples, outs, tolerance, min_agreement, source_note, time.perf_counter() - t0 + run_s
            )
        )
    add(_check_coverage(ifs, covered, allow_uncovered))
    if dynamic:
        t0 = time.perf_counter()
        batched = _run_chunks(sess, x, batch, lambda d, t: progress(f"onnxruntime, batch {batch}", d, t))
        add(_check_dynamic(outs, batched, batch, tolerance, time.perf_counter() - t0))
    else:
        add(Check("dynamic batch", SKIPPED, f"the graph declares a static batch of {batch_dim}"))
    return report


# ----------------------------------------------------------------------------------------------- structural checks
def _check_checker(proto) -> Check:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001
        return Check("onnx checker", FAILED, f"onnx.checker: {_first_line(e)}")
    return Check("onnx checker", PASSED, "full check passed")


def _check_shapes(proto) -> Check:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001
        return Check("shape inference", FAILED, f"strict shape inference: {_first_line(e)}")
    outs = []
    for o in inferred.graph.output:
        dims = [d.dim_param or str(d.dim_value) for d in o.type.tensor_type.shape.dim]
        outs.append(f"{o.name} ({', '.join(dims)})")
    return Check("shape inference", PASSED, f"strict mode passed; outputs {', '.join(outs)}", {"outputs": outs})


def _check_opset(proto, meta: dict) -> Check:
    import onnx

    from edgeconv.export.onnx_info import operator_inventory

    declared = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    inventory = operator_inventory(proto.graph)
    data = {"opset": declared, "operators": dict(sorted(inventory.items()))}
    problems = []
    if declared is None:
        problems.append("no ai.onnx opset declared")
    else:
        if declared > onnx.defs.onnx_opset_version():
            problems.append(f"opset {declared} is newer than this onnx knows ({onnx.defs.onnx_opset_version()})")
        recorded = meta.get("opset")
        notes = []
        if recorded and str(recorded).isdigit() and declared < int(recorded):
            problems.append(f"declares opset {declared} but was exported with opset {recorded}")
        elif recorded and str(declared) != str(recorded):
            # a later tool (e.g. a quantizer) may raise the opset; operators are still checked below
            notes.append(f"exported with opset {recorded}, now declares {declared}")
        data["notes"] = notes
        missing = []
        for op in sorted(inventory):
            domain, _, name = op.rpartition(".")
            if domain:
                continue  # custom domains (com.microsoft) are onnxruntime's, checked by the session
            try:
                onnx.defs.get_schema(name, declared, "")
            except Exception:  # noqa: BLE001 - no schema at or below this opset
                missing.append(name)
        if missing:
            problems.append(f"operators without a schema at opset {declared}: {', '.join(missing)}")
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(inventory.items(), key=lambda kv: -kv[1]))
    if problems:
        return Check("opset", FAILED, "; ".join(problems), data)
    note = f" ({'; '.join(data['notes'])})" if data.get("notes") else ""
    return Check("opset", PASSED, f"ai.onnx opset {declared}{note}; {len(inventory)} operator types: {ops}", data)


def _check_int8_target(path: Path, proto, rec: dict) -> Check:
    """A quantized file: the INT8 target it was made for against this CPU, and the int16 pair-sum property of its
    weights (a WARNING, not a failure: the file is valid, its numbers on this CPU may not be its numbers)."""
    from edgeconv.quantize.saturation import check_model
    from edgeconv.quantize.targets import artifact_warning
    from edgeconv.runtime.hostcpu import this_int8_class

    if rec.get("precision") != "int8":
        return Check("INT8 target", SKIPPED, f"not an INT8 file ({rec.get('precision')})")
    cpu = this_int8_class()
    sat = check_model(proto)
    data = {"target": rec.get("target"), "cpu_int8": cpu["name"], **sat.record()}
    warning = artifact_warning(path, rec, model=proto, cpu=cpu)
    if warning:
        return Check("INT8 target", WARNING, warning, data)
    return Check(
        "INT8 target", PASSED, f"target {rec.get('target') or 'not recorded'} on {cpu['name']}: {sat.summary()}", data
    )


def _check_input_shape(graph_shape: list, data_shape: tuple, path: Path) -> None:
    for i, (g, d) in enumerate(zip(graph_shape[1:], data_shape[1:]), start=1):
        if isinstance(g, int) and g != d:
            raise EdgeconvError(
                f"{path}: the graph expects input {graph_shape}, the data is {list(data_shape)} "
                f"(dimension {i} differs); pass --data matching the model"
            )


# ----------------------------------------------------------------------------------------------- numeric checks
def _run_chunks(sess, x: np.ndarray, n: int, progress: Callable[[int, int], None]) -> np.ndarray:
    """Run `x` through the session in chunks of n samples (a trailing partial chunk only when the batch is
    dynamic, which the caller decides by passing n); returns the first output concatenated."""
    name = sess.get_inputs()[0].name
    outs = []
    total = len(x) - (len(x) % n if n > 1 and not _dynamic(sess) else 0)
    for i in range(0, total, n):
        outs.append(sess.run(None, {name: x[i : i + n]})[0])
        progress(min(i + n, total), total)
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def _dynamic(sess) -> bool:
    return not isinstance(sess.get_inputs()[0].shape[0], int)


def _coverage(proto, x: np.ndarray, single: int, batch: int, level: str, progress):
    """Decisions of every `If`: each sample alone, then batches (which can take the mixed-batch branch)."""
    from edgeconv.export.branches import instrument, record
    from edgeconv.export.onnx import count_if_nodes

    if count_if_nodes(proto) == 0:
        return [], False
    inst, ifs = instrument(proto)
    sess = ort_session(inst.SerializeToString(), level)
    names = [o.name for o in sess.get_outputs()]
    iname = sess.get_inputs()[0].name
    for n, label in ((single, "branch decisions, batch 1"), (batch, f"branch decisions, batch {batch}")):
        total = len(x) - (len(x) % n if not _dynamic(sess) else 0)
        for i in range(0, total, n):
            outs = sess.run(None, {iname: x[i : i + n]})
            record(ifs, dict(zip(names, outs)), batch=len(outs[0]))
            progress(label, min(i + n, total), total)
    return ifs, True


def _check_parity(
    model, meta: dict, samples, outs: np.ndarray, tol: float, min_agreement: float, note: str, seconds: float
) -> Check:
    import torch

    from edgeconv.models import set_routing
    from edgeconv.models.routed import ROUTING_MODES

    routing = meta.get("routing", "none")
    if routing in ROUTING_MODES:
        set_routing(model, routing)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = torch.cat([model(xb) for xb, _ in samples.batches(64)]).numpy()
    if ref.shape != outs.shape:
        return Check("parity", FAILED, f"output shapes differ: PyTorch {list(ref.shape)}, ONNX {list(outs.shape)}")
    diff = np.abs(ref.astype(np.float64) - outs.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 1.0
    max_rel = max_abs / max(scale, 1e-12)
    agree = float((ref.argmax(1) == outs.argmax(1)).mean() * 100) if len(ref) else 100.0
    y = samples.y.numpy()
    labelled = y >= 0
    acc = float((outs.argmax(1)[labelled] == y[labelled]).mean() * 100) if labelled.any() else None
    data = {
        "n": int(len(ref)),
        "max_abs": max_abs,
        "max_rel": max_rel,
        "top1_agreement": agree,
        "onnx_top1": acc,
        "tolerance": tol,
        "min_agreement": min_agreement,
        "routing": routing,
    }
    ok = np.isfinite(max_abs) and max_abs <= tol and agree >= min_agreement
    detail = (
        f"{len(ref)} samples: max abs {max_abs:.3g} (tol {tol:g}), max rel {max_rel:.3g}, "
        f"top-1 agreement {agree:.2f}% (need {min_agreement:g}%)"
    )
    if acc is not None:
        detail += f", ONNX top-1 {acc:.2f}%"
    if note:
        detail += f"; {note}"
    if not np.isfinite(max_abs):
        side = "PyTorch" if not np.isfinite(ref).all() else "ONNX"
        detail = f"{side} gives NaN or infinite outputs on {len(ref)} samples (non-finite weights or inputs); {detail}"
    elif not ok:
        worst = int(np.unravel_index(diff.argmax(), diff.shape)[0]) if diff.size else -1
        detail = f"outputs differ from PyTorch ({detail}; worst sample #{worst})"
    return Check("parity", PASSED if ok else FAILED, detail, data, seconds + time.perf_counter() - t0)


def _check_coverage(ifs, active: bool, allow_uncovered: bool) -> Check:
    if not active:
        return Check("branch coverage", SKIPPED, "the graph has no If nodes (no routing to cover)")
    lines, unvalidated, data = [], [], []
    for f in ifs:
        parts = []
        for b in ("then", "else"):
            n1, nb = f.taken.get(b, 0), f.batches.get(b, 0)
            parts.append(f"{b}={f.labels[b]}: {n1} samples" + (f" + {nb} batches" if nb else ""))
            if n1 + nb == 0:
                unvalidated.append(f"If #{f.index} {b} ({f.labels[b]})")
        lines.append(f"{f.title()}: " + "; ".join(parts))
        data.append(
            {
                "index": f.index,
                "name": f.name,
                "depth": f.depth,
                "parent": f.parent,
                "labels": f.labels,
                "samples": dict(f.taken),
                "batches": dict(f.batches),
            }
        )
    detail = " | ".join(lines)
    if unvalidated:
        msg = f"unvalidated branches (no input took them): {', '.join(unvalidated)} | {detail}"
        return Check(
            "branch coverage", PASSED if allow_uncovered else FAILED, msg, {"ifs": data, "unvalidated": unvalidated}
        )
    return Check(
        "branch coverage",
        PASSED,
        f"all {2 * len(ifs)} branches of {len(ifs)} If nodes taken | {detail}",
        {"ifs": data, "unvalidated": []},
    )


def _check_dynamic(single: np.ndarray, batched: np.ndarray, batch: int, tol: float, seconds: float) -> Check:
    if single.shape != batched.shape:
        return Check(
            "dynamic batch",
            FAILED,
            f"batch {batch} gave shape {list(batched.shape)}, batch 1 gave {list(single.shape)}",
            seconds=seconds,
        )
    err = float(np.abs(single.astype(np.float64) - batched).max()) if single.size else 0.0
    ok = np.isfinite(err) and err <= tol
    detail = f"batch {batch} vs batch 1 on {len(single)} samples: max abs {err:.3g} (tol {tol:g})"
    return Check(
        "dynamic batch",
        PASSED if ok else FAILED,
        detail if ok else f"batched outputs differ: {detail}",
        {"batch": batch, "max_abs": err},
        seconds,
    )


# ----------------------------------------------------------------------------------------------- helpers
def _resolve_source(against, meta: dict) -> tuple[Path | None, str]:
    """The PyTorch checkpoint to compare with, and a note on where it came from."""
    from edgeconv.artifacts import file_sha256

    recorded_sha = meta.get("source_sha256") or ""
    if against is not None:
        p = Path(against)
        if not p.is_file():
            raise EdgeconvError(f"--against: no such checkpoint: {p}")
        if recorded_sha and file_sha256(p) != recorded_sha:
            return p, f"note: {p.name} is not the checkpoint this graph was exported from (sha256 differs)"
        return p, ""
    recorded = meta.get("source_path") or ""
    if not recorded:
        return None, "the graph records no source checkpoint; pass --against CKPT"
    p = Path(recorded)
    if not p.is_file():
        return None, f"the recorded source {recorded} no longer exists; pass --against CKPT"
    if recorded_sha and file_sha256(p) != recorded_sha:
        return None, f"the recorded source {recorded} changed since export (sha256 differs); pass --against CKPT"
    return p, f"source from metadata: {recorded}"


def _timed(fn: Callable[[], Check]) -> Check:
    t0 = time.perf_counter()
    c = fn()
    c.seconds = time.perf_counter() - t0
    return c


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (" ".join(lines[:2]) if lines else type(e).__name__)[:400]
