"""Train every tiny zoo family with the default `edgeconv train` settings and report accuracy and cost.

    .venv/bin/python benchmarks/zoo.py                      # all tiny families, 30 epochs (~1 min each, 2 cores)
    .venv/bin/python benchmarks/zoo.py --families routed,can --epochs 5 --out runs/zoo-quick

For each family: params and MACs at 1x32x32, wall-clock training seconds, test top-1 on the digits test split with
the model's inference routing (hard for `routed`), and for routed models the test top-1 with soft routing and the
share of test inputs each router sent to attention. Writes zoo.json and zoo.md next to the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def measure_family(family: str, out_dir: Path, epochs: int, threads: int, reuse: bool = False) -> dict:
    from edgeconv import artifacts
    from edgeconv.data.sources import load_samples
    from edgeconv.models import count_params_macs, load_model, routers, set_routing
    from edgeconv.train.loop import TrainConfig, evaluate, run_train

    name = f"{family}-tiny"
    ckpt_path, row_path = out_dir / f"{name}.pt", out_dir / f"{name}.json"
    if reuse and row_path.exists():
        row = json.loads(row_path.read_text())
        if row.get("epochs") == epochs:
            return row
    cfg = TrainConfig(epochs=epochs)  # the defaults `edgeconv train` uses
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    run_train(name, "digits", str(ckpt_path), cfg=cfg, command=f"benchmarks/zoo.py train {name}")
    # wall includes data loading and the val/test evaluation after training; CPU seconds (all threads) stay
    # meaningful when other processes share the cores, wall seconds do not
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load = max(load0, os.getloadavg()[0])
    model, ck = load_model(ckpt_path)
    params, macs = count_params_macs(model, ck["preprocessing"])
    test = load_samples("digits", ck["preprocessing"], "test")
    hard = evaluate(model, test)
    row = {
        "family": family,
        "epochs": epochs,
        "params": params,
        "MACs (M)": round(macs / 1e6, 2),
        "train s": ck["metrics"]["train_seconds"],
        "wall s": round(wall, 1),
        "CPU s": round(cpu, 1),
        "load avg": round(load, 1),
        "test top-1 %": round(hard["top1"], 2),
        "soft top-1 %": None,
        "hard-soft": None,
        "attn share %": None,
    }
    if routers(model):
        n_attn = sum(v["attn"] for v in hard["routing"].values())
        n_all = sum(v["attn"] + v["conv"] for v in hard["routing"].values())
        row["attn share %"] = round(100 * n_attn / max(1, n_all), 1)
        set_routing(model, "soft")
        soft = evaluate(model, test)
        row["soft top-1 %"] = round(soft["top1"], 2)
        row["hard-soft"] = round(hard["top1"] - soft["top1"], 2)
    artifacts.atomic_write_json(row_path, row)
    return row


def to_markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append(
            "| " + " | ".join("-" if r[c] is None else (f"{r[c]:,}" if c == "params" else str(r[c])) for c in cols) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    from edgeconv import artifacts
    from edgeconv.common.console import console, rows_table
    from edgeconv.models import families

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="", help="comma-separated (default: every zoo family except timm)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the acceptance budget is 2 cores)")
    ap.add_argument("--out", type=Path, default=Path("runs/zoo"))
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="use a family's measured row from an earlier run in --out (same epochs) instead of training",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [f for f in args.families.split(",") if f] or [f for f in families() if f != "timm"]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fam in names:
        console.print(f"[bold]{fam}-tiny[/]: training {args.epochs} epochs on digits")
        rows.append(measure_family(fam, args.out, args.epochs, args.threads, args.reuse))
        console.print(rows_table(rows[-1:]))
    console.print(
        rows_table(rows, title=f"zoo: tiny variants, digits test split, {args.epochs} epochs, {args.threads} threads")
    )
    artifacts.atomic_write_json(args.out / "zoo.json", rows)
    artifacts.atomic_write_text(args.out / "zoo.md", to_markdown(rows))
    below = [r["family"] for r in rows if r["test top-1 %"] < 95.0]
    if below:
        console.print(f"[red]below 95% top-1:[/] {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
