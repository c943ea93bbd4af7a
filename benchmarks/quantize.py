"""Quantization side by side, in one run on this CPU (its INT8 class is printed with every table).

Part 1 - 224x224 hybrids (default hvt-small, serial conv-then-attention, and acmix-small, parallel conv and
attention branches) trained on real digits upsampled to 224x224 (`--train-epochs`, default 6: after 2 epochs the
models sit at 87-90% with many test images near a decision boundary, and the INT8 drop then depends more on which
100 samples calibrate than on the recipe; 0 = freshly initialised, accuracy not meaningful), at batch 1 and 16:
onnxruntime FP32 / FP16 / INT8 and TFLite FP32 / FP16 / INT8 (the default op selection and full-integer) top-1 on
the digits test split, file size and latency, each accuracy next to its size and latency ratio. Every runtime runs
with one thread, its files interleaved in a shuffled order per repetition; each ratio is the median over
repetitions of the ratio to the runtime's FP32 file taken within that repetition (load changes on a shared machine
hit both sides of a ratio alike) with its 95% bootstrap interval, and "ms" is the median latency. TFLite graphs
have batch 1: its batch 16 is 16 invokes.

Calibration spread - the default TFLite and onnxruntime INT8 files quantized again from other class-stratified
100-sample subsets of the digits train split (`--calib-seeds`, default 0,1,2; `quantize --calib-seed`): top-1 drop
per seed as the quantize record measured it, and its min / median / max.

Part 2 - top-1 on its own test split (digits: 359 images, fashion: 10,000) for each checkpoint trained on a bundled
set (pass them with --ckpt): float vs onnxruntime INT8 (default target and op selection) and FP16, and TFLite INT8
and FP16, each in the runtime that runs it.

    python benchmarks/quantize.py --ckpt routed.pt --ckpt acmix.pt --ckpt hvt.pt --out /tmp/qbench
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_224(name: str, work: Path, epochs: int) -> tuple[Path, Path, str]:
    """A 224x224 checkpoint of `name` (trained `epochs` on digits, 1 channel; 0: fresh RGB), its ONNX, and the
    data spec it is calibrated and scored on."""
    from edgeconv.artifacts import provenance, save_checkpoint
    from edgeconv.data.sources import digits_images01
    from edgeconv.export.onnx import export_onnx
    from edgeconv.models import create_model
    from edgeconv.train.loop import TrainConfig, run_train

    ckpt, onx = work / f"{name}-224-e{epochs}.pt", work / f"{name}-224-e{epochs}.onnx"
    data = "digits"
    if epochs == 0:
        npz = work / "digits224.npz"
        data = f"npz:{npz}"
        if not npz.exists():
            x01, y = digits_images01("train", 224)
            x = (x01.repeat(1, 3, 1, 1)[:64].numpy() * 255).round().astype(np.uint8)
            np.savez(npz, x=x, y=y[:64].numpy())
    if not ckpt.exists():
        if epochs:
            _log(f"training {name} at 224x224 on digits for {epochs} epoch(s)")
            run_train(
                name,
                "digits",
                str(ckpt),
                cfg=TrainConfig(epochs=epochs, batch_size=32),
                img_size=224,
                show_progress=False,
                command="benchmarks/quantize.py",
            )
        else:
            torch.manual_seed(0)
            pre = {
                "size": 224,
                "channels": 3,
                "mean": [0.5] * 3,
                "std": [0.25] * 3,
                "layout": "NCHW",
                "dataset": "digits-rgb224",
            }
            save_checkpoint(
                ckpt,
                create_model(name, in_chans=3, img_size=224),
                preprocessing=pre,
                classes=[str(i) for i in range(10)],
                provenance_rec=provenance("benchmarks/quantize.py"),
            )
    if not onx.exists():
        export_onnx(ckpt, onx)
    return ckpt, onx, data


def calib_spread(name: str, defaults: dict[str, tuple[Path, str, Path]], data: str, seeds: list[int]) -> list[dict]:
    """Top-1 drop of the default INT8 files ({label: (source model, backend, the seed-0 file)}) calibrated on the
    100-sample subset of each seed; seed 0 is the latency table's own file."""
    from edgeconv.quantize import QuantizeRequest, quantize

    rows = []
    for label, (src, backend, p0) in defaults.items():
        drops = []
        for seed in seeds:
            p = p0.with_name(f"{p0.stem}.seed{seed}{p0.suffix}") if seed else p0
            if p.exists():
                acc = _record_of(p)["accuracy"]
            else:
                _log(f"quantizing {label}, calibration seed {seed}")
                req = QuantizeRequest(
                    src,
                    p,
                    "int8",
                    backend,
                    data=data,
                    calib_limit=100,
                    calib_seed=seed,
                    eval_data=data,
                    command="benchmarks/quantize.py",
                )
                acc = quantize(req).record["accuracy"]
            drops.append(acc["drop"])
            rows.append(
                {
                    "model": f"{name} 224",
                    "artifact": label,
                    "calibration": f"seed {seed}",
                    "float top-1 %": round(acc["float_top1"], 2),
                    "INT8 top-1 %": round(acc["quantized_top1"], 2),
                    "drop": round(acc["drop"], 2),
                }
            )
        rows.append(
            {
                "model": f"{name} 224",
                "artifact": label,
                "calibration": f"{len(seeds)} seeds",
                "float top-1 %": "-",
                "INT8 top-1 %": "-",
                "drop": f"min {min(drops):.2f} / median {float(np.median(drops)):.2f} / max {max(drops):.2f}",
            }
        )
    return rows


