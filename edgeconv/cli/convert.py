"""Commands that write deployable files: `export` (ONNX) and `quantize` (INT8 / FP16 per backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from edgeconv.artifacts.formats import is_format
from edgeconv.cli.app import _command, app
from edgeconv.common.checks import (
    check_folders,
    check_inputs,
    check_opset,
    check_outputs,
)
from edgeconv.common.console import console, err_console, rows_table, sections_table
from edgeconv.common.errors import EdgeconvError
from edgeconv.common.options import cli_options
from edgeconv.common.settings import (
    ExportSettings,
)
from edgeconv.data.spec import check_data
from edgeconv.quantize import BACKENDS as QBACKENDS
from edgeconv.quantize import QuantizeSettings


@app.command("export")
@cli_options(ExportSettings, name="s")
def export_cmd(
    ckpt: Path = typer.Argument(..., metavar="CKPT", help="Checkpoint (.pt) to export."),
    out: Path = typer.Option(..., "-o", "--out", help="ONNX file to write (.onnx)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the export summary as JSON."),
    s: ExportSettings = None,
) -> None:
    """Export a checkpoint to ONNX; a routed model's routers become If nodes (gated subgraphs).

    Example: edgeconv export model.pt -o model.onnx --routing gated
    """
    check_inputs({"CKPT": ckpt})
    check_outputs({"-o": out, "--json": json_out}, {"CKPT": ckpt})
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not is_format(out, "onnx"):
        raise EdgeconvError(f"-o {out}: the output file must end in .onnx")
    check_opset(s.opset, "--opset")
    from edgeconv import artifacts
    from edgeconv.export.onnx import export_onnx

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]export[/] {task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("loading", total=None)
        res = export_onnx(
            ckpt,
            out,
            routing=s.routing,
            opset=s.opset,
            dynamic_batch=s.dynamic_batch,
            simplify=s.simplify,
            metadata={"command": _command()},
            on_step=lambda what: bar.update(task, description=what),
        )
    console.print(sections_table({"exported": res.row()}, title=str(out)))
    for note in res.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if json_out:
        artifacts.atomic_write_json(json_out, res.to_dict())


# ------------------------------------------------------------------------------------------------ quantize
@app.command("quantize")
@cli_options(QuantizeSettings, name="settings")
def quantize_cmd(
    model: Path = typer.Argument(..., metavar="MODEL", help="Checkpoint (.pt, exported first) or ONNX from `export`."),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Artifact: .onnx (ort), .tflite, .engine or .onnx (tensorrt: the TensorRT-ready ONNX only)."
    ),
    int8: bool = typer.Option(False, "--int8", help="INT8, calibrated on real samples."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16."),
    backend: str = typer.Option("ort", "--backend", "-b", help=" | ".join(QBACKENDS)),
    data: Optional[str] = typer.Option(
        None, "--data", help="Calibration from a data spec instead (digits | imagefolder:PATH | npz:PATH; train split)."
    ),
    eval_data: Optional[str] = typer.Option(
        None, "--eval", help="Labelled data for accuracy (default for digits models: digits test split)."
    ),
    routing: Optional[str] = typer.Option(None, help="Export routing when MODEL is a checkpoint."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the quantization record as JSON."),
    settings: QuantizeSettings = None,
) -> None:
    """Quantize a model to INT8 or FP16 for onnxruntime, TFLite or TensorRT and report what it cost in accuracy.

    Example: edgeconv quantize model.pt --int8 --backend ort -o model.int8.onnx
    """
    check_inputs({"MODEL": model})
    check_data({"--data": data, "--eval": eval_data})
    check_folders({"--calib": settings.calib})
    check_outputs({"-o": out, "--json": json_out}, {"MODEL": model})
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgeconv import artifacts
    from edgeconv.quantize import quantize, request_from

    if int8 == fp16:
        raise EdgeconvError("choose exactly one of --int8 or --fp16")
    req = request_from(
        settings,
        model=model,
        out=out,
        precision="int8" if int8 else "fp16",
        backend=backend,
        data=data,
        eval_data=eval_data,
        routing=routing,
        command=_command(),
    )
    with Progress(
        SpinnerColumn(),
        TextColumn(f"[bold]quantize {escape(backend)}[/] {{task.description}}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("checking inputs", total=None)
        rep = quantize(req, on_step=lambda what: bar.update(task, description=what))
    console.print(rows_table(rep.rows, title=f"quantized: {out}"))
    if rep.details:
        console.print(rows_table(rep.details, title="kept in float / checks"))
    for title, rows in rep.tables:
        console.print(rows_table(rows, title=title))
    for note in rep.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if json_out:
        artifacts.atomic_write_json(json_out, rep.record)
