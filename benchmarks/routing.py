"""ONNX routing latency on onnxruntime CPU, side by side in one run.

Graphs of one routed model (random weights; the routers' last layer is set so every input routes one way):
  (a) gated, routed to conv      - `If` nodes, only the conv branch runs
  (b) gated, routed to attention - `If` nodes, only the attention branch runs
  (c) soft                       - both branches, weighted (the training graph)
  (d) static:conv                - the conv branch only, no router, no `If`
  (e) router, no If              - graph (a) with every top-level `If` replaced by its conv branch: the router still
                                   runs, nothing is dispatched. (a)/(e) is the cost of the `If` itself, (e)/(d) the
                                   cost of the router and of scaling by its probability.
Repetitions are interleaved (a, b, c, d, a, b, ...) so machine noise hits every graph alike; medians and ratios are
printed for each onnxruntime optimisation level asked for. Every graph runs in several sessions (`--sessions`, their
times averaged, all rebuilt every `--fresh-every` repetitions), and graph (d) is timed a second time in sessions of
its own: that copy's ratio to (d) is the resolution of the measurement. The summary gives each overhead as the
median with a 95% bootstrap confidence interval, and calls the `If` target met only when the whole interval is under
5%. The process is pinned to one core (`--cpu`), since onnxruntime's single intra-op thread is the calling thread.

Targets: gated-conv <= 0.6x soft; the `If` costs <= 5% over static:conv (gated-conv / static-conv <= 1.05).

The default model is routed-small at 224x224 with a 28x28 token grid (`--token-grid 28`, a stride-8 stem), a size
where the routed blocks dominate; `--token-grid 16` measures the zoo default (14x14, where the stem is a large
fixed cost).

Run: .venv/bin/python benchmarks/routing.py [--model routed-small] [--img-size 224] [--token-grid 28]
     [--levels all,extended] [--reps 80] [--sessions 3] [--fresh-every 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeconv.common.console import console, rows_table
from edgeconv.common.stats import median_ci
from edgeconv.export.onnx import export_onnx
from edgeconv.measure.validate import ort_session
from edgeconv.models import create_model, routers

ROUTE_LOGIT = 8.0  # softmax(+8, -8) ~ (1, 1e-7): a confident decision, the same for every input
COPY = "static:conv, 2nd copy"  # graph (d) timed again in sessions of its own


def force_route(model: torch.nn.Module, route: str) -> None:
    """Make every router of `model` choose `route` (conv | attn) for any input: zero weights, biased logits."""
    sign = 1.0 if route == "conv" else -1.0
    with torch.no_grad():
        for _, block in routers(model):
            block.router.fc2.weight.zero_()
            block.router.fc2.bias.copy_(torch.tensor([sign * ROUTE_LOGIT, -sign * ROUTE_LOGIT]))


def swap_route_bias(onnx_path: Path, out: Path) -> int:
    """Copy of a gated graph forced to conv, with the router biases flipped so it routes to attention.

    Returns how many bias initialisers were flipped (identical router biases may share one initialiser after
    simplification; the caller checks the result against PyTorch routed to attention)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    n = 0
    want = np.array([ROUTE_LOGIT, -ROUTE_LOGIT], np.float32)
    for init in proto.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if arr.shape == (2,) and np.array_equal(arr, want):
            init.CopyFrom(onnx.numpy_helper.from_array(-arr, init.name))
            n += 1
    onnx.save_model(proto, str(out))
    return n


