"""Bench results out: the rich table, JSON/CSV/Markdown files (written atomically), a latency-vs-accuracy PNG with
the Pareto front, and `--compare` deltas against a saved baseline JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgeconv.artifacts import atomic_write_json, atomic_write_text
from edgeconv.common.errors import EdgeconvError
from edgeconv.measure.tables import accuracy_latency_png, markdown_table, md_cell

# (row key, column title) in table order; the JSON keeps every key
COLUMNS = [
    ("model", "model"),
    ("backend", "backend"),
    ("device", "device"),
    ("precision", "precision"),
    ("batch", "batch"),
    ("status", "status"),
    ("top1", "top1 %"),
    ("delta_top1", "Δtop1"),
    ("agree", "agree %"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("p90_over_p50", "p90/p50"),
    ("throughput_ips", "img/s"),
    ("mem_mib", "ΔRSS MiB"),
    ("size_kib", "size KiB"),
    ("params", "params"),
    ("macs_m", "MACs M"),
    ("attn_share", "attn %"),
    ("power_w", "power W"),
    ("energy_mj_per_img", "mJ/img"),
]
ROW_KEY = ("model", "backend", "device", "precision", "batch")


def display_rows(rows: list[dict]) -> list[dict]:
    """Rows with the table's titles; unavailable/failed rows carry their reason in the status cell."""
    out = []
    for r in rows:
        r = dict(r)
        if r.get("macs") is not None:
            r["macs_m"] = r["macs"] / 1e6
        tele = r.get("tegrastats") or {}
        if tele.get("power_mw_mean") is not None:
            r["power_w"] = tele["power_mw_mean"] / 1e3
        d = {title: r.get(key) for key, title in COLUMNS}
        if isinstance(d["params"], int):
            d["params"] = f"{d['params']:,}"
        out.append(d)
    used = [title for key, title in COLUMNS if any(x.get(title) is not None for x in out)]
    return [{k: x.get(k) for k in used} for x in out]


def print_table(result: dict, console=None, title: str | None = None) -> None:
    from edgeconv.common.console import console as default_console
    from edgeconv.common.console import rows_table

    con = console or default_console
    data = result.get("data", {})
    ref = result.get("reference", {})
    st = result.get("settings", {})
    title = title or (
        f"bench on {data.get('source')} (n={data.get('n')}), reference "
        f"{Path(ref['path']).name if ref.get('path') else 'none'} "
        f"top1 {ref['top1']:.2f}%"
        if ref.get("top1") is not None
        else f"bench on {data.get('source')} (n={data.get('n')}), no float reference"
    )
    con.print(rows_table(display_rows(result["rows"]), title=title))
    # reasons under the table, once each: they are long and would squeeze every column
    seen: dict[str, list[str]] = {}
    for r in result["rows"]:
        if r.get("status") != "ok":
            seen.setdefault(f"{r['status']}: {r.get('reason', '')}", []).append(f"{r['model']} {r['backend']} {r['device']}")
    from rich.markup import escape

    for reason, where in seen.items():
        con.print(f"[yellow]{escape(reason)}[/] [dim]({escape(', '.join(dict.fromkeys(where)))})[/]", highlight=False)
    con.print(
        f"[dim]latency per call of one batch: {st.get('warmup')} warm-up + {st.get('iters')} timed calls, "
        f"{st.get('threads')} thread(s), clock {st.get('clock')}; img/s = batch x calls / total time; "
        f"ΔRSS = resident memory growth while the row ran[/]"
    )


def write_json(result: dict, path: Path) -> Path:
    return atomic_write_json(path, result)


def write_csv(result: dict, path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in result["rows"] for k in r if k not in ("routing", "tegrastats")))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
        w.writerow({k: r.get(k) for k in keys})
    return atomic_write_text(path, buf.getvalue())


