"""`report.md` and `report.json` for a pipeline run: step statuses, one table of models (accuracy, latency,
size; rows merged by model name across steps), the figures steps made (e.g. prune's sensitivity heatmap), and two
made here: accuracy vs latency and the routing mix of routed models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from edgeconv import __version__, artifacts
from edgeconv.measure import tables as reports
from edgeconv.measure.tables import markdown_table

if TYPE_CHECKING:
    from edgeconv.pipeline.config import PipelineConfig
    from edgeconv.pipeline.runner import StepOutcome

TOP1, LATENCY = "top1 %", "latency ms"


def merged_rows(outcomes: list["StepOutcome"]) -> list[dict]:
    """Rows from every step, merged by their "model" key in the order models first appear."""
    rows: dict[str, dict] = {}
    for o in outcomes:
        for r in o.record.get("rows", []):
            rows.setdefault(r["model"], {"model": r["model"]}).update(r)
    return list(rows.values())


def _attn_share(v: dict) -> float:
    attn, conv = float(v.get("attn", 0)), float(v.get("conv", 0))
    return 100 * attn / max(attn + conv, 1e-12)


def routing_mix(outcomes: list["StepOutcome"]) -> dict[str, dict[str, float]]:
    """{model: {router: % of inputs routed to attention}} from every step that measured a routed model.

    Steps report counts or fractions per branch; both become a share here. Runtimes name routers differently
    (PyTorch: the block, ONNX: the `If` node); the k-th router of any model is the k-th routed block (graph order),
    so every model's routers are shown under the PyTorch block names when the counts match.
    """
    mix: dict[str, dict[str, float]] = {}
    for o in outcomes:
        for model, routers in o.record.get("metrics", {}).get("routing", {}).items():
            if routers:
                mix[model] = {name: _attn_share(v) for name, v in routers.items()}
    names = next((list(r) for r in mix.values() if all(n.startswith("blocks.") for n in r)), None)
    if names:
        for model, routers in mix.items():
            if len(routers) == len(names) and list(routers) != names:
                mix[model] = dict(zip(names, routers.values()))
    return mix


def accuracy_latency_png(rows: list[dict], path: Path) -> Path | None:
    """Top-1 against p50 latency for every row that has both; None when none has."""
    pts = [r for r in rows if isinstance(r.get(TOP1), (int, float)) and isinstance(r.get(LATENCY), (int, float))]
    if not pts:
        return None
    return reports.accuracy_latency_png(
        [{"x": r[LATENCY], "y": r[TOP1], "label": r["model"]} for r in pts],
        path,
        xlabel="latency (ms, p50)",
        ylabel="top-1 accuracy (%)",
        title="accuracy vs latency",
        title_size=10,
    )


def routing_mix_png(mix: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Share of inputs routed to attention, per routed block, one bar per model."""
    if not mix:
        return None
    plt = reports.pyplot()
    blocks = list(dict.fromkeys(b for routers in mix.values() for b in routers))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(blocks) * len(mix) + 2.5), 3.4))
    width = 0.8 / len(mix)
    for j, (model, routers) in enumerate(mix.items()):
        shares = [routers.get(b, math.nan) for b in blocks]
        ax.bar([i + j * width for i in range(len(blocks))], shares, width, label=model)
    ax.set_xticks([i + width * (len(mix) - 1) / 2 for i in range(len(blocks))])
    ax.set_xticklabels(blocks, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("inputs routed to attention (%)")
    ax.set_title("routing mix (the rest take the conv path)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return reports.save_png(fig, path, dpi=110)


MODEL_COLUMNS = ["model", "format", TOP1, "agree %", LATENCY, "p90 ms", "size KiB", "params"]
CONSOLE_COLUMNS = ["model", TOP1, "agree %", LATENCY, "size KiB"]


def table_columns(rows: list[dict]) -> list[str]:
    present = list(dict.fromkeys(k for r in rows for k in r))
    return [c for c in MODEL_COLUMNS if c in present] + [c for c in present if c not in MODEL_COLUMNS]


def write_report(run_dir: Path, cfg: "PipelineConfig", outcomes: list["StepOutcome"]) -> dict:
    """Write report.json and report.md (with PNGs) into the run folder; returns the report dict."""
    rows = merged_rows(outcomes)
    mix = routing_mix(outcomes)
    figures: dict[str, str] = {}
    for o in outcomes:
        for f in o.record.get("figures", []):
            figures[f"{o.step}: {Path(f).stem.replace('_', ' ')}"] = f
    acc = accuracy_latency_png(rows, run_dir / "accuracy_vs_latency.png")
    if acc:
        figures["accuracy vs latency"] = acc.name
    rm = routing_mix_png(mix, run_dir / "routing_mix.png")
    if rm:
        figures["routing mix"] = rm.name
    steps = []
    for o in outcomes:
        d = o.to_dict()
        d["outputs"] = o.record.get("outputs", [])
        d["metrics"] = o.record.get("metrics", {})
        d["made_in_seconds"] = o.record.get("seconds")
        steps.append(d)
    report = {
        "pipeline": cfg.pipeline.name,
        "source": cfg.source,
        "edgeconv": __version__,
        "config": cfg.to_dict(),
        "steps": steps,
        "models": rows,
        "routing": mix,
        "figures": figures,
    }
    artifacts.atomic_write_json(run_dir / "report.json", report)

    md = [
        f"# edgeconv pipeline `{cfg.pipeline.name}`",
        "",
        f"Pipeline file: `{cfg.source}`; data: `{cfg.pipeline.data}`; edgeconv {__version__}.",
        "",
        "## Steps",
        "",
        markdown_table(
            [
                {
                    "step": s["step"],
                    "status": s["status"],
                    "seconds (this run)": s["seconds"],
                    "seconds (when made)": s["made_in_seconds"],
                    "key": s["key"][:12],
                }
                for s in steps
            ]
        ),
        "",
    ]
    if rows:
        md += ["## Models", "", markdown_table(rows, table_columns(rows)), ""]
    if mix:
        blocks = list(dict.fromkeys(b for routers in mix.values() for b in routers))
        mix_rows = [{"model": m, **{f"{b} attn %": routers.get(b) for b in blocks}} for m, routers in mix.items()]
        md += [
            "## Routing mix",
            "",
            "Share of test inputs each routed block sends to its attention path.",
            "",
            markdown_table(mix_rows),
            "",
        ]
    if figures:
        md += ["## Figures", ""]
        for title, f in figures.items():
            md += [f"### {title}", "", f"![{title}]({f})", ""]
    artifacts.atomic_write_text(run_dir / "report.md", "\n".join(md))
    return report


def print_summary(result) -> None:
    """The end-of-run tables on the console: step statuses, then the models table."""
    from edgeconv.common.console import console, rows_table

    steps = [
        {"step": o.step, "status": o.status, "seconds": round(o.seconds, 1), "note": o.message or ""}
        for o in result.outcomes
    ]
    console.print(rows_table(steps, title="steps"))
    rows = result.report.get("models", [])
    if rows:
        cols = [c for c in CONSOLE_COLUMNS if any(c in r for r in rows)]
        if any(r.get("status", "ok") != "ok" for r in rows):
            cols += ["status", "note"]
        console.print(rows_table(rows, title=f"{result.report['pipeline']}: models", columns=cols))
    console.print(f"report: {result.run_dir / 'report.md'} (and report.json)", markup=False, highlight=False)
