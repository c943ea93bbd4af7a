"""Shared rich console and table helpers (every command prints through these)."""

from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.2f}"
    return "-" if v is None else str(v)


def rows_table(rows: list[dict], title: str | None = None, columns: Iterable[str] | None = None) -> Table:
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    t = Table(title=title, header_style="bold cyan")
    for c in cols:
        t.add_column(c, justify="left" if rows and isinstance(rows[0].get(c), str) else "right")
    for r in rows:
        t.add_row(*[fmt(r.get(c)) for c in cols])
    return t


def sections_table(sections: dict[str, dict], title: str | None = None) -> Table:
    t = Table(title=title, show_header=False, header_style="bold cyan")
    t.add_column("section", style="bold")
    t.add_column("key")
    t.add_column("value", overflow="fold")
    for sec, kv in sections.items():
        first = True
        for k, v in kv.items():
            t.add_row(sec if first else "", str(k), fmt(v))
            first = False
    return t
