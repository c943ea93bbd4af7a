"""Pruning users' timm hybrids: gradient vs random at the same MACs before fine-tuning, then distillation.

    .venv-timm/bin/python benchmarks/prune_timm.py [--models levit_128s,efficientvit_m0,...] [--work DIR]
        [--size 64] [--train 2000] [--val 500] [--epochs 6] [--kd-epochs 3] [--target-macs 0.5] [--min-keep 0.25]

The timm part of the pruning benchmark (`benchmarks/prune.py` is the zoo's, on digits in memory). Writes an
ImageNet-layout folder of digits JPEGs at mixed sizes, trains each model briefly from random init as the teacher
(`edgeconv train -m timm:NAME`, timm's pretrained preprocessing), prunes it to `--target-macs` with the gradient
criterion and with the random one (--random-seeds seeds), scores both on the held-out split before any fine-tuning,
distils the gradient-pruned student from the teacher, exports and validates it, and prints one table. Runs in the
timm venv. MACs are edgeconv's count (`count_params_macs`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed import cpu_class  # noqa: E402

DEFAULT_MODELS = "levit_128s,efficientvit_m0,mobilevitv2_050,deit_tiny_patch16_224"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-prune-timm"))
    ap.add_argument("--data", default=None, help="digits, or a data spec (default: a generated digits JPEG folder)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--kd-epochs", type=int, default=3)
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--random-seeds", type=int, default=2)
    ap.add_argument("--min-keep", type=float, default=0.0, help="per-layer floor of the plans (prune --min-keep)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import torch

    from edgeconv import artifacts
    from edgeconv.common.console import console, rows_table
    from edgeconv.common.errors import EdgeconvError
    from edgeconv.compress.distill import DistillConfig, run_distill
    from edgeconv.compress.prune import PruneRequest, prune_model
    from edgeconv.data.sources import load_samples
    from edgeconv.export.onnx import export_onnx
    from edgeconv.measure.validate import validate_onnx
    from edgeconv.models import count_params_macs, load_model
    from edgeconv.train.loop import TrainConfig, evaluate, run_train

    a.work.mkdir(parents=True, exist_ok=True)
    console.print(f"CPU: {cpu_class()}, {os.cpu_count()} cores, torch {torch.__version__}")
    data = a.data
    if data is None:
        folder = a.work / "digits"
        if not folder.exists():
            subprocess.run([sys.executable, "-m", "edgeconv.data.digitsfolder", str(folder), "--train", str(a.train),
                            "--val", str(a.val), "--no-progress"], check=True)  # fmt: skip
        data = f"imagefolder:{folder}"
    chans = 1 if data == "digits" else 3
    rows, records = [], []
    for name in a.models.split(","):
        t0 = time.perf_counter()
        teacher = a.work / f"{name}.pt"
        if not teacher.exists():
            run_train(f"timm:{name}", data, str(teacher), cfg=TrainConfig(epochs=a.epochs, lr=a.lr, batch_size=64),
                      img_size=a.size, in_chans=chans, command="benchmarks/prune_timm.py")  # fmt: skip
        model, ck = load_model(teacher)
        pre = ck["preprocessing"]
        calib = load_samples(data, pre, "train", classes=ck["classes"]).stratified(512, seed=0)
        test = load_samples(data, pre, "test", classes=ck["classes"])
        test.x  # decoded once for the repeated evaluations  # noqa: B018
        top_teacher = evaluate(model, test)["top1"]
        macs0 = count_params_macs(model, pre)[1]
        req = dict(target_macs=a.target_macs, min_keep=a.min_keep, batches=32, batch_size=8)
        try:
            pruned, plan = prune_model(model, pre, calib, PruneRequest(criterion="gradient", **req))
        except EdgeconvError as e:  # e.g. a target below what the prunable units allow: say so, go on
            rec = {"model": name, "teacher": round(top_teacher, 2), "result": str(e)[:160]}
            records.append(rec)
            console.print(rows_table([rec], title=name))
            continue
        macs1 = count_params_macs(pruned, pre)[1]
        top_grad = evaluate(pruned, test)["top1"]
        top_rand = []
        for seed in range(a.random_seeds):
            rp, _ = prune_model(model, pre, calib, PruneRequest(criterion="random", seed=seed, **req))
            top_rand.append(evaluate(rp, test)["top1"])
        tag = f".keep{a.min_keep:g}" if a.min_keep else ""  # runs with another floor keep their own students
        student = a.work / f"{name}{tag}.pruned.pt"
        prov = artifacts.provenance("benchmarks/prune_timm.py", str(teacher), ck)
        artifacts.save_checkpoint(student, pruned, preprocessing=pre, classes=ck["classes"], provenance_rec=prov)
        kd_out = a.work / f"{name}{tag}.kd.pt"
        kd = run_distill(str(teacher), str(student), data, str(kd_out), dcfg=DistillConfig(),
                         tcfg=TrainConfig(epochs=a.kd_epochs, lr=1e-3, batch_size=64), baseline=False,
                         command="benchmarks/prune_timm.py", show_progress=False)  # fmt: skip
        top_kd = next(r["top1 %"] for r in kd["rows"] if r["model"].startswith("student after KD"))
        onnx = export_onnx(kd_out, a.work / f"{name}{tag}.kd.onnx").path
        report = validate_onnx(onnx, data=data, limit=64)
        heads = [lp for lp in plan.layers if lp.kind == "heads"]
        rec = {
            "model": name,
            "min keep": a.min_keep,
            "MACs kept %": round(100 * macs1 / macs0, 1),
            "heads kept": f"{sum(len(lp.keep) for lp in heads)}/{sum(lp.size for lp in heads)}",
            "teacher": round(top_teacher, 2),
            "gradient (no FT)": round(top_grad, 2),
            "random (no FT)": f"{statistics.mean(top_rand):.2f} ({min(top_rand):.1f}..{max(top_rand):.1f})",
            f"+KD {a.kd_epochs} ep": round(top_kd, 2),
            "KD - teacher": f"{top_kd - top_teacher:+.2f}",
            "validate": "passed" if report.passed else "FAILED",
            "minutes": round((time.perf_counter() - t0) / 60, 1),
        }
        rows.append(rec)
        records.append({**rec, "random_runs": top_rand, "plan_notes": plan.notes[:5]})
        console.print(rows_table([rec], title=name))
    if rows:
        console.print(rows_table(rows, title=f"timm hybrids pruned to {a.target_macs:.0%} of the MACs ({cpu_class()})"))
    for rec in records:
        if "result" in rec:
            console.print(f"{rec['model']}: {rec['result']}", highlight=False)
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_class(), "args": vars(a) | {"work": str(a.work), "json": str(a.json)},
                                      "rows": records}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