def markdown(result: dict) -> str:
    rows = display_rows(result["rows"])
    st, data, ref, dev = (
        result.get("settings", {}),
        result.get("data", {}),
        result.get("reference", {}),
        result.get("device", {}),
    )
    cpu = dev.get("cpu", {})
    lines = [
        "# edgeconv bench",
        "",
        f"- data: {data.get('source')} (n={data.get('n')}, sha256 {str(data.get('sha256'))[:12]})",
        f"- float reference: {ref.get('path')} (top-1 {md_cell(ref.get('top1'))} %)",
        f"- device: {cpu.get('model')} ({cpu.get('usable_cores')} usable cores, ISA {cpu.get('isa')}); "
        f"CUDA: {dev.get('cuda', {}).get('name') or dev.get('cuda', {}).get('reason')}",
        f"- latency: {st.get('warmup')} warm-up + {st.get('iters')} timed calls per row, {st.get('threads')} "
        f"thread(s), clock {st.get('clock')}",
        "",
        markdown_table(rows),
    ]
    reasons = dict.fromkeys(
        f"- {r['model']} {r['backend']} {r['device']}: {r['status']}, {r.get('reason')}"
        for r in result["rows"]
        if r.get("status") != "ok"
    )
    if reasons:
        lines += ["", "Rows not measured:", *reasons]
    return "\n".join(lines) + "\n"


def write_md(result: dict, path: Path) -> Path:
    return atomic_write_text(path, markdown(result))


COLORS = {"torch": "tab:blue", "ort": "tab:green", "tflite": "tab:orange", "tensorrt": "tab:red"}  # backend family
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}


def write_plot(result: dict, path: Path) -> Path:
    """Latency per image (p50 / batch) against top-1 for every measured row; the Pareto front is drawn as a line."""
    ok = [r for r in result["rows"] if r.get("status") == "ok" and r.get("top1") is not None and r.get("p50_ms")]
    if not ok:
        raise EdgeconvError("nothing to plot: no row was measured with labelled data")
    points, labelled = [], set()
    for r in ok:
        fam = r["backend"].split(":")[0]
        key = (fam, r["precision"])
        points.append(
            {
                "x": r["p50_ms"] / r["batch"],
                "y": r["top1"],
                "label": f"{r['model']} {r['backend']} b{r['batch']}",
                "marker": MARKERS.get(r["precision"], "D"),
                "color": COLORS.get(fam, "tab:gray"),
                "legend": f"{fam} {r['precision']}" if key not in labelled else None,
            }
        )
        labelled.add(key)
    return accuracy_latency_png(
        points,
        path,
        xlabel="latency per image, p50 / batch (ms, log scale)",
        ylabel=f"top-1 % on {result.get('data', {}).get('source')}",
        title="edgeconv bench: latency vs accuracy",
        figsize=(9, 5.5),
        dpi=120,
        layout_dpi=120,
        log_x=True,
        size=45,
        font_size=7,
        stagger=True,
        pareto=True,
    )


def load_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EdgeconvError(f"no such file: {path}")
    except ValueError as e:
        raise EdgeconvError(f"{path}: not a bench JSON ({e})")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise EdgeconvError(f"{path}: not a bench JSON (no 'rows' list); write one with edgeconv bench --json")
    return data


def _key(r: dict) -> tuple:
    return tuple(r.get(k) for k in ROW_KEY)


def compare(result: dict, baseline: dict) -> list[dict]:
    """Per matching row: p50 then -> now, the change, the spread (largest p90 - p50 of the two runs) and whether
    the change stays inside it; top-1 then -> now."""
    base = {_key(r): r for r in baseline["rows"] if r.get("status") == "ok"}
    out = []
    for r in result["rows"]:
        b = base.get(_key(r))
        if r.get("status") != "ok" or b is None:
            continue
        d = r["p50_ms"] - b["p50_ms"]
        spread = max(r["p90_ms"] - r["p50_ms"], b["p90_ms"] - b["p50_ms"])
        out.append(
            {
                "model": r["model"],
                "backend": r["backend"],
                "device": r["device"],
                "precision": r["precision"],
                "batch": r["batch"],
                "p50 base": b["p50_ms"],
                "p50 now": r["p50_ms"],
                "Δp50 %": 100 * d / b["p50_ms"] if b["p50_ms"] else None,
                "spread ms": spread,
                "within spread": "yes" if abs(d) <= spread else "NO",
                "top1 base": b.get("top1"),
                "top1 now": r.get("top1"),
                "Δtop1": (r["top1"] - b["top1"]) if r.get("top1") is not None and b.get("top1") is not None else None,
            }
        )
    return out
