"""The measurement loop behind `edgeconv bench`: every artifact x backend x batch on the same data.

Per row: load the runner; one accuracy pass over the whole split (top-1, delta and top-1 agreement vs the float
reference, routing mix); then latency: `warmup` untimed calls, `iters` calls each timed alone with
`time.perf_counter_ns` on the same fixed batch; p50/p90/p99 and throughput come from those. A row that cannot run
here (no GPU, runtime not installed) is kept and marked unavailable with the reason; a row that fails while running
is marked failed with the error, and the other rows still run.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeconv.artifacts.card import ModelCard
from edgeconv.artifacts.formats import is_format
from edgeconv.common.errors import EdgeconvError
from edgeconv.runtime.backends import BackendUnavailable, RouteCounts, Target, artifact_kind, load_runner, targets_for

CLOCK = "time.perf_counter_ns (monotonic, per call)"


@dataclass
class BenchConfig:
    batches: list[int] = field(default_factory=lambda: [1])
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    backend: str = "auto"
    data: str = "digits"
    split: str = "test"
    warmup: int = 10
    iters: int = 100
    threads: int | None = None  # None: every core this process may use
    reference: Path | None = None  # the float checkpoint; found from the artifacts when None
    limit: int | None = None  # evaluate on the first N samples only

    def resolved_threads(self) -> int:
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:
            return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------- artifacts
@dataclass
class Artifact:
    path: Path
    kind: str  # native backend: torch | ort | tflite | tensorrt
    label: str
    preprocessing: dict | None = None
    source_sha256s: list[str] = field(default_factory=list)  # the sha256 of every source its card records
    source_paths: list[str] = field(default_factory=list)
    precision: str = "?"
    card: ModelCard | None = None


def inspect_artifact(path: Path) -> Artifact:
    """Kind, precision, preprocessing and recorded sources of one file, from its model card (`edgeconv.artifacts.card`):
    the sources are the files its records name (quantization source, export source), each with its sha256."""
    from edgeconv.artifacts.card import read_card

    if not path.exists():
        raise EdgeconvError(f"no such file: {path}")
    kind = artifact_kind(path)
    card = read_card(path)
    art = Artifact(path, kind, path.name, card=card, precision=card.precision, preprocessing=card.preprocessing)
    if kind == "torch":
        return art
    for src_path, sha in card.sources():
        if sha:
            art.source_sha256s.append(sha)
        if src_path and is_format(src_path, "checkpoint"):
            art.source_paths.append(src_path)
    return art


def find_reference(arts: list[Artifact], explicit: Path | None) -> Path | None:
    """The float reference: --reference, else the checkpoint the artifacts name (by hash or path), else the only
    checkpoint given."""
    from edgeconv.artifacts import file_sha256

    if explicit is not None:
        if artifact_kind(explicit) != "torch":
            raise EdgeconvError(f"--reference {explicit}: must be an edgeconv checkpoint (.pt)")
        if not explicit.exists():
            raise EdgeconvError(f"--reference: no such file: {explicit}")
        return explicit
    ckpts = [a.path for a in arts if a.kind == "torch"]
    hashes = {file_sha256(p): p for p in ckpts}
    for a in arts:
        for h in a.source_sha256s:
            if h in hashes:
                return hashes[h]
    if len(ckpts) == 1:
        return ckpts[0]
    for a in arts:
        # a recorded path is trusted only when the file there is still the one recorded (same sha256)
        for p in a.source_paths:
            if Path(p).is_file() and file_sha256(p) in a.source_sha256s:
                return Path(p)
    return None


# ----------------------------------------------------------------------------------------------- measurement
def rss_bytes() -> int:
    """Resident set size now (Linux /proc), falling back to the process peak where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fixed_batches(x: np.ndarray, batch: int):
    """Batches of exactly `batch` inputs; the last one is padded by repeating its first input and the padded
    outputs are dropped, so every call has the shape being measured (static-batch runtimes included)."""
    n = x.shape[0]
    for i in range(0, n, batch):
        chunk = x[i : i + batch]
        k = chunk.shape[0]
        if k < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - k, axis=0)])
        yield chunk, k


def latency_stats(ns: list[int], batch: int) -> dict:
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "p90_over_p50": p90 / p50 if p50 > 0 else None,
        "throughput_ips": float(batch * len(ms) / (ms.sum() / 1e3)) if ms.sum() > 0 else None,
    }


