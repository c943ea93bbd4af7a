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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgeconv.artifacts.card import decode_props, quantization_of
from edgeconv.common.errors import EdgeconvError
from edgeconv.quantize import onnx_graph as og
from edgeconv.quantize.calibration import CalibrationSet
from edgeconv.quantize.ort_options import WEIGHT_OPS, Int8Options, ort_logits, ort_session, top1
from edgeconv.quantize.ort_tree import QuantTree, Unit, node_kind, select_candidates
from edgeconv.quantize.record import quiet

__all__ = [
    "WEIGHT_OPS",
    "Int8Options",
    "QuantTree",
    "Unit",
    "node_kind",
    "ort_logits",
    "ort_session",
    "select_candidates",
    "top1",
]


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
