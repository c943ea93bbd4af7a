"""What every pipeline step is: the `Step` base class and its registry, the artifacts steps pass on, the order check
run while a pipeline file loads, and the helpers several steps share. The steps themselves: `steps.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgeconv.common.errors import EdgeconvError
from edgeconv.pipeline.config import PipelineConfig, PipelineConfigError


@dataclass
class Artifact:
    kind: str
    path: Path
    label: str  # the row name it gets in the final table, e.g. "INT8 (onnxruntime)"


@dataclass
class StepResult:
    outputs: list[Artifact]
    metrics: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # rows for the final table, merged by their "model" key
    figures: list[Path] = field(default_factory=list)  # PNGs (inside the step folder) for report.md


@dataclass
class StepContext:
    cfg: PipelineConfig
    out_dir: Path  # this step's folder; everything the step writes goes here
    inputs: dict[str, Artifact]  # what select_inputs chose
    results: dict[str, dict]  # earlier steps' records (metrics, rows) by step name
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
    makes_checkpoint: ClassVar[bool] = False  # must come before export, or the export would miss it

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
                # name the steps that can start a chain (prune also gives a checkpoint, but needs one first)
                first = [p for p in producers(kind) if kind not in STEPS[p].needs] or producers(kind)
                makers = " or ".join(f"'{p}'" for p in first if p != spec.name) or "a step that makes it"
                raise PipelineConfigError(
                    f"{cfg.source}: step '{spec.name}' needs {KIND_TEXT.get(kind, kind)}, which no step before it "
                    f"produces: put {makers} before '{spec.name}'"
                )
        if step.makes_checkpoint and "onnx" in available:
            raise PipelineConfigError(
                f"{cfg.source}: step '{spec.name}' comes after 'export': the exported model would not include it; "
                f"move '{spec.name}' before 'export'"
            )
        available |= set(step.gives_for(spec.options))


def held_out_check(step: str, opts: Any, cfg: PipelineConfig) -> None:
    """Before any step runs: a step that trains and evaluates needs held-out data (data.check_held_out)."""
    from edgeconv.data.sources import check_held_out

    try:
        check_held_out(cfg.pipeline.data, opts.eval_data or None, opts.eval_on_train, step)
    except EdgeconvError as e:
        msg = (
            str(e)
            .replace("--eval-data SPEC", f"{step}.eval_data")
            .replace("--eval-on-train", f"{step}.eval_on_train = true")
        )
        raise PipelineConfigError(f"{cfg.source}: {msg}") from None


def model_label(ckpt: dict) -> str:
    return f"{ckpt['family']}-{ckpt['config'].get('variant')}"


def eval_rows(path: Path, label: str, data: str, split: str | None) -> tuple[dict, dict]:
    """Evaluate a checkpoint: (row for the final table, metrics with the per-router routing mix)."""
    from edgeconv.data.sources import load_samples, split_for
    from edgeconv.models import load_model
    from edgeconv.train.loop import evaluate

    model, ck = load_model(path)
    split = split_for(data, "evaluate", split, trained_on=ck["preprocessing"].get("dataset") or "")
    samples = load_samples(data, ck["preprocessing"], split, classes=ck["classes"])
    res = evaluate(model, samples)
    params = sum(p.numel() for p in model.parameters())
    row = {
        "model": label,
        "format": "PyTorch",
        "top1 %": res["top1"],
        "params": params,
        "size KiB": round(path.stat().st_size / 1024, 1),
    }
    return row, {"top1": res["top1"], "loss": res["loss"], "n": res["n"], "routing": {label: res["routing"]}}


def deployables(artifacts: dict[str, Artifact]) -> dict[str, Artifact]:
    """Every model a validate/bench step should look at, in pipeline order."""
    keep = {}
    for kind in ("float", "checkpoint", "onnx:float", "onnx"):
        if kind in artifacts and all(a.path != artifacts[kind].path for a in keep.values()):
            keep[kind] = artifacts[kind]
    keep.update({k: a for k, a in artifacts.items() if k.startswith("model:")})
    return keep