def inline_conv_branches(onnx_path: Path, out: Path) -> int:
    """Copy of a gated graph with each top-level `If` replaced by the nodes of its conv branch (then_branch).

    The router and the predicate stay (their outputs are extra graph outputs, so they run where they did), so timing
    this graph against the gated one isolates what dispatching the `If` costs. Returns how many `If` nodes were
    inlined."""
    import copy

    import onnx
    from onnx import helper

    proto = onnx.load(str(onnx_path))
    g = proto.graph
    have = {t.name for t in g.initializer}
    nodes, conds = [], []
    for node in g.node:
        if node.op_type != "If":
            nodes.append(node)
            continue
        conds.append(node.input[0])
        branch = next(a.g for a in node.attribute if a.name == "then_branch")
        for t in branch.initializer:  # branches of different blocks may hold same-named copies of one weight
            if t.name not in have:
                g.initializer.append(copy.deepcopy(t))
                have.add(t.name)
        nodes.extend(copy.deepcopy(b) for b in branch.node)
        nodes.extend(helper.make_node("Identity", [b.name], [o]) for b, o in zip(branch.output, node.output))
    del g.node[:]
    g.node.extend(nodes)
    # each inlined `If`'s condition becomes a graph output: otherwise the router is dead code that onnxruntime
    # runs after everything else, keeping every block input alive to the end
    g.output.extend(helper.make_tensor_value_info(c, onnx.TensorProto.BOOL, []) for c in conds)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(out))
    return len(conds)


def check_graph(path: Path, model: torch.nn.Module, x: np.ndarray, mode: str) -> float:
    """Max abs difference between onnxruntime and PyTorch (the benchmark only times graphs that are right)."""
    from edgeconv.models import set_routing

    set_routing(model, mode)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = ort_session(path).run(None, {"input": x})[0]
    return float(np.abs(ref - got).max())


LEVELS = {  # name -> (onnxruntime level, optimisers to disable)
    "all": ("all", []),
    "all-nonchwc": ("all", ["NchwcTransformer"]),  # ENABLE_ALL without the NCHWc blocked layout
    "extended": ("extended", []),
}


def pin_to_one_cpu(cpu: int | None) -> str:
    """Run the benchmark on one core (onnxruntime's single intra-op thread is the caller's): a process that
    migrates between cores refills caches and adds noise to a few-percent difference."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    cpus = sorted(os.sched_getaffinity(0))
    chosen = cpus[cpu % len(cpus)] if cpu >= 0 else cpus[-1]
    os.sched_setaffinity(0, {chosen})
    return f"pinned to cpu {chosen}"


def make_session(path: Path, level: str, threads: int | None):
    from edgeconv.runtime.onnxrt import session, session_options

    if level not in LEVELS:
        raise SystemExit(f"unknown level {level!r} ({', '.join(LEVELS)})")
    ort_level, disabled = LEVELS[level]
    so = session_options(ort_level)
    if threads:
        so.intra_op_num_threads = threads
    return session(path, options=so, disabled_optimizers=disabled)


def time_interleaved(
    graphs: dict[str, Path],
    x: np.ndarray,
    level: str,
    reps: int,
    runs: int,
    threads: int | None,
    sessions: int = 3,
    fresh_every: int = 0,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per-repetition mean latency (ms) of every graph, and per-repetition ratios to soft and to static:conv.

    Ratios are taken within a repetition (graphs timed back to back, in a shuffled order) so that load changes on
    a shared machine cancel out; their medians are the numbers to compare. Each graph is timed through `sessions`
    separate onnxruntime sessions and their times averaged: where a session's buffers land in memory moves one
    session's latency by 1-2% for good, so a single session per graph cannot resolve a few percent. With
    `fresh_every` N > 0 every session is rebuilt after each N repetitions, so that offset becomes noise the median
    sees through instead of a bias that stays for the whole run (the "static:conv, 2nd copy" row shows what is left
    of it)."""
    import random

    def build() -> dict[tuple[str, int], object]:
        made = {(k, i): make_session(p, level, threads) for k, p in graphs.items() for i in range(sessions)}
        for s in made.values():  # warm-up: first runs allocate and pick kernels
            for _ in range(3):
                s.run(None, feeds)
        return made

    feeds = {"input": x}
    sess = build()
    times: dict[str, list[float]] = {k: [] for k in graphs}
    ratios: dict[str, list[float]] = {}
    order = list(sess)
    rng = random.Random(0)
    for r in range(reps):
        if fresh_every and r and r % fresh_every == 0:
            sess = None  # free the old sessions before building new ones: memory stays that of one set
            sess = build()
        rng.shuffle(order)
        rep: dict[str, float] = dict.fromkeys(graphs, 0.0)
        for key in order:
            s = sess[key]
            t0 = time.perf_counter()
            for _ in range(runs):
                s.run(None, feeds)
            rep[key[0]] += (time.perf_counter() - t0) / runs * 1e3 / sessions
        for k, v in rep.items():
            times[k].append(v)
            for ref in ("soft", "static:conv", "router, no If"):
                ratios.setdefault(f"{k} / {ref}", []).append(v / rep[ref])
    return times, ratios