def measure(
    runner,
    x: np.ndarray,
    y: np.ndarray,
    batch: int,
    warmup: int,
    iters: int,
    ref_pred: np.ndarray | None,
    ref_top1: float | None,
    sampler_factory: Callable | None = None,
) -> dict:
    """Accuracy over all of x, then latency on the first `batch` inputs (see module docstring)."""
    routes = RouteCounts()
    preds = []
    for chunk, k in _fixed_batches(x, batch):
        logits = np.asarray(runner.run(chunk))
        if logits.ndim != 2 or logits.shape[0] != batch:
            raise EdgeconvError(f"the model returned shape {list(logits.shape)} for a batch of {batch}")
        preds.append(logits[:k].argmax(1))
        for router, decided in (getattr(runner, "last_routes", None) or {}).items():
            n_attn = int(np.asarray(decided)[:k].sum())  # padded inputs are not counted
            routes.add(router, "attn", n_attn)
            routes.add(router, "conv", k - n_attn)
    pred = np.concatenate(preds)
    labelled = y >= 0
    row: dict = {"n": int(len(pred))}
    row["top1"] = float((pred[labelled] == y[labelled]).mean() * 100) if labelled.any() else None
    if ref_pred is not None:
        row["agree"] = float((pred == ref_pred).mean() * 100)
        row["delta_top1"] = row["top1"] - ref_top1 if row["top1"] is not None and ref_top1 is not None else None
    if routes.counts:
        fr = routes.fractions()
        row["routing"] = fr
        row["attn_share"] = float(np.mean([v.get("attn", 0.0) for v in fr.values()]) * 100)
    fixed = next(_fixed_batches(x[:batch], batch))[0]
    for _ in range(warmup):
        runner.run(fixed)
    sampler = sampler_factory() if sampler_factory else None
    ns = []
    if sampler:
        sampler.start()
    try:
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            runner.run(fixed)
            ns.append(time.perf_counter_ns() - t0)
    finally:
        if sampler:
            sampler.stop()
    row.update(latency_stats(ns, batch))
    if sampler:
        tele = sampler.summary()
        row["tegrastats"] = tele
        if tele.get("power_mw_mean") and row.get("mean_ms"):
            # energy per image = mean input power x time per image (mW x ms = uJ)
            row["energy_mj_per_img"] = tele["power_mw_mean"] * row["mean_ms"] / batch / 1e3
    return row


# ----------------------------------------------------------------------------------------------- the whole bench
def _precision_guess(art: Artifact, target: Target) -> str:
    # onnxruntime's TensorRT provider is given FP16 kernels for float graphs (see the ort backend)
    if target.variant == "tensorrt" and art.precision == "fp32":
        return "fp16"
    return art.precision


