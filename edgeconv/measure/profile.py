"""Per-operator profiles for `bench --profile`: where an artifact's time goes, per operator type and per node, side
by side for every file given (typically FP32 and INT8 of one model).

- onnxruntime: its own profiler (`SessionOptions.enable_profiling`); every kernel event, `If` branches included,
  summed per operator type and per node over the timed runs, in ms per run.
- TFLite: operator times from LiteRT's profiler (`edgeconv.runtime.tflite_profile`, its C API: the Python interpreter has no
  per-operator timer) - XNNPACK's own operators inside the delegate and TFLite's built-in kernels outside it -
  plus the wall time per invoke with XNNPACK and with built-in kernels only, and which operators ran inside the
  delegate and which fell back, in how many partitions (each boundary hands tensors between the two). Where the
  C profiler cannot be used, operator counts only.
- TensorRT: layer times through `trt.IProfiler` (`context.profiler`), summed per layer type from the engine
  inspector; it needs TensorRT and a GPU, so without them `run_profiles` skips engines (as it skips checkpoints,
  the reference) and `profile_artifact` refuses one with that reason.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeconv.artifacts.formats import format_of
from edgeconv.common.errors import EdgeconvError

CONTROL_FLOW = ("If", "Loop", "Scan")
TFLITE_NOTE = (
    "operator time per invoke from LiteRT's profiler (its C API): XNNPACK's own operators inside the delegate "
    "(Convert = a quantize or dequantize), TFLite op names marked [built-in] outside it; profiling adds overhead"
)
ORT_NOTE = (
    "kernel time per run from onnxruntime's profiler, nodes inside If branches included (the If itself is not "
    "counted again); profiling adds overhead, so the sum can exceed the wall time"
)


@dataclass
class OpProfile:
    artifact: str
    runtime: str
    precision: str
    batch: int
    runs: int
    wall_ms: float  # median wall time of one run
    by_type: dict[str, dict] = field(default_factory=dict)  # op type -> {"ms": per run or None, "count": nodes}
    top: list[dict] = field(default_factory=list)  # slowest nodes: {"node", "op", "ms"}
    notes: list[str] = field(default_factory=list)
    delegate: dict = field(default_factory=dict)  # TFLite: XNNPACK partitions, fallback ops, built-in-only wall time

    def to_dict(self) -> dict:
        return asdict(self)


def _median_wall(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def profile_ort(path: Path, x: np.ndarray, runs: int = 20, threads: int = 1, warmup: int = 3) -> OpProfile:
    from edgeconv.artifacts.card import load_onnx_proto, onnx_precision
    from edgeconv.runtime.onnxrt import session, session_options

    precision = onnx_precision(load_onnx_proto(path))
    level = "extended" if precision == "fp16" else "all"
    with tempfile.TemporaryDirectory(prefix="edgeconv-profile-") as tmp:
        try:
            sess = session(path, options=session_options(level, threads, sequential=True))
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(warmup):
                sess.run(None, feed)
            wall = _median_wall(lambda: sess.run(None, feed), runs)
            so = session_options(level, threads, sequential=True)
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "ort")
            prof = session(path, options=so)
            for _ in range(warmup + runs):
                prof.run(None, feed)
        except EdgeconvError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types; one line names the file
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise EdgeconvError(f"{path}: onnxruntime could not run it for the profile ({first})") from None
        events = _events(Path(prof.end_profiling()), runs)
    per_node: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        op = e["args"]["op_name"]
        per_node[(e["name"].removesuffix("_kernel_time"), op)] += e["dur"] / 1e3 / runs
    # A control-flow node's time is the time of the branch it ran, whose nodes are events of their own: counting
    # both would count the branch twice.
    per_node = {k: v for k, v in per_node.items() if k[1] not in CONTROL_FLOW}
    import onnxruntime as ort

    return _node_profile(path, f"onnxruntime {ort.__version__}", precision, len(x), runs, wall, per_node, ORT_NOTE)


def _node_profile(
    path: Path, runtime: str, precision: str, batch: int, runs: int, wall: float, per_node: dict, note: str
) -> OpProfile:
    """An OpProfile from ms per run of each (node, op type): summed per op type, and the ten slowest nodes."""
    by_type: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "count": 0})
    for (_, op), ms in per_node.items():
        by_type[op]["ms"] += ms
        by_type[op]["count"] += 1
    slowest = sorted(per_node.items(), key=lambda kv: -kv[1])[:10]
    return OpProfile(
        str(path),
        runtime,
        precision,
        batch,
        runs,
        wall,
        {k: {"ms": round(v["ms"], 4), "count": v["count"]} for k, v in by_type.items()},
        [{"node": n, "op": op, "ms": round(ms, 4)} for (n, op), ms in slowest],
        [note],
    )


def _events(trace: Path, runs: int) -> list[dict]:
    """Kernel events of the last `runs` runs of an onnxruntime trace (the warm-up runs before them are dropped)."""
    try:
        data = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in data if e.get("name") == "model_run")[-runs:]
    if not windows:
        raise EdgeconvError(f"{trace.name}: the onnxruntime trace has no runs")
    start = windows[0][0]
    return [
        e
        for e in data
        if e.get("cat") == "Node"
        and e.get("name", "").endswith("_kernel_time")
        and "op_name" in e.get("args", {})
        and e["ts"] >= start
    ]


def profile_tflite(path: Path, x: np.ndarray, runs: int = 20, threads: int = 1) -> OpProfile:
    from edgeconv.runtime.tflite import TFLiteRunner, litert_version
    from edgeconv.runtime.tflite_profile import ProfilerUnavailable, op_times

    runner = TFLiteRunner(path, threads=threads)
    one = x[:1]
    wall = _median_wall(runner.invoke_prepared(one), runs)
    builtin = TFLiteRunner(path, threads=threads, delegate=False)
    wall_builtin = _median_wall(builtin.invoke_prepared(one), runs)
    split = runner.delegation()
    fallback = split.fallback_counts()
    n_fb = sum(fallback.values())
    notes = [
        f"{sum(split.delegated.values()) + n_fb} operators: {sum(split.delegated.values())} in {split.partitions} "
        f"XNNPACK delegate partition(s), {n_fb} in built-in kernels"
        + (": " + ", ".join(f"{k} x{v}" for k, v in sorted(fallback.items(), key=lambda kv: -kv[1])) if n_fb else ""),
        f"wall time {wall:.3f} ms with XNNPACK, {wall_builtin:.3f} ms with built-in kernels only (batch 1)",
    ]
    delegate = {**split.to_dict(), "wall_ms_builtin_kernels": round(wall_builtin, 4)}
    try:
        timed = op_times(path, runner.input_array(one), runs=runs, threads=threads)
    except ProfilerUnavailable as e:
        by_type = {
            op: {"ms": None, "count": split.delegated.get(op, 0) + fallback.get(op, 0), "fallback": fallback.get(op, 0)}
            for op in sorted({*split.delegated, *fallback})
        }
        notes.append(f"no per-operator times ({e}): operator counts only")
        return OpProfile(str(path), litert_version(), runner.precision, 1, runs, wall, by_type, [], notes, delegate)
    prof = _node_profile(path, litert_version(), runner.precision, 1, runs, wall, timed.per_node, TFLITE_NOTE)
    prof.notes = notes + prof.notes
    prof.delegate = delegate
    return prof


def profile_tensorrt(path: Path, x: np.ndarray, runs: int = 20) -> OpProfile:
    """Layer times of a TensorRT engine (a serialized engine, or an ONNX built into one) through `trt.IProfiler`,
    summed per layer type (the engine inspector's `LayerType`, else the ONNX op in the layer's name)."""
    from edgeconv.runtime import tensorrt as trtengine

    try:
        trt = trtengine.require_engine_host()
    except EdgeconvError as e:
        raise EdgeconvError(f"{path}: TensorRT layer profiles need TensorRT and a GPU ({str(e).split(';')[0]})") from None
    if format_of(path).name == "onnx":
        from edgeconv.artifacts.card import load_onnx_proto, onnx_precision

        model = load_onnx_proto(path)
        prof = trtengine.profile_for(model, 1, len(x), max(len(x), 8))
        blob, precision = trtengine.build_engine(model.SerializeToString(), prof, onnx_precision(model)), "onnx"
    else:
        blob = Path(path).read_bytes()
        prof, precision = trtengine.engine_profile(trt, blob), "engine"

    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.ms: dict[str, float] = defaultdict(float)

        def report_layer_time(self, layer_name, ms):  # called by TensorRT after each profiled execution
            self.ms[layer_name] += ms

    with trtengine.TensorRTRunner(blob, prof) as runner:
        runner(x, batch=len(x))
        wall = _median_wall(lambda: runner(x, batch=len(x)), runs)
        times = LayerTimes()
        runner.context.profiler = times
        for _ in range(runs):
            runner(x, batch=len(x))
        inspector = runner.engine.create_engine_inspector()
        kinds = {}
        for i in range(runner.engine.num_layers):
            info = inspector.get_layer_information(i, trt.LayerInformationFormat.JSON)
            try:
                d = json.loads(info)
            except ValueError:
                continue
            if isinstance(d, dict) and d.get("Name"):
                kinds[d["Name"]] = d.get("LayerType") or "?"
    per_node = {
        (name, kinds.get(name) or name.rsplit("/", 1)[-1].split("_")[0] or "?"): ms / runs for name, ms in times.ms.items()
    }
    note = "layer time per run from TensorRT's IProfiler (fused layers are one entry); profiling adds synchronisation"
    return _node_profile(path, f"TensorRT {trt.__version__}", precision, len(x), runs, wall, per_node, note)


def profile_artifact(path: Path, x: np.ndarray, runs: int = 20, threads: int = 1) -> OpProfile:
    kind = format_of(path).runtime
    if kind == "ort":
        return profile_ort(path, x, runs, threads)
    if kind == "tflite":
        return profile_tflite(path, x, runs, threads)
    if kind == "tensorrt":
        return profile_tensorrt(path, x, runs)
    raise EdgeconvError(f"{path}: --profile covers onnxruntime and TFLite files (PyTorch eager has torch.profiler)")


def check_profilable(models: list[Path], plot: bool = False) -> None:
    """Before the bench runs: something to profile, and per-operator times to plot when a PNG is asked for."""
    kinds = [format_of(m).runtime for m in models]
    if not any(k in ("ort", "tflite", "tensorrt") for k in kinds):
        raise EdgeconvError("--profile: give at least one .onnx, .tflite or TensorRT engine file")
    if not any(k in ("ort", "tflite") for k in kinds) and not _tensorrt_here():
        raise EdgeconvError("--profile: TensorRT layer profiles need TensorRT and a GPU; give an .onnx or .tflite file")
    if plot and not any(k in ("ort", "tflite") for k in kinds) and not _tensorrt_here():
        raise EdgeconvError("--profile-plot: TensorRT layer times need TensorRT and a GPU; give an .onnx or .tflite file")


def _tensorrt_here() -> bool:
    from edgeconv.runtime import tensorrt as trtengine

    return trtengine.engine_host_available()


def run_profiles(
    models: list[Path], data: str, split: str, batch: int, threads: int = 1, iters: int = 20
) -> list[OpProfile]:
    """Profile every onnxruntime and TFLite file among `models` on `batch` samples of `data` (each file's own
    preprocessing); other files are skipped (a checkpoint is the reference, not a deployable)."""
    from edgeconv.data.sources import load_samples, split_for
    from edgeconv.measure.bench import inspect_artifact

    arts = [inspect_artifact(Path(m)) for m in models]
    shared = next((a.preprocessing for a in arts if a.preprocessing), None)  # bench requires one input shape
    check_profilable(models)
    out = []
    for m, art in zip(models, arts):
        kind = format_of(m).runtime
        if kind not in ("ort", "tflite", "tensorrt") or (kind == "tensorrt" and not _tensorrt_here()):
            continue  # checkpoints are references; TensorRT engines need TensorRT and a GPU for IProfiler
        pre = art.preprocessing or shared
        if not pre:
            raise EdgeconvError(f"{m}: no preprocessing recorded; give its checkpoint too so inputs can be prepared")
        x = load_samples(data, pre, split_for(data, "evaluate", split), limit=batch).x.numpy()
        out.append(profile_artifact(Path(m), x.astype(np.float32)[:batch], runs=iters, threads=threads))
    return out


# ----------------------------------------------------------------------------------------------- reports
def profile_rows(profiles: list[OpProfile], top: int = 12) -> list[dict]:
    """A wall-time row, then one row per operator type (the costliest over the timed profiles first; untimed
    profiles show operator counts), one ms and one % column per profile."""
    names = [Path(p.artifact).name for p in profiles]
    rows: list[dict] = [
        {
            "op type": "(wall time per run)",
            **{k: v for n, p in zip(names, profiles) for k, v in ((f"{n} ms", f"{p.wall_ms:.3f}"), (f"{n} %", ""))},
        }
    ]
    cost: dict[str, float] = defaultdict(float)
    for p in profiles:
        for op, v in p.by_type.items():
            cost[op] += v["ms"] or 0.0
    timed_ops = sorted((op for op in cost if cost[op] > 0), key=lambda op: -cost[op])[:top]
    untimed_ops = sorted(
        {op for p in profiles for op, v in p.by_type.items() if v["ms"] is None},
        key=lambda op: -max(p.by_type.get(op, {}).get("count", 0) for p in profiles),
    )[:top]
    for op in timed_ops + untimed_ops:
        row: dict = {"op type": op}
        for name, p in zip(names, profiles):
            v = p.by_type.get(op)
            total = sum(t["ms"] for t in p.by_type.values() if t["ms"] is not None) or 1.0
            if v is None:
                row[f"{name} ms"], row[f"{name} %"] = "-", "-"
            elif v["ms"] is None:  # TFLite: operator count, and how many of them ran outside XNNPACK
                fb = v.get("fallback")
                row[f"{name} ms"] = f"x{v['count']}" + (f" ({fb} built-in)" if fb else "")
                row[f"{name} %"] = "-"
            else:
                row[f"{name} ms"], row[f"{name} %"] = f"{v['ms']:.3f}", f"{100 * v['ms'] / total:.1f}"
        rows.append(row)
    return rows


def write_profile_png(profiles: list[OpProfile], path: Path, top: int = 12) -> Path:
    """Horizontal bars: ms per run of the costliest operator types, one bar per profile (timed profiles only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeconv.artifacts import atomic_path

    timed = [p for p in profiles if any(v["ms"] is not None for v in p.by_type.values())]
    if not timed:
        raise EdgeconvError("nothing to plot: no profile has per-operator times (LiteRT's profiler was not usable here)")
    cost: dict[str, float] = defaultdict(float)
    for p in timed:
        for op, v in p.by_type.items():
            cost[op] += v["ms"] or 0.0
    ops = sorted(cost, key=lambda op: -cost[op])[:top][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(ops) + 1.6), dpi=120)
    h = 0.8 / len(timed)
    for i, p in enumerate(timed):
        vals = [(p.by_type.get(op) or {}).get("ms") or 0.0 for op in ops]
        ax.barh(
            [k + i * h for k in range(len(ops))],
            vals,
            height=h,
            label=f"{Path(p.artifact).name} ({p.precision}, {p.wall_ms:.2f} ms/run)",
        )
    ax.set_yticks([k + h * (len(timed) - 1) / 2 for k in range(len(ops))], ops)
    ax.set_xlabel(f"ms per run (batch {timed[0].batch}, kernel time from the runtime's profiler)")
    ax.set_title("where the time goes, per operator type")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
