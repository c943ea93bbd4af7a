"""What the report files share: GitHub Markdown tables of rows and the accuracy-vs-latency PNG (matplotlib, Agg,
imported only when a figure is drawn). Used by the pipeline's report.md and by `edgeconv bench --md/--plot`."""

from __future__ import annotations

from pathlib import Path

from edgeconv.artifacts import atomic_path
from edgeconv.common.console import fmt


def md_cell(v) -> str:
    """One Markdown table cell: the console's number format, `|` escaped."""
    return fmt(v).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as a GitHub Markdown table (no trailing newline); columns default to every key, first seen first."""
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(md_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: float | None = None) -> Path:
    """Lay out, write atomically as PNG (at the figure's dpi unless given) and close the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (lower latency x, higher accuracy y), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def accuracy_latency_png(
    points: list[dict],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    title_size: float | None = None,
    figsize: tuple[float, float] = (5.5, 3.6),
    dpi: float = 110,
    layout_dpi: float | None = None,
    log_x: bool | None = None,
    size: float = 40,
    font_size: float = 8,
    stagger: bool = False,
    pareto: bool = False,
) -> Path:
    """Accuracy (y) against latency (x), one annotated dot per point; returns `path`.

    A point is {"x", "y", "label"} plus optional dot style: "marker", "color" (default: the next of matplotlib's
    cycle) and "legend" (its legend entry, once per style). log_x None: a log axis only when x spans more than 20x.
    `stagger` alternates label offsets (points often share a y); `pareto` rings the front, joins it with a step and
    draws the dots above the grid.
    A legend is drawn when some point has an entry or the front is shown. Written at `dpi`, laid out at `layout_dpi`
    (None: matplotlib's default; tight_layout measures the text at it).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize, dpi=layout_dpi)
    for i, p in enumerate(points):
        ax.scatter(
            p["x"],
            p["y"],
            marker=p.get("marker"),
            color=p.get("color"),
            s=size,
            label=p.get("legend"),
            zorder=3 if pareto else None,
        )
        ax.annotate(
            p["label"],
            (p["x"], p["y"]),
            textcoords="offset points",
            xytext=(5, 4 if not stagger or i % 2 == 0 else -10),
            fontsize=font_size,
        )
    if pareto:
        pts = [(p["x"], p["y"]) for p in points]
        fx = sorted((pts[i] for i in pareto_front(pts)), key=lambda q: q[0])
        ax.scatter(
            [q[0] for q in fx],
            [q[1] for q in fx],
            s=180,
            facecolors="none",
            edgecolors="black",
            lw=1.2,
            label=f"Pareto front ({len(fx)} row{'s' if len(fx) != 1 else ''})",
            zorder=4,
        )
        if len(fx) > 1:
            ax.step([q[0] for q in fx], [q[1] for q in fx], where="post", color="black", ls="--", lw=1, zorder=2)
    xs = [p["x"] for p in points]
    if log_x or (log_x is None and min(xs) > 0 and max(xs) / min(xs) > 20):
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, **({"fontsize": title_size} if title_size else {}))
    ax.grid(True, alpha=0.3)
    if pareto or any(p.get("legend") for p in points):
        ax.legend(loc="best", fontsize=8)
    return save_png(fig, path, dpi)
