"""Commands that measure artifacts: `validate`, `bench`, `inspect` and `info`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from edgeconv.artifacts.formats import check_content
from edgeconv.cli.app import ROUTING_HELP, _routing, app
from edgeconv.common.checks import (
    check_inputs,
    check_number,
    check_output_dirs,
    check_outputs,
)
from edgeconv.common.console import console, err_console, rows_table, sections_table
from edgeconv.common.errors import EdgeconvError
from edgeconv.common.options import cli_options
from edgeconv.common.settings import (
    DATA_HELP,
    BenchSettings,
    ValidateSettings,
)
from edgeconv.data.spec import check_data


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
