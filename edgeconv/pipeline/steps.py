"""Pipeline steps: one small class per step behind a registry.

A step declares the artifact kinds it needs and gives (so the order is checked before any work), its typed
`Options`, a static `check` (runs while the file is loaded) and `run`, which writes only into its own folder and
returns what it produced. Artifact kinds:

- `checkpoint`: the current PyTorch model (train, prune and distill each replace it)
- `float`: the trained model before compression (the distillation teacher and the baseline row)
- `onnx`, `onnx:float`: FP32 ONNX exports of the current model and of the float model
- `model:<name>`: a deployable model made by quantize (ONNX or TFLite), `<name>` e.g. `ort-int8`
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgeconv.errors import EdgeconvError
from edgeconv.pipeline.config import PipelineConfig, PipelineConfigError, option


@dataclass
class Artifact:
    kind: str
    path: Path
    label: str                      # the row name it gets in the final table, e.g. "INT8 (onnxruntime)"


@dataclass
class StepResult:
    outputs: list[Artifact]
    metrics: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)       # rows for the final table, merged by their "model" key
    figures: list[Path] = field(default_factory=list)    # PNGs (inside the step folder) for report.md


@dataclass
class StepContext:
    cfg: PipelineConfig
    out_dir: Path                   # this step's folder; everything the step writes goes here
    inputs: dict[str, Artifact]     # what select_inputs chose
    results: dict[str, dict]        # earlier steps' records (metrics, rows) by step name
    show_progress: bool = True

    @property
    def data(self) -> str:
        return self.cfg.pipeline.data

    @property
    def command(self) -> str:
        return f"edgeconv pipeline {self.cfg.source} ({self.out_dir.name})"


KIND_TEXT = {
    "checkpoint": "a PyTorch checkpoint",
    "float": "a trained float checkpoint",
    "onnx": "an ONNX model",
}


class Step:
    """Base class: subclasses set `name`, `help`, `Options` and implement `run`."""

    name: ClassVar[str]
    help: ClassVar[str]
    Options: ClassVar[type]
    needs: ClassVar[tuple[str, ...]] = ()
    gives: ClassVar[tuple[str, ...]] = ()
    makes_checkpoint: ClassVar[bool] = False        # must come before export, or the export would miss it

    @classmethod
    def check(cls, opts: Any, cfg: PipelineConfig) -> None:
        """Static checks on the options (files, names) while the pipeline file is loaded."""

    @classmethod
    def gives_for(cls, opts: Any) -> tuple[str, ...]:
        return cls.gives

    @classmethod
    def select_inputs(cls, opts: Any, artifacts: dict[str, Artifact]) -> dict[str, Artifact]:
        return {k: artifacts[k] for k in cls.needs}

    @classmethod
    def run(cls, opts: Any, ctx: StepContext) -> StepResult:
        raise NotImplementedError


STEPS: dict[str, type[Step]] = {}


def register_step(cls: type[Step]) -> type[Step]:
    STEPS[cls.name] = cls
    return cls


def producers(kind: str) -> list[str]:
    return [n for n, s in STEPS.items() if kind in s.gives or (kind.startswith("model:") and "model:*" in s.gives)]


def check_order(cfg: PipelineConfig) -> None:
    """Walk the steps in file order with the artifact kinds available so far; fail on the first that cannot run."""
    available: set[str] = set()
    for spec in cfg.steps:
        step = STEPS[spec.name]
        for kind in step.needs:
            if kind not in available:
                makers = " or ".join(f"'{p}'" for p in producers(kind) if p != spec.name) or "a step that makes it"
                raise PipelineConfigError(
                    f"{cfg.source}: step '{spec.name}' needs {KIND_TEXT.get(kind, kind)}, which no step before it "
                    f"produces: put {makers} before '{spec.name}'")
        if step.makes_checkpoint and "onnx" in available:
            raise PipelineConfigError(
                f"{cfg.source}: step '{spec.name}' comes after 'export': the exported model would not include it; "
                f"move '{spec.name}' before 'export'")
        available |= set(step.gives_for(spec.options))


def model_label(ckpt: dict) -> str:
    return f"{ckpt['family']}-{ckpt['config'].get('variant')}"


def _eval_rows(path: Path, label: str, data: str, split: str) -> tuple[dict, dict]:
    """Evaluate a checkpoint: (row for the final table, metrics with the per-router routing mix)."""
    from edgeconv import artifacts
    from edgeconv.data import load_samples
    from edgeconv.training import evaluate

    model, ck = artifacts.load_model(path)
    samples = load_samples(data, ck["preprocessing"], split if data == "digits" else "all")
    res = evaluate(model, samples)
    params = sum(p.numel() for p in model.parameters())
    row = {"model": label, "format": "PyTorch", "top1 %": res["top1"], "params": params,
           "size KiB": round(path.stat().st_size / 1024, 1)}
    return row, {"top1": res["top1"], "loss": res["loss"], "n": res["n"], "routing": {label: res["routing"]}}


# ------------------------------------------------------------------------------------------------ train
@dataclass
class TrainOptions:
    model: str = option("routed-tiny", help="Zoo name (family-size).")
    checkpoint: str = option("", path=True, help="Use this trained checkpoint instead of training.")
    epochs: int = option(20, min=1)
    batch_size: int = option(64, min=1)
    lr: float = option(3e-3, min=0.0)
    weight_decay: float = option(0.05, min=0.0)
    label_smoothing: float = option(0.1, min=0.0, max=1.0)
    augment: bool = option(True, help="Random affine jitter while training.")
    img_size: int = option(0, min=0, help="Input size; 0 = the data's default (digits: 32).")
    split: str = option("test", choices=("train", "val", "test", "all"), help="Split the float row is measured on.")


@register_step
class Train(Step):
    name = "train"
    help = "train a model on the pipeline's data (or take a given checkpoint)"
    Options = TrainOptions
    gives = ("checkpoint", "float")
    makes_checkpoint = True

    @classmethod
    def check(cls, opts: TrainOptions, cfg: PipelineConfig) -> None:
        from edgeconv.models import parse_name

        if not opts.checkpoint:
            try:
                parse_name(opts.model)
            except EdgeconvError as e:
                raise PipelineConfigError(f"{cfg.source}: train.model: {e}")
            if cfg.pipeline.data != "digits" and not opts.img_size:
                raise PipelineConfigError(f"{cfg.source}: train.img_size is required for data other than digits")

    @classmethod
    def run(cls, opts: TrainOptions, ctx: StepContext) -> StepResult:
        from edgeconv import artifacts
        from edgeconv.training import TrainConfig, run_train

        out = ctx.out_dir / "model.pt"
        if opts.checkpoint:
            artifacts.read_checkpoint(opts.checkpoint)          # refuse anything that is not a checkpoint
            with artifacts.atomic_path(out) as tmp:
                shutil.copyfile(opts.checkpoint, tmp)
        else:
            tc = TrainConfig(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr,
                             weight_decay=opts.weight_decay, label_smoothing=opts.label_smoothing,
                             seed=ctx.cfg.pipeline.seed, augment=opts.augment)
            run_train(opts.model, ctx.data, str(out), cfg=tc, img_size=opts.img_size or None,
                      show_progress=ctx.show_progress, command=ctx.command)
        row, metrics = _eval_rows(out, "float", ctx.data, opts.split)
        ck = artifacts.read_checkpoint(out)
        metrics["train_seconds"] = ck.get("metrics", {}).get("train_seconds")
        metrics["model"] = model_label(ck)
        return StepResult([Artifact("checkpoint", out, "float"), Artifact("float", out, "float")], metrics, [row])


# ------------------------------------------------------------------------------------------------ eval
@dataclass
class EvalOptions:
    data: str = option("", help="Data to evaluate on (default: the pipeline's data).")
    split: str = option("test", choices=("train", "val", "test", "all"))


@register_step
class Eval(Step):
    name = "eval"
    help = "evaluate the current PyTorch model (top-1, routing mix)"
    Options = EvalOptions
    needs = ("checkpoint",)

    @classmethod
    def run(cls, opts: EvalOptions, ctx: StepContext) -> StepResult:
        art = ctx.inputs["checkpoint"]
        row, metrics = _eval_rows(art.path, art.label, opts.data or ctx.data, opts.split)
        return StepResult([], metrics, [row])
