"""The Typer app, its global options and the helpers commands share (`--routing`, the command line recorded)."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.markup import escape

from edgeconv import __version__
from edgeconv.common.console import console
from edgeconv.common.errors import EdgeconvError

ROUTING_HELP = "gated (default) | soft | select | static:conv | static:attn"

app = typer.Typer(
    name="edgeconv",
    help="Take hybrid conv + attention vision models to edge devices: "
    "train -> prune -> distill -> export -> quantize -> validate -> bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        console.print(f"edgeconv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    workers: Optional[int] = typer.Option(
        None, help="DataLoader worker processes that decode image folders (default: min(8, CPUs); 0: in process)."
    ),
    bad_images: str = typer.Option("skip", help="Unreadable files in image folders: skip (counted, listed) | fail."),
    holdout: Optional[float] = typer.Option(
        None, help="Share of each class a flat class-folder tree holds out (default: the model's recorded, else 0.2)."
    ),
    split_seed: Optional[int] = typer.Option(
        None, help="Seed of a flat class-folder tree's train/held-out split (default: the model's recorded, else 0)."
    ),
    trust_module: list[str] = typer.Option(
        [], help="package.module:factory whose code may be imported to rebuild a checkpoint (repeatable)."
    ),
) -> None:
    from edgeconv.common.settings import configure  # torch-free, like every check before a command's own work
    from edgeconv.common.trust import trust

    configure(workers=workers, bad_images=bad_images, holdout=holdout, split_seed=split_seed)
    for name in trust_module:
        trust(name)


def _print_skipped(rec: dict | None) -> None:
    """One line about unreadable image files a step skipped (they are listed in its JSON / checkpoint)."""
    if rec and rec.get("skipped"):
        first = rec["skipped_files"][0]
        example = f"{escape(first['path'])} ({escape(first['error'])})"
        console.print(f"skipped {rec['skipped']} unreadable file(s) of {rec['files']}, e.g. {example}", highlight=False)


def _routing(name: str | None) -> str | None:
    """A --routing value in the one routing vocabulary (models/routed.py), or one line naming the choices."""
    from edgeconv.models.routed import ROUTING_MODES, routing_mode

    if name is None:
        return None
    try:
        return routing_mode(name)
    except ValueError:
        raise EdgeconvError(f"--routing {name!r}: unknown; choose one of: {', '.join(ROUTING_MODES)}") from None


def _command() -> str:
    return " ".join(["edgeconv", *sys.argv[1:]])
