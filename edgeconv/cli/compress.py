"""Commands that make a model smaller: `prune` (heads and hidden channels) and `distill`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from edgeconv.cli.app import _command, _print_skipped, app
from edgeconv.common.checks import (
    check_inputs,
    check_outputs,
    check_training,
)
from edgeconv.common.console import console, rows_table
from edgeconv.common.options import cli_options
from edgeconv.common.settings import (
    DATA_HELP,
    DistillSettings,
    PruneSettings,
)
from edgeconv.data.spec import check_data


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
