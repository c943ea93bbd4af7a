"""Distillation in one process vs two under torchrun (gloo, CPU) at the same global batch and epochs.

    python benchmarks/distributed.py [--work DIR] [--epochs 6] [--batch-size 64] [--seeds 0,1] [--json out.json]

Trains a teacher (routed-tiny, 12 epochs on digits) and prunes it to half its MACs once, then distils the pruned
student from the teacher with each seed, once with `edgeconv distill` and once with `torchrun --nproc-per-node 2
-m edgeconv distill`, and prints test top-1 of both, their difference and wall time. The two runs draw different
batches (a DistributedSampler shards each epoch), so the comparison is between runs, not bit-for-bit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path


def cpu_class() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = sorted(set(re.findall(r"\b(avx512_vnni|avx_vnni|avx2|amx_int8)\b", text)))
    return f"{model.group(1).strip() if model else platform.processor()} ({' '.join(flags) or 'no AVX2'})"


def edgeconv(*args: str, procs: int = 1) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs)), "COLUMNS": "160"}
    cmd = [sys.executable, "-m", "edgeconv", *args]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m",
               "edgeconv.cli", *args]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench-distributed"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    teacher, student = a.work / "teacher.pt", a.work / "pruned.pt"
    print(f"CPU: {cpu_class()}, {os.cpu_count()} cores")
    if not teacher.exists():
        edgeconv("train", "-m", "routed-tiny", "--epochs", "12", "-o", str(teacher))
    if not student.exists():
        edgeconv("prune", str(teacher), "--target-macs", "0.5", "-o", str(student))
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        row = {"seed": seed}
        for procs in (1, 2):
            out, js = a.work / f"kd-s{seed}-p{procs}.pt", a.work / f"kd-s{seed}-p{procs}.json"
            secs = edgeconv("distill", "--teacher", str(teacher), "--student", str(student), "--epochs", str(a.epochs),
                            "--batch-size", str(a.batch_size), "--seed", str(seed), "--no-baseline", "-o", str(out),
                            "--json", str(js), procs=procs)  # fmt: skip
            row[f"top1 {procs}p"] = json.loads(js.read_text())["metrics"]["test_top1"]
            row[f"wall s {procs}p"] = round(secs, 1)
        row["diff (2p - 1p)"] = round(row["top1 2p"] - row["top1 1p"], 2)
        rows.append(row)
        print(row, flush=True)
    teacher_top1 = json.loads((a.work / f"kd-s{rows[0]['seed']}-p1.json").read_text())["metrics"]["teacher_top1"]
    print(f"\nteacher top-1 {teacher_top1:.2f}; distill {a.epochs} epochs, global batch {a.batch_size}, digits test split")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_class(), "teacher_top1": teacher_top1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
