"""Commands that run whole pipelines: `pipeline FILE.toml` and `demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgeconv.cli.app import app
from edgeconv.common.checks import (
    check_inputs,
    check_output_dirs,
)
from edgeconv.common.console import console, rows_table


@app.command("pipeline")
def pipeline_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="Pipeline file (.toml)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder (default runs/NAME)."),
    check: bool = typer.Option(False, "--check", help="Only check the file; run nothing."),
    rerun: list[str] = typer.Option(
        [], "--rerun", help="Run this step even if cached (repeatable), e.g. --rerun bench to measure again."
    ),
) -> None:
    """Run train -> prune -> distill -> export -> quantize -> validate -> bench from one TOML file.

    Steps whose inputs and options are unchanged are re-used; the run ends with report.md and report.json.
    Example: edgeconv pipeline my.toml --run-dir runs/my
    """
    check_inputs({"FILE": file})
    check_output_dirs({"--run-dir": run_dir})
    from edgeconv.pipeline import load_pipeline, run_pipeline
    from edgeconv.pipeline.summary import print_summary

    cfg = load_pipeline(file)
    if check:
        console.print(
            rows_table([{"step": s.name, "options": json.dumps(vars(s.options))} for s in cfg.steps], title=f"{file}: OK")
        )
        return
    print_summary(run_pipeline(cfg, run_dir, rerun=rerun))


@app.command("demo")
def demo_cmd(
    run_dir: Path = typer.Option(Path("runs/demo"), "--run-dir", help="Run folder."),
    show: bool = typer.Option(False, "--show", help="Print the demo pipeline file and exit."),
) -> None:
    """The shipped demo: digits, routed-tiny, train -> prune -> distill -> export -> quantize -> validate -> bench.

    Example: edgeconv demo
    """
    check_output_dirs({"--run-dir": run_dir})
    from edgeconv.pipeline import demo_pipeline_path, load_pipeline, run_pipeline
    from edgeconv.pipeline.summary import print_summary

    path = demo_pipeline_path()
    if show:
        typer.echo(path.read_text())
        return
    print_summary(run_pipeline(load_pipeline(path), run_dir))