def ort_variants(onx: Path, data: str, work: Path, scored: bool) -> tuple[dict[str, Path], dict[str, dict]]:
    from edgeconv.quantize import QuantizeRequest, quantize

    out, records = {"ORT FP32": onx}, {}
    for label, prec, ops, gelu in (
        ("ORT FP16", "fp16", "auto", "tanh"),
        ("ORT INT8 (default: portable, auto)", "int8", "auto", "tanh"),
        ("ORT INT8 (all weight layers)", "int8", "weights", "tanh"),
        # the default before re-quantized GELUs took the tanh form (what auto kept where INT8 was not slower)
        ("ORT INT8 (all weight layers, exact GELU)", "int8", "weights", "exact"),
    ):
        # the GELU form in the name: a rerun over an older --out folder never reuses a file of another recipe
        p = work / f"{onx.stem}.{prec}.{ops}{f'.gelu-{gelu}' if prec == 'int8' else ''}.onnx"
        if not p.exists():
            _log(f"quantizing {label}")
            rep = quantize(
                QuantizeRequest(
                    onx,
                    p,
                    prec,
                    "ort",
                    data=data if prec == "int8" else None,
                    calib_limit=100 if prec == "int8" else None,
                    ops=ops,
                    gelu=gelu,
                    eval_data=data if scored else None,
                    command="benchmarks/quantize.py",
                )
            )
            (p.with_suffix(".notes.json")).write_text(json.dumps({"notes": rep.notes, "details": rep.details}))
        out[label] = p
        records[label] = _record_of(p)
    return out, records


def tflite_variants(ckpt: Path, data: str, work: Path, scored: bool) -> dict[str, Path]:
    """FP32 (litert-torch), FP16 weights, and INT8 through `edgeconv quantize`'s own path: the default op selection
    (auto: int8 wherever XNNPACK runs it) and full-integer (--ops all)."""
    from edgeconv.models import load_model
    from edgeconv.quantize import QuantizeRequest, quantize
    from edgeconv.quantize.tflite import convert_fp32, quantize_tflite

    model, ck = load_model(ckpt)
    pre = ck["preprocessing"]
    fp32 = work / f"{ckpt.stem}.fp32.tflite"
    if not fp32.exists():
        _log("converting TFLite FP32 (litert-torch)")
        convert_fp32(model, pre, fp32)
    out = {"TFLite FP32": fp32}
    fp16 = work / f"{ckpt.stem}.fp16.tflite"
    if not fp16.exists():
        _log("quantizing TFLite fp16")
        quantize_tflite(fp32, fp16, "fp16")
    out["TFLite FP16"] = fp16
    for label, ops in (("TFLite INT8 (default: auto)", "auto"), ("TFLite INT8 (all: full-integer)", "all")):
        p = work / f"{ckpt.stem}.int8.{ops}.tflite"
        if not p.exists():
            _log(f"quantizing {label}")
            rep = quantize(
                QuantizeRequest(
                    ckpt,
                    p,
                    "int8",
                    "tflite",
                    data=data,
                    calib_limit=100,
                    ops=ops,
                    eval_data=data if scored else None,
                    command="benchmarks/quantize.py",
                )
            )
            (p.with_suffix(".notes.json")).write_text(json.dumps({"notes": rep.notes}))
        out[label] = p
    return out


def tflite_timing(runners: dict, x16: np.ndarray, reps: int, reps16: int) -> tuple[dict, dict]:
    """`paired_calls` for TFLite runners at batch 1 (one invoke) and 16 (sixteen: the graphs have batch 1)."""
    ms, ratio = {k: {} for k in runners}, {k: {} for k in runners}
    for b, n in ((1, reps), (16, reps16)):
        calls = {k: r.invoke_prepared(x16[:1]) if b == 1 else (lambda r=r: r(x16)) for k, r in runners.items()}
        b_ms, b_ratio = paired_calls(calls, n, "TFLite FP32")
        for k in runners:
            ms[k][b], ratio[k][b] = b_ms[k], b_ratio[k]
    return ms, ratio