def _summary_table(summary: dict[str, dict[str, str]]):
    """One row per measure, one column per optimisation level (fits an 80-column terminal)."""
    from rich.table import Table

    t = Table(title="routing targets (median [95% bootstrap CI])", header_style="bold cyan")
    t.add_column("measure")
    for level in summary:
        t.add_column(level, justify="right")
    for key in next(iter(summary.values())):
        t.add_row(key, *[summary[level][key] for level in summary])
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="routed-small")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--depth", type=int, default=None, help="override the number of routed blocks")
    ap.add_argument("--dim", type=int, default=None, help="override the block width (routed family)")
    ap.add_argument(
        "--token-grid",
        type=int,
        default=28,
        help="largest token grid the stem may leave (routed family; 28: 28x28 at 224; the zoo's 16: 14x14)",
    )
    ap.add_argument(
        "--levels",
        default="all,all-nonchwc,extended",
        help=f"onnxruntime optimisation settings to measure ({', '.join(LEVELS)})",
    )
    ap.add_argument("--reps", type=int, default=25, help="interleaved repetitions (median reported)")
    ap.add_argument("--runs", type=int, default=2, help="runs per repetition")
    ap.add_argument("--sessions", type=int, default=3, help="onnxruntime sessions per graph (their times averaged)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: ORT's default)")
    ap.add_argument(
        "--fresh-every",
        type=int,
        default=10,
        help="rebuild every session after this many repetitions (0: one set of sessions for the run)",
    )
    ap.add_argument(
        "--cpu",
        type=int,
        default=-1,
        help="pin the process to the Nth core it may run on (-1: the last one; with --threads 1 only)",
    )
    ap.add_argument("--work", type=Path, default=None, help="keep the exported graphs here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    overrides = {k: v for k, v in (("depth", args.depth), ("token_grid", args.token_grid), ("dim", args.dim)) if v}
    model = create_model(args.model, num_classes=1000, in_chans=args.in_chans, img_size=args.img_size, **overrides)
    if not routers(model):
        raise SystemExit(f"{args.model} has no routers")
    force_route(model, "conv")
    pre = {
        "size": args.img_size,
        "channels": args.in_chans,
        "mean": [0.5] * args.in_chans,
        "std": [0.25] * args.in_chans,
        "layout": "NCHW",
    }
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeconv_routing_"))
    work.mkdir(parents=True, exist_ok=True)
    graphs = {
        "gated->conv": work / "gated_conv.onnx",
        "gated->attn": work / "gated_attn.onnx",
        "soft": work / "soft.onnx",
        "static:conv": work / "static_conv.onnx",
        "router, no If": work / "router_no_if.onnx",
    }
    for key, routing in (("gated->conv", "gated"), ("soft", "soft"), ("static:conv", "static:conv")):
        if not graphs[key].exists():
            t0 = time.perf_counter()
            res = export_onnx(model, graphs[key], routing=routing, preprocessing=pre)
            console.print(f"exported {key}: {res.if_nodes} If nodes, {time.perf_counter() - t0:.0f} s")
    flipped = swap_route_bias(graphs["gated->conv"], graphs["gated->attn"])
    if not inline_conv_branches(graphs["gated->conv"], graphs["router, no If"]):
        raise SystemExit("the gated graph has no top-level If to inline")
    if flipped == 0:
        raise SystemExit("no router bias found in the gated graph; cannot make a routed-to-attention copy")

    x = np.random.default_rng(0).standard_normal((1, args.in_chans, args.img_size, args.img_size)).astype(np.float32)
    errs = {
        "gated->conv": check_graph(graphs["gated->conv"], model, x, "hard"),
        "soft": check_graph(graphs["soft"], model, x, "soft"),
        "static:conv": check_graph(graphs["static:conv"], model, x, "static:conv"),
        "router, no If": check_graph(graphs["router, no If"], model, x, "hard"),
    }
    force_route(model, "attn")
    errs["gated->attn"] = check_graph(graphs["gated->attn"], model, x, "hard")
    bad = {k: v for k, v in errs.items() if not v <= 1e-3}
    if bad:
        raise SystemExit(f"graphs disagree with PyTorch, not timing them: {bad}")
    # the same static graph again, in sessions of its own: how far apart two identical graphs time is the
    # resolution of every ratio below
    graphs[COPY] = graphs["static:conv"]

    params = sum(p.numel() for p in model.parameters())
    pinned = pin_to_one_cpu(args.cpu if args.threads == 1 else None)
    rebuilt = f"rebuilt every {args.fresh_every} reps" if args.fresh_every > 0 else "never rebuilt"
    grid = f", token grid {args.token_grid} max" if args.token_grid else ""
    console.print(
        f"model {args.model} depth {len(routers(model))}{grid} at {args.in_chans}x{args.img_size}x"
        f"{args.img_size}, {params / 1e6:.2f} M params, batch 1; onnxruntime "
        f"{__import__('onnxruntime').__version__}, {args.reps} interleaved reps x {args.runs} runs x "
        f"{args.sessions} sessions ({rebuilt}), {args.threads} thread(s), "
        f"{pinned}; "
        f"max |ORT - PyTorch| {max(errs.values()):.1e}"
    )
    summary: dict[str, dict[str, str]] = {}
    for level in [s.strip() for s in args.levels.split(",") if s.strip()]:
        times, ratios = time_interleaved(
            graphs, x, level, args.reps, args.runs, args.threads, args.sessions, args.fresh_every
        )
        med = {k: statistics.median(v) for k, v in times.items()}
        rmed = {k: statistics.median(v) for k, v in ratios.items()}
        rows = [
            {
                "graph": k,
                "median ms": round(v, 2),
                "vs soft": round(rmed[f"{k} / soft"], 3),
                "vs static:conv": round(rmed[f"{k} / static:conv"], 3),
            }
            for k, v in med.items()
        ]
        console.print(rows_table(rows, title=f"onnxruntime CPU, level {level} (ratios: medians of per-rep ratios)"))

        overhead_key = "gated->conv / static:conv"
        ci = {
            k: median_ci(ratios[k])
            for k in (overhead_key, "gated->conv / router, no If", "router, no If / static:conv", f"{COPY} / static:conv")
        }

        def pct(key: str) -> str:
            lo, hi = ci[key]
            return f"{100 * (rmed[key] - 1):.1f} [{100 * (lo - 1):.1f}, {100 * (hi - 1):.1f}]"

        conv_soft = rmed["gated->conv / soft"]
        overhead = rmed[overhead_key] - 1
        # the If target needs the whole confidence interval under 5%, not only the median
        if_verdict = "met" if ci[overhead_key][1] - 1 <= 0.05 else ("median only" if overhead <= 0.05 else "NOT met")
        summary[level] = {
            "gated->conv ms": f"{med['gated->conv']:.2f}",
            "gated->conv / soft": f"{conv_soft:.3f}",
            "If overhead vs static:conv %": pct(overhead_key),
            "  of which If dispatch %": pct("gated->conv / router, no If"),
            "  of which router + scale %": pct("router, no If / static:conv"),
            "copy of static:conv % (resolution)": pct(f"{COPY} / static:conv"),
            "target gated->conv <= 0.6x soft": "met" if conv_soft <= 0.6 else "NOT met",
            "target If overhead <= 5% (CI)": if_verdict,
        }
    if summary:
        console.print(_summary_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
