"""The `edgeconv` command line: thin commands over the library, in pipeline order.

Every user-facing failure is an `EdgeconvError`, printed as one line with exit code 2.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

# each command module adds its commands to the app (the app module imports none of them)
from edgeconv.cli import compress, convert, measure, models, pipeline  # noqa: F401
from edgeconv.cli.app import app
from edgeconv.common.console import err_console
from edgeconv.common.errors import EdgeconvError

# --help lists the commands in pipeline order, whichever module defines them
COMMAND_ORDER = (
    "models", "train", "import", "eval", "prune", "distill", "export", "quantize", "validate", "bench", "inspect",
    "pipeline", "demo", "info",
)  # fmt: skip
app.registered_commands.sort(key=lambda c: COMMAND_ORDER.index(c.name) if c.name in COMMAND_ORDER else len(COMMAND_ORDER))


class Interrupted(BaseException):
    """Ctrl-C, raised by our SIGINT handler: not a KeyboardInterrupt, which Typer turns into a silent exit 130, and
    not an Exception, which library code may catch."""


def _on_sigint(signum, frame) -> None:
    raise Interrupted()


INTERRUPTED = (
    "[bold red]interrupted[/]: no partial file was written (every write is atomic); outputs finished "
    "before the interrupt are kept"
)


def _error(text: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(' '.join(text.split()))}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point: one readable line and exit code 2 for user errors (ours and the parser's: a bad
    option value, an unknown option), 130 when interrupted."""
    import signal

    try:
        from typer._click import exceptions as click  # typer 0.2x carries its own copy of click
    except ImportError:  # older typer runs on click itself
        from click import exceptions as click

    signal.signal(signal.SIGINT, _on_sigint)
    try:
        code = app(standalone_mode=False, prog_name="edgeconv")
    except EdgeconvError as e:
        _error(str(e))
        sys.exit(2)
    except click.NoArgsIsHelpError as e:  # `edgeconv` alone: the help, as before
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:  # parser errors: one line, not a box, and where to look
        ctx = getattr(e, "ctx", None)
        _error(e.format_message() + (f" (see: {ctx.command_path} --help)" if ctx is not None else ""))
        sys.exit(e.exit_code)
    except (Interrupted, KeyboardInterrupt, typer.Abort):
        err_console.print(INTERRUPTED)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
