"""Shared rich console and table helpers (every command prints through these)."""

from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

# No emoji codes ever: a path like `a:smile:b.pt` prints as typed. Markup stays for our own styling, so every user
# string printed inside markup goes through rich.markup.escape; tables take their cells and titles as plain Text.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def plain(text: str | None) -> Text | None:
    """User-derived text as rich Text: printed literally, never read as markup."""
    return None if text is None else Text(str(text))


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.2f}"
    return "-" if v is None else str(v)


def rows_table(rows: list[dict], title: str | None = None, columns: Iterable[str] | None = None) -> Table:
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    t = Table(title=plain(title), header_style="bold cyan")
    for c in cols:
        t.add_column(plain(c), justify="left" if rows and isinstance(rows[0].get(c), str) else "right")
    for r in rows:
        t.add_row(*[Text(fmt(r.get(c))) for c in cols])
    return t


def sections_table(sections: dict[str, dict], title: str | None = None) -> Table:
    t = Table(title=plain(title), show_header=False, header_style="bold cyan")
    t.add_column("section", style="bold")
    t.add_column("key")
    t.add_column("value", overflow="fold")
    for sec, kv in sections.items():
        first = True
        for k, v in kv.items():
            t.add_row(Text(sec if first else ""), Text(str(k)), Text(fmt(v)))
            first = False
    return t