def run_bench(models: list[Path], cfg: BenchConfig, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Measure every model x target x batch; returns {"rows", "reference", "data", "settings", "device"}.

    `progress(done, total, what)` is called before each row."""
    import torch

    from edgeconv.runtime.devices import require_jetson

    if not models:
        raise EdgeconvError("give at least one model artifact (.pt, .onnx, .tflite, .engine)")
    for b in cfg.batches:
        if b < 1:
            raise EdgeconvError(f"--batch sizes must be >= 1 (got {b})")
    if cfg.warmup < 0 or cfg.iters < 1:
        raise EdgeconvError("--warmup must be >= 0 and --iters >= 1")
    if "jetson" in cfg.devices:
        require_jetson()
    arts = [inspect_artifact(Path(m)) for m in models]
    threads = cfg.resolved_threads()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(arts, cfg, threads, progress)
    finally:
        torch.set_num_threads(saved_threads)  # the caller's setting, not the bench's, after the run


def _run(arts: list[Artifact], cfg: BenchConfig, threads: int, progress) -> dict:
    import torch

    from edgeconv import artifacts as A
    from edgeconv.data.sources import load_samples
    from edgeconv.models import count_params_macs, load_model
    from edgeconv.runtime.devices import describe_device

    ref_path = find_reference(arts, cfg.reference)
    ref_model = ref_ck = None
    if ref_path is not None:
        ref_model, ref_ck = load_model(ref_path)
    pre = ref_ck["preprocessing"] if ref_ck else next((a.preprocessing for a in arts if a.preprocessing), None)
    if pre is None:
        raise EdgeconvError(
            "cannot tell the input preprocessing: give the float checkpoint too (as a MODEL or with --reference CKPT)"
        )
    for a in arts:
        if a.preprocessing and (a.preprocessing.get("size"), a.preprocessing.get("channels")) != (
            pre.get("size"),
            pre.get("channels"),
        ):
            raise EdgeconvError(
                f"{a.path}: expects {a.preprocessing.get('channels')}x{a.preprocessing.get('size')} "
                f"inputs, the reference {pre.get('channels')}x{pre.get('size')}; bench them apart"
            )
    # Labels index the model's own class list: a folder holding only some classes is still scored correctly.
    classes = (
        ref_ck["classes"]
        if ref_ck
        else next((a.card.classes for a in arts if a.kind != "torch" and a.card and a.card.classes), None)
    )
    samples = load_samples(cfg.data, pre, cfg.split, limit=cfg.limit, classes=classes)
    if len(samples) == 0:
        raise EdgeconvError(f"{cfg.data}: no samples")
    x = samples.x.numpy().astype(np.float32)
    y = samples.y.numpy()

    ref_pred = ref_top1 = None
    params_macs: dict[str, tuple[int, int]] = {}
    if ref_model is not None:
        with torch.inference_mode():
            ref_logits = torch.cat([ref_model(xb) for xb, _ in samples.batches(256)]).numpy()
        ref_pred = ref_logits.argmax(1)
        lab = y >= 0
        ref_top1 = float((ref_pred[lab] == y[lab]).mean() * 100) if lab.any() else None
        params_macs[str(ref_path)] = count_params_macs(ref_model, pre)
    # params/MACs: the artifact's own checkpoint, else its recorded source (by hash), else its recorded config
    ref_sha = A.file_sha256(ref_path) if ref_path else None
    for a in arts:
        if str(a.path) in params_macs:
            continue
        if a.kind == "torch":
            m, ck = load_model(a.path)
            params_macs[str(a.path)] = count_params_macs(m, ck["preprocessing"])
            del m
        elif ref_sha and ref_sha in a.source_sha256s:
            params_macs[str(a.path)] = params_macs[str(ref_path)]
        elif a.card and a.card.config.get("family"):
            from edgeconv.models import create_model_from_config

            try:
                params_macs[str(a.path)] = count_params_macs(create_model_from_config(a.card.config), a.preprocessing or pre)
            except EdgeconvError:
                pass

    sampler_factory = None
    if "jetson" in cfg.devices:
        from edgeconv.runtime.tegrastats import TegrastatsSampler

        sampler_factory = TegrastatsSampler

    rows = []
    plan, seen = [], set()
    for a in arts:
        for dev in cfg.devices:
            for t in targets_for(a.path, cfg.backend, dev):
                for b in cfg.batches:
                    key = (str(a.path), t.label, t.device, b)  # TFLite runs on the CPU for cpu and cuda alike
                    if key not in seen:
                        seen.add(key)
                        plan.append((a, t, b))
    for i, (a, target, batch) in enumerate(plan):
        if progress:
            progress(i, len(plan), f"{a.label} {target.label} {target.device} b{batch}")
        rows.append(
            _row(
                a,
                target,
                batch,
                cfg,
                threads,
                x,
                y,
                ref_pred,
                ref_top1,
                ref_path,
                params_macs,
                sampler_factory if target.device == "jetson" else None,
            )
        )
        gc.collect()
    if progress:
        progress(len(plan), len(plan), "done")

    return {
        "rows": rows,
        "warnings": int8_warnings(arts),
        "reference": {"path": str(ref_path) if ref_path else None, "top1": ref_top1},
        "data": {"source": samples.source, "n": len(samples), "sha256": samples.fingerprint()},
        "settings": {
            "threads": threads,
            "warmup": cfg.warmup,
            "iters": cfg.iters,
            "batches": cfg.batches,
            "devices": cfg.devices,
            "backend": cfg.backend,
            "clock": CLOCK,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "device": describe_device(),
    }


def quantization_record(a: Artifact) -> dict | None:
    """The artifact's quantization record (ONNX metadata, or the sidecar a .tflite/.engine carries)."""
    rec = a.card.quantization if a.card is not None else None
    return rec if isinstance(rec, dict) and rec.get("precision") else None


def int8_warnings(arts: list[Artifact]) -> list[str]:
    """One line per INT8 file made for another CPU than this one (its numbers here may not be its numbers)."""
    from edgeconv.quantize.targets import artifact_warning

    out = []
    for a in arts:
        w = artifact_warning(a.path, quantization_record(a))
        if w:
            out.append(f"{a.label}: {w}")
    return out


def _row(
    a: Artifact,
    target: Target,
    batch: int,
    cfg: BenchConfig,
    threads: int,
    x,
    y,
    ref_pred,
    ref_top1,
    ref_path,
    params_macs,
    sampler_factory,
) -> dict:
    row: dict = {
        "model": a.label,
        "path": str(a.path),
        "backend": target.label,
        "device": target.device,
        "precision": target.precision or _precision_guess(a, target),
        "batch": batch,
        "status": "ok",
        "size_kib": a.path.stat().st_size / 1024,
    }
    pm = params_macs.get(str(a.path))
    if pm:
        row["params"], row["macs"] = pm
    rss0 = rss_bytes()
    try:
        runner = load_runner(a.path, target, threads)
    except BackendUnavailable as e:
        row.update(status="unavailable", reason=str(e))
        return row
    except EdgeconvError as e:
        row.update(status="failed", reason=str(e))
        return row
    desc = runner.describe()
    row["precision"] = desc.get("precision") or row["precision"]
    if desc.get("params") and "params" not in row:
        row["params"] = desc["params"]
    row["runtime"] = desc.get("runtime")
    rss_loaded = rss_bytes()
    try:
        row.update(measure(runner, x, y, batch, cfg.warmup, cfg.iters, ref_pred, ref_top1, sampler_factory))
    except BackendUnavailable as e:
        row.update(status="unavailable", reason=str(e))
    except Exception as e:  # keep the other rows: a runtime error in one backend is that row's result
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        row.update(status="failed", reason=f"{type(e).__name__}: {first[:200]}")
    if row["status"] == "ok":
        # growth since before loading; memory freed meanwhile does not make it negative
        row["mem_mib"] = max(0, max(rss_loaded, rss_bytes()) - rss0) / 2**20
        row["peak_rss_mib"] = peak_rss_bytes() / 2**20
    del runner
    return row