def paired_timing(sessions: dict, x: np.ndarray, reps: int, reference: str) -> tuple[dict, dict]:
    """`paired_calls` for onnxruntime sessions on `x`."""
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    return paired_calls({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}, reps, reference)


def paired_calls(calls: dict, reps: int, reference: str) -> tuple[dict, dict]:
    """Median ms of each call, and the median over `reps` interleaved repetitions of its ratio to `reference`
    within a repetition, with the ratio's 95% bootstrap interval."""
    from edgeconv.common.stats import interleaved_times, paired_ratio

    times = dict(zip(calls, interleaved_times(list(calls.values()), seconds=0, min_runs=reps)))
    return (
        {k: float(np.median(v)) for k, v in times.items()},
        {k: paired_ratio(v, times[reference]) for k, v in times.items()},
    )


def part1(name: str, work: Path, reps_b1: int, reps_b16: int, epochs: int, seeds: list[int]) -> tuple[list, list]:
    from edgeconv.data.sources import load_samples
    from edgeconv.models import load_model
    from edgeconv.quantize.ort import ort_logits, ort_session, top1
    from edgeconv.runtime.tflite import TFLiteRunner

    ckpt, onx, data = make_224(name, work, epochs)
    ort_paths, records = ort_variants(onx, data, work, scored=epochs > 0)
    tfl_paths = tflite_variants(ckpt, data, work, scored=epochs > 0)
    model, ck = load_model(ckpt)
    pre = ck["preprocessing"]
    acc: dict[str, float | None] = {k: None for k in (*ort_paths, *tfl_paths)}
    if epochs:
        test = load_samples("digits", pre, "test")
        xt, yt = test.x.numpy().astype(np.float32), test.y.numpy()
        _log("scoring every artifact on the digits test split")
        for k, p in ort_paths.items():
            acc[k] = top1(ort_logits(ort_session(p, level="extended" if "FP16" in k else "all"), xt, batch=16), yt)
        for k, p in tfl_paths.items():
            acc[k] = top1(TFLiteRunner(p, threads=1)(xt), yt)
    rows = []
    x16 = np.random.default_rng(0).standard_normal((16, pre["channels"], 224, 224)).astype(np.float32)
    sessions = {k: ort_session(p, threads=1, level="extended" if "FP16" in k else "all") for k, p in ort_paths.items()}
    lat: dict[str, dict[int, float]] = {k: {} for k in sessions}
    ort_ratio: dict[str, dict[int, dict]] = {k: {} for k in sessions}
    for b, reps in ((1, reps_b1), (16, reps_b16)):
        _log(f"timing onnxruntime at batch {b} ({reps} interleaved repetitions)")
        ms, ratios = paired_timing(sessions, x16[:b], reps, reference="ORT FP32")
        for k in sessions:
            lat[k][b], ort_ratio[k][b] = ms[k], ratios[k]
    _log(f"timing TFLite at batch 1 and 16 ({reps_b1} and {reps_b16} interleaved repetitions)")
    t_ms, t_ratio = tflite_timing({k: TFLiteRunner(p, threads=1) for k, p in tfl_paths.items()}, x16, reps_b1, reps_b16)
    lat.update(t_ms)
    ort_ratio.update(t_ratio)
    fp32_size = {"ORT": onx.stat().st_size, "TFLite": tfl_paths["TFLite FP32"].stat().st_size}
    fp32_acc = {"ORT": acc["ORT FP32"], "TFLite": acc["TFLite FP32"]}
    for k, p in {**ort_paths, **tfl_paths}.items():
        rt = k.split()[0]
        size = p.stat().st_size
        r = ort_ratio[k]  # every ratio is paired within its runtime (ORT FP32 or TFLite FP32 as reference)
        b1, b16 = (f"{r[b]['ratio']:.2f} [{r[b]['ci'][0]:.2f}, {r[b]['ci'][1]:.2f}]" for b in (1, 16))
        rows.append(
            {
                "model": f"{name} 224",
                "artifact": k,
                "top-1 %": round(acc[k], 2) if acc[k] is not None else "-",
                "drop": round(fp32_acc[rt] - acc[k], 2) if acc[k] is not None else "-",
                "size KiB": round(size / 1024, 1),
                "size vs FP32": round(size / fp32_size[rt], 2),
                "b1 ms": round(lat[k][1], 2),
                "b1 vs FP32 [95% CI]": b1,
                "b16 ms": round(lat[k][16], 1),
                "b16 vs FP32 [95% CI]": b16,
            }
        )
    del model
    defaults = {
        label: (src, backend, paths[label])
        for label, src, backend, paths in (
            ("TFLite INT8 (default: auto)", ckpt, "tflite", tfl_paths),
            ("ORT INT8 (default: portable, auto)", onx, "ort", ort_paths),
        )
    }
    spread = calib_spread(name, defaults, data, seeds) if epochs and seeds else []
    return rows, spread


