"""Pruning benchmark: accuracy vs MAC reduction for every criterion (before fine-tuning), distillation at chosen
points, and onnxruntime latency of the pruned/distilled models against the original, side by side in one run.

    python benchmarks/prune.py A.pt B.pt --out bench_prune [--reductions 0.2,0.35,0.5,0.65,0.8] [--kd-at 0.5]

MAC reduction r means `--target-macs 1-r` (MACs counted with count_params_macs, routed blocks with both branches).
`random` is averaged over --random-seeds seeds (min..max shown). KD uses the gradient-pruned model as student and the
original as teacher; its row also shows the same student fine-tuned without KD. Latency: ONNX (edgeconv export, routing
as If) in onnxruntime, batch 1, --ort-threads intra-op threads, rounds interleaved across models, median per model;
every exported file also goes through `validate_onnx` (checker, shapes, parity with PyTorch, If coverage, batch).
Writes results.json, curves.png and the checkpoints/ONNX files under --out; prints the tables. Users' timm hybrids
have their own section: benchmarks/prune_timm.py (an image folder, streamed, in the timm venv).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from edgeconv import artifacts
from edgeconv.artifacts.formats import FORMATS
from edgeconv.common.console import console, rows_table
from edgeconv.common.errors import EdgeconvError
from edgeconv.compress.distill import DistillConfig, run_distill
from edgeconv.compress.prune import PruneRequest, prune_model
from edgeconv.data.sources import load_samples
from edgeconv.data.spec import BUNDLED
from edgeconv.models import load_model
from edgeconv.train.loop import TrainConfig, evaluate

CRITERIA = ("gradient", "taylor", "l1", "random")


def data_of(pre: dict) -> str:
    """The bundled set a checkpoint was trained on (digits or fashion), which its rows are scored on."""
    data = pre.get("dataset") or "digits"
    if data not in BUNDLED:
        raise SystemExit(f"benchmarks/prune.py scores bundled sets ({', '.join(BUNDLED)}); this model was trained on {data}")
    return data


def accuracy_curves(ckpt: Path, reductions: list[float], seeds: int, batches: int, batch_size: int) -> dict:
    model, ck = load_model(ckpt)
    pre = ck["preprocessing"]
    data = data_of(pre)
    train, test = load_samples(data, pre, "train"), load_samples(data, pre, "test")
    base = evaluate(model, test)["top1"]
    curves: dict[str, list] = {c: [] for c in CRITERIA}
    for r in reductions:
        for crit in CRITERIA:
            accs = []
            for seed in range(seeds if crit == "random" else 1):
                req = PruneRequest(
                    target_macs=round(1 - r, 6), criterion=crit, seed=seed, batches=batches, batch_size=batch_size
                )
                try:
                    pruned, plan = prune_model(model, pre, train, req)
                except EdgeconvError as e:
                    accs = None
                    reason = str(e)
                    break
                accs.append(evaluate(pruned, test)["top1"])
            curves[crit].append(
                {
                    "reduction": r,
                    "top1": None if accs is None else statistics.mean(accs),
                    "min": None if accs is None else min(accs),
                    "max": None if accs is None else max(accs),
                    "note": reason if accs is None else "",
                }
            )
    return {"base_top1": base, "curves": curves}


def ort_latency_ms(paths: dict[str, Path], pre: dict, rounds: int, runs: int, threads: int) -> dict[str, float]:
    import numpy as np

    from edgeconv.runtime.onnxrt import session

    sessions = {k: session(p, threads=threads) for k, p in paths.items()}
    x = load_samples(data_of(pre), pre, "test").x[:1].numpy().astype(np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():  # warm-up
        for _ in range(20):
            s.run(None, feeds[k])
    for _ in range(rounds):  # interleaved, so machine load drifts hit every model alike
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(runs):
                s.run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) / runs * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def export_and_validate(ckpt: Path, onnx_path: Path, data: str) -> str:
    from edgeconv.export.onnx import export_onnx
    from edgeconv.measure.validate import validate_onnx

    export_onnx(str(ckpt), onnx_path)
    rep = validate_onnx(onnx_path, against=ckpt, data=data, split="test", limit=120)
    failed = [c.name for c in rep.checks if c.status == "FAILED"]
    return "PASSED" if rep.passed else "FAILED: " + ", ".join(failed)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        for crit, pts in res["curves"].items():
            xs = [100 * p["reduction"] for p in pts if p["top1"] is not None]
            ys = [p["top1"] for p in pts if p["top1"] is not None]
            ax.plot(xs, ys, marker="o", label=crit)
            if crit == "random":
                lo = [p["min"] for p in pts if p["top1"] is not None]
                hi = [p["max"] for p in pts if p["top1"] is not None]
                ax.fill_between(xs, lo, hi, alpha=0.15, color=ax.lines[-1].get_color())
        for kd in res.get("kd", []):
            ax.plot(
                100 * kd["mac_reduction"],
                kd["after_kd"],
                marker="*",
                markersize=14,
                color="black",
                linestyle="none",
                label=f"gradient + KD ({kd['epochs']} ep)",
            )
        ax.axhline(res["base_top1"], color="grey", linestyle="--", linewidth=1, label="original")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("MAC reduction %")
        ax.set_ylabel(f"{res.get('data', 'digits')} test top-1 % (before fine-tuning)")
        ax.set_ylim(0, 101)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "ckpts", nargs="+", type=Path, help="trained checkpoints (each scored on the bundled set it was trained on)"
    )
    ap.add_argument("--out", type=Path, default=Path("bench_prune"))
    ap.add_argument("--reductions", default="0.2,0.35,0.5,0.65,0.8")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=64, help="calibration batches (gradient, taylor)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--kd-at", default="0.5", help="MAC reductions to distil at (comma list; empty = none)")
    ap.add_argument("--kd-epochs", type=int, default=4)
    ap.add_argument("--no-baseline", action="store_true", help="skip fine-tuning without KD")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    ap.add_argument("--ort-threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reductions = [float(r) for r in args.reductions.split(",") if r]
    kd_at = [float(r) for r in args.kd_at.split(",") if r]
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict[str, dict] = {}
    lat_rows, curve_rows, kd_rows = [], [], []
    for ckpt in args.ckpts:
        ck = artifacts.read_checkpoint(ckpt)
        name = f"{ck['family']}-{ck['config'].get('variant')} ({ckpt.name})"
        console.print(f"[bold]{name}[/]: accuracy vs MAC reduction, {len(CRITERIA)} criteria")
        res = accuracy_curves(ckpt, reductions, args.random_seeds, args.batches, args.batch_size)
        for i, r in enumerate(reductions):
            row = {"model": name, "MAC red. %": f"{100 * r:.0f}"}
            for crit in CRITERIA:
                p = res["curves"][crit][i]
                row[crit] = (
                    "unreachable"
                    if p["top1"] is None
                    else (f"{p['top1']:.1f} ({p['min']:.1f}..{p['max']:.1f})" if crit == "random" else f"{p['top1']:.1f}")
                )
            g, rnd = res["curves"]["gradient"][i]["top1"], res["curves"]["random"][i]["top1"]
            row["gradient - random"] = "-" if g is None or rnd is None else f"{g - rnd:+.1f}"
            curve_rows.append(row)
        stem = ckpt.stem
        onnx_paths = {"original": args.out / f"{stem}.onnx"}
        data = data_of(ck["preprocessing"])
        status = {"original": export_and_validate(ckpt, onnx_paths["original"], data)}
        res["kd"] = []
        for r in kd_at:
            pruned_ck = args.out / f"{stem}.p{int(100 * r)}.pt"
            from edgeconv.compress.prune import run_prune

            pr = run_prune(
                str(ckpt),
                data,
                PruneRequest(target_macs=round(1 - r, 6), batches=args.batches, batch_size=args.batch_size),
                str(pruned_ck),
                command="benchmarks/prune.py",
            )
            kd_ck = args.out / f"{stem}.p{int(100 * r)}.kd.pt"
            kd = run_distill(
                str(ckpt),
                str(pruned_ck),
                data,
                str(kd_ck),
                dcfg=DistillConfig(),
                tcfg=TrainConfig(epochs=args.kd_epochs, lr=1e-3),
                baseline=not args.no_baseline,
                command="benchmarks/prune.py",
            )
            by = {row["model"].split(" (")[0]: row["top1 %"] for row in kd["rows"]}
            rec = {
                "mac_reduction": pr["report"]["mac_reduction"],
                "teacher": by["teacher"],
                "before_kd": by["student before KD"],
                "after_kd": by["student after KD"],
                "finetune_no_kd": by.get("student fine-tuned without KD"),
                "epochs": args.kd_epochs,
            }
            res["kd"].append(rec)
            kd_rows.append(
                {
                    "model": name,
                    "MAC red. %": f"{100 * rec['mac_reduction']:.1f}",
                    "teacher": rec["teacher"],
                    "pruned (no FT)": rec["before_kd"],
                    f"+KD {args.kd_epochs} ep": rec["after_kd"],
                    f"+FT no KD {args.kd_epochs} ep": rec["finetune_no_kd"],
                    "KD - teacher (pt)": f"{rec['after_kd'] - rec['teacher']:+.2f}",
                }
            )
            for key, path in ((f"pruned {100 * r:.0f}%", pruned_ck), (f"pruned {100 * r:.0f}% + KD", kd_ck)):
                onnx_paths[key] = args.out / (path.stem + FORMATS["onnx"].suffix)
                status[key] = export_and_validate(path, onnx_paths[key], data)
        lat = ort_latency_ms(onnx_paths, ck["preprocessing"], args.rounds, args.runs, args.ort_threads)
        res["latency_ms"], res["validate"] = lat, status
        for k, v in lat.items():
            lat_rows.append(
                {
                    "model": name,
                    "ONNX": k,
                    "ORT ms (b1)": round(v, 4),
                    "vs original": f"{v / lat['original']:.2f}x",
                    "validate": status[k],
                }
            )
        res["data"] = data
        results[name] = res
    plot(results, args.out / "curves.png")
    artifacts.atomic_write_json(
        args.out / "results.json", {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    )
    sets = ", ".join(sorted({r.get("data", "digits") for r in results.values()}))
    console.print(rows_table(curve_rows, title=f"{sets} test top-1 % before fine-tuning (random: mean (min..max))"))
    if kd_rows:
        console.print(rows_table(kd_rows, title="distillation of the gradient-pruned model (teacher = original)"))
    console.print(
        rows_table(
            lat_rows,
            title=f"onnxruntime latency, batch 1, {args.ort_threads} thread(s), "
            f"median of {args.rounds} interleaved rounds x {args.runs} runs",
        )
    )
    console.print(f"wrote {args.out / 'curves.png'}, {args.out / 'results.json'} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
