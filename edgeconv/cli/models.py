"""Commands on models: `models` (the zoo), `train`, `import` (a checkpoint of your own) and `eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeconv.cli.app import ROUTING_HELP, _command, _print_skipped, _routing, app
from edgeconv.common.checks import (
    check_input_shape,
    check_inputs,
    check_number,
    check_outputs,
    check_training,
)
from edgeconv.common.console import console, rows_table
from edgeconv.common.errors import EdgeconvError
from edgeconv.common.options import cli_options
from edgeconv.common.settings import (
    DATA_HELP,
    TrainSettings,
)
from edgeconv.data.spec import check_data


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
    from edgeconv.data.sources import data_for, load_samples, split_for
    from edgeconv.models import load_model, set_routing
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