def part2(ckpts: list[Path], work: Path) -> list[dict]:
    from edgeconv.artifacts import read_checkpoint
    from edgeconv.quantize import BACKENDS, QuantizeRequest, quantize

    rows = []
    for ck in ckpts:
        fam = read_checkpoint(ck)["family"]
        for backend, prec in (("ort", "int8"), ("ort", "fp16"), ("tflite", "int8"), ("tflite", "fp16")):
            out = work / f"{ck.stem}.{backend}.{prec}{BACKENDS[backend].suffixes[0]}"
            t = time.perf_counter()
            if out.exists():  # a rerun reuses finished artifacts: their records hold the measurements
                record = _record_of(out)
            else:
                _log(f"{ck.name}: {backend} {prec}")
                record = quantize(QuantizeRequest(ck, out, prec, backend, command="benchmarks/quantize.py")).record
            acc = record["accuracy"]
            rows.append(
                {
                    "model": f"{fam} ({ck.name})",
                    "artifact": f"{backend} {prec.upper()}",
                    "scored on": f"{acc.get('data')} ({acc.get('n')} images)",
                    "float top-1 %": acc["float_top1"],
                    "quantized top-1 %": acc["quantized_top1"],
                    "drop (points)": acc["drop"],
                    "target": record.get("target") or "-",
                    "size vs float": record["size_bytes"]["ratio"],
                    "If nodes": record.get("if_nodes", "-"),
                    "routing": record.get("routing"),
                    "seconds": round(time.perf_counter() - t, 1),
                }
            )
    return rows


def _record_of(path: Path) -> dict:
    from edgeconv.artifacts.card import read_card

    return read_card(path).quantization or {}


def main() -> None:
    from edgeconv.common.console import console, rows_table
    from edgeconv.runtime.hostcpu import cpu_record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        action="append",
        default=None,
        help="zoo model for the 224x224 latency part (repeatable; default hvt-small and acmix-small)",
    )
    ap.add_argument("--ckpt", action="append", type=Path, default=[], help="checkpoint (digits or fashion) for top-1")
    ap.add_argument("--out", type=Path, default=None, help="work folder (kept; reruns reuse its artifacts)")
    ap.add_argument("--reps", type=int, default=200, help="interleaved onnxruntime repetitions at batch 1")
    ap.add_argument("--reps16", type=int, default=40, help="interleaved onnxruntime repetitions at batch 16")
    ap.add_argument("--skip-224", action="store_true")
    ap.add_argument(
        "--train-epochs",
        type=int,
        default=6,
        help="epochs of digits training for the 224x224 models (0: freshly initialised, RGB)",
    )
    ap.add_argument(
        "--calib-seeds",
        default="0,1,2",
        help="calibration subsets for the spread table, comma-separated seeds ('' to skip)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="edgeconv-qbench-"))
    work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_record()
    where = f"{cpu['model']}, INT8 class {cpu['int8']}"
    result = {"cpu": cpu}
    _log(f"CPU: {where}")
    if not args.skip_224:
        seeds = [int(s) for s in args.calib_seeds.split(",") if s.strip()]
        result["latency_224"], result["calibration_spread"] = [], []
        for name in args.model or ["hvt-small", "acmix-small"]:
            rows, spread = part1(name, work, args.reps, args.reps16, args.train_epochs, seeds)
            result["latency_224"] += rows
            result["calibration_spread"] += spread
        console.print(
            rows_table(
                result["latency_224"],
                title=f"224x224 hybrids on {where} (1 thread; ORT: medians of interleaved repetitions)",
            )
        )
        if result["calibration_spread"]:
            console.print(
                rows_table(
                    result["calibration_spread"],
                    title=f"INT8 top-1 drop by calibration subset (100 of the digits train split) on {where}",
                )
            )
    if args.ckpt:
        result["top1_digits"] = part2(args.ckpt, work)
        console.print(rows_table(result["top1_digits"], title=f"top-1 on each model's own test split on {where}"))
    (work / "quantize_bench.json").write_text(json.dumps(result, indent=2))
    _log(f"results in {work / 'quantize_bench.json'}")


if __name__ == "__main__":
    main()
