"""The `edgeconv` command line: thin commands over the library, in pipeline order.

Every user-facing failure is an `EdgeconvError`, printed as one line with exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from edgeconv import __version__
from edgeconv.common.console import console, err_console, rows_table, sections_table
from edgeconv.common.errors import EdgeconvError
from edgeconv.artifacts.formats import check_content, is_format
from edgeconv.common.options import cli_options
from edgeconv.common.checks import (
    check_data,
    check_folders,
    check_input_shape,
    check_inputs,
    check_number,
    check_opset,
    check_output_dirs,
    check_outputs,
    check_training,
)
from edgeconv.quantize import BACKENDS as QBACKENDS
from edgeconv.quantize import QuantizeSettings
from edgeconv.common.settings import (
    DATA_HELP,
    BenchSettings,
    DistillSettings,
    ExportSettings,
    PruneSettings,
    TrainSettings,
    ValidateSettings,
)

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


# ------------------------------------------------------------------------------------------------ models / train / eval
@app.command("models")
def models_cmd(
    img_size: int = typer.Option(32, help="Input size used to count MACs."),
    in_chans: int = typer.Option(1, help="Input channels used to count MACs."),
) -> None:
    """List model families and sizes with params and MACs.

    Example: edgeconv models --img-size 224 --in-chans 3
    """
    check_input_shape(img_size, in_chans)
    from edgeconv.models import count_params_macs, create_model, families

    rows = []
    for fam in families().values():
        for v in fam.variants:
            m = create_model(f"{fam.name}-{v}", in_chans=in_chans, img_size=img_size)
            p, macs = count_params_macs(m, {"channels": in_chans, "size": img_size})
            rows.append(
                {
                    "model": f"{fam.name}-{v}",
                    "params": f"{p:,}",
                    "MACs": f"{macs / 1e6:.1f} M",
                    "routed": "yes" if fam.routed else "",
                    "what": fam.description,
                }
            )
    for name, what in (
        ("timm:NAME", "any timm model (optional extra), pretrained=False, weights from a local file"),
        ("package.module:factory", "your own nn.Module, built by your function (edgeconv import ... brings weights)"),
    ):
        rows.append({"model": name, "params": "", "MACs": "", "routed": "", "what": what})
    console.print(rows_table(rows, title=f"edgeconv model zoo at {in_chans}x{img_size}x{img_size}"))


@app.command("train")
@cli_options(TrainSettings, name="s")
def train_cmd(
    model: str = typer.Option("routed-tiny", "--model", "-m", help="Zoo name (family-size) or timm:NAME."),
    data: str = typer.Option("digits", help=DATA_HELP),
    out: Path = typer.Option(..., "-o", "--out", help="Checkpoint to write (.pt)."),
    seed: int = typer.Option(0),
    in_chans: int = typer.Option(1, min=1, help="Input channels for imagefolder/npz data (3 for RGB)."),
    weights: Optional[Path] = typer.Option(None, help="Initial weights for a timm model (state dict)."),
    resume: Optional[Path] = typer.Option(None, help="Continue training from this checkpoint."),
    s: TrainSettings = None,
) -> None:
    """Train a model on real data and write a self-describing checkpoint.

    Example: edgeconv train --model routed-tiny --data digits -o model.pt
    """
    check_input_shape(s.img_size, in_chans)
    check_training(
        epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay, label_smoothing=s.label_smoothing
    )
    check_inputs({"--weights": weights, "--resume": resume})
    check_data({"--data": data})
    check_outputs({"-o": out}, {"--weights": weights})
    from edgeconv.train.loop import TrainConfig, run_train

    cfg = TrainConfig.from_settings(s, seed)
    res = run_train(
        model,
        data,
        str(out),
        cfg=cfg,
        img_size=s.img_size,
        in_chans=in_chans,
        resume=str(resume) if resume else None,
        weights=str(weights) if weights else None,
        command=_command(),
    )
    if res is None:  # a torchrun worker other than rank 0
        return
    data_rec = res.pop("train_data", None)
    console.print(rows_table([res], title="trained"))
    _print_skipped(data_rec)


@app.command("import")
def import_cmd(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="timm:NAME or package.module:factory (your function returning the nn.Module)."
    ),
    weights: Path = typer.Argument(
        ..., metavar="WEIGHTS", help="State dict, timm training file ({'state_dict': ...}) or {'model': ...}."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="edgeconv checkpoint to write (.pt)."),
    classes: str = typer.Option(..., help="Class count (10), names (cat,dog,...) or @file with one name per line."),
    img_size: Optional[int] = typer.Option(None, help="Input size (default: timm's pretrained config)."),
    in_chans: int = typer.Option(3, help="Input channels."),
    mean: Optional[str] = typer.Option(None, help="Per-channel mean, comma-separated (default: timm's config)."),
    std: Optional[str] = typer.Option(None, help="Per-channel std, comma-separated (default: timm's config)."),
    interpolation: Optional[str] = typer.Option(None, help="Resize filter: bilinear | bicubic | ... (default: timm's)."),
    crop_pct: Optional[float] = typer.Option(None, help="Centre-crop fraction for evaluation (default: timm's)."),
    ema: bool = typer.Option(False, help="Take the EMA weights (state_dict_ema) of a timm training file."),
) -> None:
    """Bring your own trained model: weights + how to build it become a self-describing checkpoint.

    Example: edgeconv import timm:deit_tiny_patch16_224 model_best.pth.tar --classes 10 -o deit.pt
    """
    from edgeconv.common.checks import check_number_list
    from edgeconv.common.settings import INTERPOLATIONS

    check_input_shape(img_size, in_chans)
    check_inputs({"WEIGHTS": weights})
    check_outputs({"-o": out}, {"WEIGHTS": weights})
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise EdgeconvError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    check_number("--crop-pct", crop_pct, min=0.05, max=1.0)
    overrides = {
        "mean": check_number_list("--mean", mean),
        "std": check_number_list("--std", std, positive=True),
        "interpolation": interpolation,
        "crop_pct": crop_pct,
    }
    from edgeconv.models.importer import import_checkpoint, parse_classes

    res = import_checkpoint(
        model,
        weights,
        out,
        classes=parse_classes(classes),
        img_size=img_size,
        in_chans=in_chans,
        overrides=overrides,
        ema=ema,
        command=_command(),
    )
    console.print(rows_table([{k: v for k, v in res.items() if k != "sha256"}], title="imported"))


def _print_skipped(rec: dict | None) -> None:
    """One line about unreadable image files a step skipped (they are listed in its JSON / checkpoint)."""
    if rec and rec.get("skipped"):
        first = rec["skipped_files"][0]
        example = f"{escape(first['path'])} ({escape(first['error'])})"
        console.print(f"skipped {rec['skipped']} unreadable file(s) of {rec['files']}, e.g. {example}", highlight=False)


@app.command("eval")
def eval_cmd(
    ckpt: Path = typer.Argument(..., metavar="CKPT", help="Checkpoint (.pt)."),
    data: Optional[str] = typer.Option(None, help=DATA_HELP + " (default: what the model was trained on)"),
    split: Optional[str] = typer.Option(
        None,
        help="train | val | test | all (default: test; a class tree the model was not trained on: all of it).",
    ),
    routing: Optional[str] = typer.Option(None, help=ROUTING_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
) -> None:
    """Evaluate a checkpoint: top-1, loss, per-class accuracy, routing mix.

    Example: edgeconv eval model.pt --data digits --split test
    """
    check_inputs({"CKPT": ckpt})
    check_data({"--data": data})
    check_outputs({"--json": json_out}, {"CKPT": ckpt})
    from edgeconv import artifacts
    from edgeconv.models import load_model
    from edgeconv.data.sources import data_for, load_samples, split_for
    from edgeconv.models import set_routing
    from edgeconv.train.loop import evaluate

    routing = _routing(routing)
    model, ck = load_model(ckpt)
    if routing:
        if not set_routing(model, routing):
            raise EdgeconvError(f"{ckpt}: model has no router, --routing does not apply")
    data = data_for(data, ck["preprocessing"], "eval")
    split = split_for(data, "evaluate", split, trained_on=ck["preprocessing"].get("dataset") or "")
    samples = load_samples(data, ck["preprocessing"], split, classes=ck["classes"])
    res = evaluate(model, samples)
    pc = res["per_class"]
    worst = min(pc, key=pc.get) if pc else "-"
    console.print(
        rows_table(
            [
                {
                    "model": f"{ck['family']}-{ck['config'].get('variant')}",
                    "data": samples.source,
                    "n": res["n"],
                    "top1 %": res["top1"],
                    "loss": res["loss"],
                    "worst class": f"{worst} ({pc.get(worst, float('nan')):.1f}%)",
                    "best class": f"{max(pc, key=pc.get)} ({max(pc.values()):.1f}%)" if pc else "-",
                    "images/s": res["images_per_s"],
                }
            ],
            title="evaluation",
        )
    )
    _print_skipped(res.get("data"))
    if res["routing"]:
        console.print(
            rows_table(
                [
                    {
                        "router": k,
                        "conv": v["conv"],
                        "attn": v["attn"],
                        "attn share %": 100 * v["attn"] / max(1, v["conv"] + v["attn"]),
                    }
                    for k, v in res["routing"].items()
                ],
                title="routing decisions",
            )
        )
    if json_out:
        artifacts.atomic_write_json(json_out, res)


# ------------------------------------------------------------------------------------------------ compress (prune, distill)
@app.command("prune")
@cli_options(PruneSettings, name="s")
def prune_cmd(
    ckpt: Path = typer.Argument(..., metavar="CKPT", help="Checkpoint to prune (.pt)."),
    data: str = typer.Option("digits", help=f"Calibration/evaluation data: {DATA_HELP}"),
    seed: int = typer.Option(0, help="Seed for batch order and the random criterion."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write no checkpoint."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Pruned checkpoint to write (.pt)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="JSON report (default: OUT.prune.json)."),
    heatmap: Optional[Path] = typer.Option(None, help="Head-sensitivity PNG (default: OUT.heads.png)."),
    s: PruneSettings = None,
) -> None:
    """Remove whole attention heads and hidden channels ranked by sensitivity; the result is a smaller dense model.

    Example: edgeconv prune model.pt --data digits --target-macs 0.5 -o pruned.pt
    """
    check_inputs({"CKPT": ckpt})
    check_data({"--data": data, "--eval-data": s.eval_data})
    check_outputs({"-o": out, "--json": json_out, "--heatmap": heatmap}, {"CKPT": ckpt})
    from edgeconv.compress.prune import PruneRequest, layer_rows, run_prune

    criterion = s.criterion
    req = PruneRequest.from_settings(s, seed)
    if out is not None and not dry_run:
        json_out = json_out or out.with_suffix(".prune.json")
        heatmap = heatmap or out.with_suffix(".heads.png")
    with console.status(f"scoring units ({criterion}) and planning"):
        res = run_prune(
            str(ckpt),
            data,
            req,
            str(out) if out else None,
            dry_run=dry_run,
            report_path=str(json_out) if json_out else None,
            heatmap_path=str(heatmap) if heatmap else None,
            command=_command(),
            eval_data=s.eval_data,
            allow_train_eval=s.eval_on_train,
        )
    plan = res["plan"]
    console.print(rows_table(layer_rows(plan), title=f"per-layer plan ({criterion}; sensitivity normalised per layer)"))
    console.print(
        rows_table(
            [
                {
                    "": k,
                    "before": v[0],
                    "after": v[1],
                    "change": f"{(v[1] - v[0]) / v[0]:+.1%}"
                    if k != next(reversed(res["summary"]))
                    else f"{v[1] - v[0]:+.2f} pt",
                }
                for k, v in res["summary"].items()
            ],
            title="before / after (no fine-tuning)",
        )
    )
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if dry_run:
        console.print("dry run: nothing written")
    else:
        console.print(
            f"wrote {out} (reloads to the same outputs), report {json_out}"
            + (f", heatmap {heatmap}" if res["report"].get("heatmap") else ""),
            markup=False,
            highlight=False,
        )


@app.command("distill")
@cli_options(DistillSettings, name="s")
def distill_cmd(
    teacher: Path = typer.Option(..., help="Teacher checkpoint (.pt)."),
    student: Path = typer.Option(..., help="Student checkpoint (.pt), e.g. a pruned model."),
    data: str = typer.Option("digits", help=DATA_HELP),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run writing to -o."),
    out: Path = typer.Option(..., "-o", "--out", help="Distilled student checkpoint (.pt)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the comparison as JSON."),
    s: DistillSettings = None,
) -> None:
    """Distil a teacher into a (pruned) student: Hinton KD, optional feature matching, per-epoch checkpoints.

    Example: edgeconv distill --teacher model.pt --student pruned.pt --data digits --epochs 10 -o student.pt
    """
    check_training(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr)
    check_inputs({"--teacher": teacher, "--student": student})
    check_data({"--data": data, "--eval-data": s.eval_data})
    check_outputs({"-o": out, "--json": json_out}, {"--teacher": teacher, "--student": student})
    from edgeconv import artifacts
    from edgeconv.compress.distill import DistillConfig, run_distill

    dcfg, tcfg = DistillConfig.from_settings(s, seed)
    res = run_distill(
        str(teacher),
        str(student),
        data,
        str(out),
        dcfg=dcfg,
        tcfg=tcfg,
        resume=resume,
        baseline=s.baseline,
        command=_command(),
        eval_data=s.eval_data,
        allow_train_eval=s.eval_on_train,
    )
    if res is None:  # a torchrun worker other than rank 0
        return
    _print_skipped(res["metrics"].get("train_data"))
    console.print(
        rows_table(
            res["rows"],
            title=f"distillation (alpha {s.alpha}, T {s.temperature}{', feature' if s.feature else ''}, {s.epochs} epochs)",
        )
    )
    console.print(f"wrote {out}", markup=False, highlight=False)
    if json_out:
        artifacts.atomic_write_json(json_out, res)


# ------------------------------------------------------------------------------------------------ export
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
    for note in rep.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if json_out:
        artifacts.atomic_write_json(json_out, rep.record)


# ------------------------------------------------------------------------------------------------ validate
@app.command("validate")
@cli_options(ValidateSettings, name="s")
def validate_cmd(
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX model to validate."),
    against: Optional[Path] = typer.Option(
        None, help="PyTorch checkpoint to compare with (default: the one recorded at export)."
    ),
    data: Optional[str] = typer.Option(None, help=DATA_HELP + " (default: what the model was trained on)"),
    batch: int = typer.Option(16, min=2, help="Batch size of the dynamic-batch check."),
    ort_level: str = typer.Option("all", help="onnxruntime optimisation: disable|basic|extended|all"),
    junit: Optional[Path] = typer.Option(None, help="Write JUnit XML (one test case per check)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON."),
    s: ValidateSettings = None,
) -> None:
    """Check an ONNX file: checker, shapes, opset, onnxruntime, parity with PyTorch, If branch coverage, batch.

    Exit code 0 only when every check passes (1 when one fails, 2 for unusable input).
    Example: edgeconv validate model.onnx --against model.pt --junit validate.xml
    """
    check_inputs({"MODEL": model, "--against": against})
    check_data({"--data": data})
    check_number("--tolerance", s.tolerance, min=0)
    check_number("--min-agreement", s.min_agreement, min=0, max=100)
    check_outputs({"--junit": junit, "--json": json_out}, {"MODEL": model, "--against": against})
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeconv import artifacts
    from edgeconv.measure.junit import write_junit
    from edgeconv.measure.validate import validate_onnx

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done)

        report = validate_onnx(
            model,
            against=against,
            data=data,
            split=s.split,
            tolerance=s.tolerance,
            min_agreement=s.min_agreement,
            limit=s.limit,
            batch=batch,
            ort_level=ort_level,
            allow_uncovered=s.allow_uncovered,
            on_progress=progress,
        )
    table = rows_table(report.rows(), title=f"validate {model}")
    console.print(table)
    if junit:
        write_junit(report, junit)
    if json_out:
        artifacts.atomic_write_json(json_out, report.to_dict())
    style = "bold green" if report.passed else "bold red"
    console.print(f"[{style}]{escape(report.summary())}[/]", highlight=False, soft_wrap=True)
    if not report.passed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ bench
@app.command("bench")
@cli_options(BenchSettings, name="s")
def bench_cmd(
    models: list[Path] = typer.Argument(
        ..., metavar="MODELS", help="Artifacts: checkpoint .pt, .onnx, .tflite, .engine/.plan."
    ),
    device: str = typer.Option("cpu", help="cpu | cuda | jetson, or a comma list (cpu,cuda)."),
    host: Optional[str] = typer.Option(None, "--host", help="Run on USER@ADDR over SSH and bring the JSON back."),
    backend: str = typer.Option("auto", help="auto (by artifact type) | torch | ort | tflite | tensorrt"),
    batch: str = typer.Option("1", help="Batch sizes, comma separated (1,8)."),
    data: str = typer.Option("digits", help=f"{DATA_HELP} (same data for every row)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for every backend (default: all usable cores)."),
    reference: Optional[Path] = typer.Option(
        None, help="Float checkpoint to compare against (default: found from the artifacts)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write all results as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the rows as CSV."),
    md_out: Optional[Path] = typer.Option(None, "--md", help="Write the table as Markdown."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a latency vs accuracy PNG."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="Print deltas against a saved bench JSON."),
    remote_edgeconv: str = typer.Option("edgeconv", help="edgeconv executable on the --host machine."),
    ssh_port: int = typer.Option(22, min=1, max=65535, help="SSH port of --host."),
    identity: Optional[Path] = typer.Option(None, help="SSH private key for --host."),
    known_hosts: Optional[Path] = typer.Option(None, help="known_hosts file holding --host's key."),
    remote_timeout: float = typer.Option(3600, help="Seconds the remote bench may take."),
    profile: bool = typer.Option(
        False, "--profile", help="Also profile each ONNX/TFLite/TensorRT file per operator type (at the first --batch)."
    ),
    profile_plot: Optional[Path] = typer.Option(
        None, "--profile-plot", help="Write the per-operator profile as a PNG bar chart (implies --profile)."
    ),
    s: BenchSettings = None,
) -> None:
    """Accuracy and latency of every model x backend x precision x batch, measured on the same data.

    Example: edgeconv bench model.pt model.onnx model.int8.onnx model.int8.tflite --batch 1,8 --json bench.json
    """
    check_inputs({"MODELS": models, "--reference": reference, "--compare": compare})
    for m in models:
        check_content(m)
    check_data({"--data": data})
    # --compare is read completely before anything is written: refreshing a baseline in place is allowed
    check_outputs(
        {"--json": json_out, "--csv": csv_out, "--md": md_out, "--plot": plot, "--profile-plot": profile_plot},
        {"MODELS": models, "--reference": reference},
    )
    if host is not None and not host.strip():
        raise EdgeconvError("--host is empty: give USER@ADDR, or leave --host out to bench on this machine")
    check_number("--remote-timeout", remote_timeout, min=0, min_open=True)
    if (profile or profile_plot) and host:
        raise EdgeconvError("--profile runs locally; profile on the device itself (edgeconv bench --profile there)")
    if profile or profile_plot:
        from edgeconv.measure.profile import check_profilable

        check_profilable(models, plot=profile_plot is not None)

    def ints(text: str, what: str) -> list[int]:
        try:
            vals = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise EdgeconvError(f"{what} {text!r}: expected integers separated by commas (e.g. 1,8)")
        if not vals or min(vals) < 1:
            raise EdgeconvError(f"{what} {text!r}: give positive integers (e.g. 1,8)")
        return vals

    devices = [d.strip() for d in device.split(",") if d.strip()]
    batches = ints(batch, "--batch")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeconv.measure import results as report
    from edgeconv.measure.bench import BenchConfig, run_bench

    baseline = report.load_result(compare) if compare else None
    if host:
        from edgeconv.runtime.remote import SshTarget, run_remote_bench

        args = [
            "--device",
            device,
            "--backend",
            backend,
            "--batch",
            batch,
            "--data",
            data,
            "--split",
            s.split,
            "--warmup",
            str(s.warmup),
            "--iters",
            str(s.iters),
        ]
        args += ["--threads", str(threads)] if threads else []
        args += ["--limit", str(s.limit)] if s.limit else []
        target = SshTarget(host, port=ssh_port, identity=identity, known_hosts=known_hosts, remote_edgeconv=remote_edgeconv)
        with console.status(f"running edgeconv bench on {escape(host)}"):
            result = run_remote_bench(target, models, args, reference=reference, timeout=remote_timeout)
    else:
        cfg = BenchConfig(
            batches=batches,
            devices=devices,
            backend=backend,
            data=data,
            split=s.split,
            warmup=s.warmup,
            iters=s.iters,
            threads=threads,
            reference=reference,
            limit=s.limit,
        )
        with Progress(
            TextColumn("[bold]bench"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as prog:
            task = prog.add_task("", total=None)

            def progress(done: int, total: int, what: str) -> None:
                prog.update(task, completed=done, total=total, description=what)

            result = run_bench(models, cfg, progress=progress)
    report.print_table(result, title=f"bench on {host}" if host else None)
    for warning in result.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if json_out:
        report.write_json(result, json_out)
    if csv_out:
        report.write_csv(result, csv_out)
    if md_out:
        report.write_md(result, md_out)
    if plot:
        report.write_plot(result, plot)
    if profile or profile_plot:
        from edgeconv.measure.profile import profile_rows, run_profiles, write_profile_png

        with console.status("profiling per operator"):
            profiles = run_profiles(models, data, s.split, batches[0], threads or 1, iters=min(s.iters, 50))
        console.print(rows_table(profile_rows(profiles), title=f"per-operator profile, batch {batches[0]}, ms per run"))
        for p in profiles:
            for note in p.notes:
                err_console.print(f"[yellow]note:[/] {Path(p.artifact).name}: {escape(note)}", highlight=False)
        result["profile"] = [p.to_dict() for p in profiles]
        if profile_plot:
            write_profile_png(profiles, profile_plot)
        if json_out:  # written before profiling too, so a failed profile never loses the bench results
            report.write_json(result, json_out)
    if baseline is not None:
        rows = report.compare(result, baseline)
        if not rows:
            raise EdgeconvError(f"{compare}: no measured row matches this run (model, backend, device, precision, batch)")
        console.print(rows_table(rows, title=f"compared with {compare}"))
    failed = [r for r in result["rows"] if r.get("status") == "failed"]
    if failed:
        err_console.print(
            f"[bold red]{len(failed)} row(s) failed[/]: "
            + escape("; ".join(f"{r['model']} {r['backend']} b{r['batch']}: {r.get('reason')}" for r in failed)),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ inspect / pipeline / demo
@app.command("inspect")
def inspect_cmd(
    ckpt: Path = typer.Argument(..., metavar="CKPT", help="Checkpoint (.pt)."),
    images: list[str] = typer.Argument(..., metavar="IMAGES", help="PNG paths (model's size/channels) or digits:N."),
    out: Path = typer.Option(Path("inspect"), "-o", "--out", help="Folder for the PNGs and inspect.json."),
    routing: Optional[str] = typer.Option(None, help=ROUTING_HELP),
) -> None:
    """Show what a model attends to: attention per head, router decisions, saliency and kept tokens (PNGs).

    Example: edgeconv inspect model.pt digits:0 digits:7 -o inspect/
    """
    check_inputs({"CKPT": ckpt, "IMAGES": [i for i in images if not i.startswith("digits:")]})
    check_output_dirs({"-o": out})
    from edgeconv.inspection import inspect_checkpoint

    rep = inspect_checkpoint(ckpt, images, out, _routing(routing))
    rows = []
    for im in rep["images"]:
        rows.append(
            {
                "image": im["image"],
                "label": im["label"] or "-",
                "predicted": str(im["pred"]),
                "confidence %": 100 * im["confidence"],
                "routes (p_attn)": ", ".join(f"{r['route']} ({r['p_attn']:.2f})" for r in im["routes"]) or "-",
                "attention layers": len(im["attention"]),
                "kept tokens": ", ".join(f"{s['kept']}/{s['tokens']}" for s in im["saliency"] if s["kept"] is not None)
                or "-",
                "files": len(im["files"]),
            }
        )
    console.print(rows_table(rows, title=f"inspect {rep['model']}"))
    n = sum(len(i["files"]) for i in rep["images"])
    console.print(f"wrote {n} PNG{'' if n == 1 else 's'} and inspect.json to {out}", markup=False, highlight=False)


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


# ------------------------------------------------------------------------------------------------ info
@app.command("info")
def info_cmd(
    artifact: Optional[Path] = typer.Argument(None, metavar="ARTIFACT", help="Checkpoint, ONNX, TFLite or engine file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the description as JSON."),
    device: bool = typer.Option(False, "--device", help="Describe this machine: CPU, CUDA GPU, Jetson."),
) -> None:
    """Describe any edgeconv artifact: family, config, input spec, params, MACs, metrics, provenance.

    Example: edgeconv info model.pt   |   edgeconv info --device
    """
    check_inputs({"ARTIFACT": artifact})
    check_outputs({"--json": json_out}, {"ARTIFACT": artifact})
    from edgeconv import artifacts

    if device:
        from edgeconv.runtime.devices import describe_device

        desc = describe_device()
        console.print(sections_table(desc, title="this device"))
        if json_out:
            artifacts.atomic_write_json(json_out, desc)
        return
    if artifact is None:
        raise EdgeconvError("give an artifact path (e.g. edgeconv info model.pt)")
    from edgeconv.measure.describe import describe

    desc = describe(artifact)
    console.print(sections_table(desc, title=str(artifact)))
    if json_out:
        artifacts.atomic_write_json(json_out, desc)


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
