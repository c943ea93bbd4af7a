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

import dataclasses
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgeconv.common.errors import EdgeconvError
from edgeconv.common.settings import (
    SPLITS,
    BenchSettings,
    DistillSettings,
    ExportSettings,
    PruneSettings,
    TrainSettings,
    ValidateSettings,
)
from edgeconv.data.spec import DataSpec
from edgeconv.pipeline.config import PipelineConfig, PipelineConfigError, option
from edgeconv.pipeline.step import (
    STEPS,
    Artifact,
    Step,
    StepContext,
    StepResult,
    deployables,
    eval_rows,
    held_out_check,
    model_label,
    register_step,
)
from edgeconv.quantize import QuantizeSettings

__all__ = ["STEPS", "register_step"]  # the registry, filled by the classes below


# ------------------------------------------------------------------------------------------------ train
@dataclass
class TrainOptions(TrainSettings):
    model: str = option("routed-tiny", help="Zoo name (family-size) or timm:NAME.")
    checkpoint: str = option("", path=True, help="Use this trained checkpoint instead of training.")
    split: str = option("test", choices=SPLITS, help="Split the float row is measured on.")


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
            if not DataSpec.parse(cfg.pipeline.data).bundled and not opts.img_size:
                raise PipelineConfigError(f"{cfg.source}: train.img_size is required for data other than a bundled set")

    @classmethod
    def run(cls, opts: TrainOptions, ctx: StepContext) -> StepResult:
        from edgeconv import artifacts
        from edgeconv.train.loop import TrainConfig, run_train

        out = ctx.out_dir / "model.pt"
        if opts.checkpoint:
            artifacts.read_checkpoint(opts.checkpoint)  # refuse anything that is not a checkpoint
            with artifacts.atomic_path(out) as tmp:
                shutil.copyfile(opts.checkpoint, tmp)
        else:
            tc = TrainConfig.from_settings(opts, ctx.cfg.pipeline.seed)
            run_train(
                opts.model,
                ctx.data,
                str(out),
                cfg=tc,
                img_size=opts.img_size,
                show_progress=ctx.show_progress,
                command=ctx.command,
            )
        row, metrics = eval_rows(out, "float (PyTorch)", ctx.data, opts.split)
        ck = artifacts.read_checkpoint(out)
        metrics["train_seconds"] = ck.get("metrics", {}).get("train_seconds")
        metrics["model"] = model_label(ck)
        return StepResult(
            [Artifact("checkpoint", out, "float (PyTorch)"), Artifact("float", out, "float (PyTorch)")], metrics, [row]
        )


# ------------------------------------------------------------------------------------------------ eval
@dataclass
class EvalOptions:
    data: str = option("", help="Data to evaluate on (default: the pipeline's data).")
    split: Optional[str] = option(
        None,
        choices=SPLITS,
        help="train | val | test | all (default: test; a class tree the model was not trained on: all of it).",
    )


@register_step
class Eval(Step):
    name = "eval"
    help = "evaluate the current PyTorch model (top-1, routing mix)"
    Options = EvalOptions
    needs = ("checkpoint",)

    @classmethod
    def run(cls, opts: EvalOptions, ctx: StepContext) -> StepResult:
        art = ctx.inputs["checkpoint"]
        row, metrics = eval_rows(art.path, art.label, opts.data or ctx.data, opts.split)
        return StepResult([], metrics, [row])


def stage_of(label: str) -> str:
    """ "pruned+distilled (PyTorch)" -> "pruned+distilled"."""
    return label.split(" (")[0]


# ------------------------------------------------------------------------------------------------ prune
@dataclass
class PruneOptions(PruneSettings):
    pass


@register_step
class Prune(Step):
    name = "prune"
    help = "remove attention heads and hidden channels ranked by sensitivity (writes a sensitivity heatmap)"
    Options = PruneOptions
    needs = ("checkpoint",)
    gives = ("checkpoint",)
    makes_checkpoint = True

    @classmethod
    def request(cls, opts: PruneOptions, seed: int):
        from edgeconv.compress.prune import PruneRequest

        return PruneRequest.from_settings(opts, seed)

    @classmethod
    def check(cls, opts: PruneOptions, cfg: PipelineConfig) -> None:
        held_out_check(cls.name, opts, cfg)
        try:
            cls.request(opts, cfg.pipeline.seed).check()
        except EdgeconvError as e:
            # the compress module words its checks for the CLI (--target-macs); name the pipeline keys instead
            msg = re.sub(r"--([a-z-]+)", lambda m: "prune." + m.group(1).replace("-", "_"), str(e))
            raise PipelineConfigError(f"{cfg.source}: {msg}")

    @classmethod
    def run(cls, opts: PruneOptions, ctx: StepContext) -> StepResult:
        from edgeconv.compress.prune import layer_rows, run_prune

        src = ctx.inputs["checkpoint"]
        out, heatmap = ctx.out_dir / "model.pt", ctx.out_dir / "head_sensitivity.png"
        res = run_prune(
            str(src.path),
            ctx.data,
            cls.request(opts, ctx.cfg.pipeline.seed),
            str(out),
            report_path=str(ctx.out_dir / "prune.json"),
            heatmap_path=str(heatmap),
            command=ctx.command,
            eval_data=opts.eval_data or None,
            allow_train_eval=opts.eval_on_train,
        )
        stage = stage_of(src.label)
        label = "pruned (PyTorch)" if stage == "float" else f"{stage}+pruned (PyTorch)"
        rep = res["report"]
        row, metrics = eval_rows(out, label, opts.eval_data or ctx.data, "test")
        row["note"] = "no fine-tuning"
        metrics.update(
            {
                "params_before": rep["params_before"],
                "params_after": rep["params_after"],
                "macs_before": rep["macs_before"],
                "macs_after": rep["macs_after"],
                "mac_reduction": rep["mac_reduction"],
                "top1_before": rep["top1_before"],
                "layers": layer_rows(res["plan"]),
                "notes": res["plan"].notes,
            }
        )
        figures = [heatmap] if rep.get("heatmap") else []
        return StepResult([Artifact("checkpoint", out, label)], metrics, [row], figures)


# ------------------------------------------------------------------------------------------------ distill
@dataclass
class DistillOptions(DistillSettings):
    pass


@register_step
class Distill(Step):
    name = "distill"
    help = "distil the float teacher into the current (pruned) model"
    Options = DistillOptions
    needs = ("checkpoint", "float")
    gives = ("checkpoint",)
    makes_checkpoint = True

    @classmethod
    def check(cls, opts: DistillOptions, cfg: PipelineConfig) -> None:
        held_out_check(cls.name, opts, cfg)

    @classmethod
    def run(cls, opts: DistillOptions, ctx: StepContext) -> StepResult:
        from edgeconv.compress.distill import DistillConfig, run_distill

        student, teacher = ctx.inputs["checkpoint"], ctx.inputs["float"]
        out = ctx.out_dir / "model.pt"
        dcfg, tcfg = DistillConfig.from_settings(opts, ctx.cfg.pipeline.seed)
        res = run_distill(
            str(teacher.path),
            str(student.path),
            ctx.data,
            str(out),
            dcfg=dcfg,
            tcfg=tcfg,
            baseline=opts.baseline,
            command=ctx.command,
            show_progress=ctx.show_progress,
            eval_data=opts.eval_data or None,
            allow_train_eval=opts.eval_on_train,
        )
        stage = stage_of(student.label)
        label = f"{'' if stage == 'float' else stage + '+'}distilled (PyTorch)"
        row, metrics = eval_rows(out, label, opts.eval_data or ctx.data, "test")
        metrics["distill"] = res["rows"]
        return StepResult([Artifact("checkpoint", out, label)], metrics, [row])


# ------------------------------------------------------------------------------------------------ export
@dataclass
class ExportOptions(ExportSettings):
    baseline: bool = option(True, help="Also export the float model, so the table compares like with like.")


@register_step
class Export(Step):
    name = "export"
    help = "export the current model (and the float baseline) to ONNX, routing as If"
    Options = ExportOptions
    needs = ("checkpoint", "float")
    gives = ("onnx", "onnx:float")

    @classmethod
    def check(cls, opts: ExportOptions, cfg: PipelineConfig) -> None:
        from edgeconv.export.onnx import MIN_OPSET

        if opts.opset and opts.opset < MIN_OPSET:
            raise PipelineConfigError(
                f"{cfg.source}: export.opset = {opts.opset}: the exporter writes opset {MIN_OPSET} or newer"
            )

    @classmethod
    def gives_for(cls, opts: ExportOptions) -> tuple[str, ...]:
        return ("onnx", "onnx:float") if opts.baseline else ("onnx",)

    @classmethod
    def select_inputs(cls, opts: ExportOptions, artifacts: dict[str, Artifact]) -> dict[str, Artifact]:
        chosen = {"checkpoint": artifacts["checkpoint"]}
        if opts.baseline and artifacts["float"].path != artifacts["checkpoint"].path:
            chosen["float"] = artifacts["float"]
        return chosen

    @classmethod
    def run(cls, opts: ExportOptions, ctx: StepContext) -> StepResult:
        from edgeconv.export import export_onnx
        from edgeconv.models import load_model, routers

        outputs, rows, metrics = [], [], {}
        jobs = [("onnx", ctx.inputs["checkpoint"], "model.onnx")]
        if "float" in ctx.inputs:
            jobs.insert(0, ("onnx:float", ctx.inputs["float"], "float.onnx"))
        for kind, src, fname in jobs:
            model, _ = load_model(src.path)
            routing = opts.routing if routers(model) else None
            res = export_onnx(
                src.path,
                ctx.out_dir / fname,
                routing=routing,
                opset=opts.opset,
                dynamic_batch=opts.dynamic_batch,
                simplify=opts.simplify,
            )
            label = f"{stage_of(src.label)} (onnxruntime FP32)"
            outputs.append(Artifact(kind, res.path, label))
            metrics[label] = res.row()
            rows.append({"model": label, "format": "ONNX FP32", "size KiB": round(res.size_bytes / 1024, 1)})
        return StepResult(outputs, metrics, rows)


# ------------------------------------------------------------------------------------------------ quantize
@dataclass
class QuantizeOptions(QuantizeSettings):
    """The shared quantize settings (edgeconv.quantize.QuantizeSettings, also the CLI's options) plus the targets."""

    targets: list[str] = option(
        default_factory=lambda: ["ort:int8"], help="backend:precision, e.g. ort:int8, ort:fp16, tflite:int8, tflite:fp16."
    )


def _parse_target(t: str) -> tuple[str, str]:
    backend, _, precision = t.partition(":")
    return backend, precision


@register_step
class Quantize(Step):
    name = "quantize"
    help = "quantize the exported model for each target (onnxruntime, TFLite, TensorRT)"
    Options = QuantizeOptions
    needs = ("checkpoint",)
    gives = ("model:*",)

    @classmethod
    def check(cls, opts: QuantizeOptions, cfg: PipelineConfig) -> None:
        import importlib.util

        from edgeconv.quantize import BACKENDS

        if not opts.targets:
            raise PipelineConfigError(f'{cfg.source}: quantize.targets is empty (e.g. targets = ["ort:int8"])')
        for i, t in enumerate(opts.targets):
            backend, precision = _parse_target(t)
            key = f"quantize.targets[{i}] = {t!r}"
            if backend not in BACKENDS:
                raise PipelineConfigError(f"{cfg.source}: {key}: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
            if precision not in BACKENDS[backend].precisions:
                raise PipelineConfigError(
                    f"{cfg.source}: {key}: {backend} supports {', '.join(BACKENDS[backend].precisions)}"
                )
            if importlib.util.find_spec(BACKENDS[backend].module) is None:
                raise PipelineConfigError(f"{cfg.source}: {key}: this edgeconv has no {backend} quantizer")
            missing = BACKENDS[backend].missing()  # the Python packages it needs, checked while the file is loaded
            if missing:
                raise PipelineConfigError(
                    f"{cfg.source}: {key}: needs {', '.join(missing)}, which is not installed ({BACKENDS[backend].install})"
                )
        if len(set(opts.targets)) != len(opts.targets):
            raise PipelineConfigError(f"{cfg.source}: quantize.targets lists a target twice")
        if opts.int8_target is not None and "ort:int8" not in opts.targets:
            raise PipelineConfigError(
                f"{cfg.source}: quantize.int8_target applies to the ort:int8 target, which quantize.targets does not list"
            )
        if opts.int8_target is not None:
            from edgeconv.quantize.targets import resolve_target

            try:
                resolve_target(opts.int8_target, "ort")
            except EdgeconvError as e:
                raise PipelineConfigError(f"{cfg.source}: quantize.int8_target: {e}") from None

    @classmethod
    def gives_for(cls, opts: QuantizeOptions) -> tuple[str, ...]:
        return tuple(f"model:{t.replace(':', '-')}" for t in opts.targets)

    @classmethod
    def select_inputs(cls, opts: QuantizeOptions, artifacts: dict[str, Artifact]) -> dict[str, Artifact]:
        chosen = {"checkpoint": artifacts["checkpoint"]}
        if "onnx" in artifacts:
            chosen["onnx"] = artifacts["onnx"]
        return chosen

    @classmethod
    def run(cls, opts: QuantizeOptions, ctx: StepContext) -> StepResult:
        from edgeconv.data.sources import default_calib_dir
        from edgeconv.quantize import BACKENDS, quantize, request_from

        data = None
        settings = opts
        if not opts.calib:
            if ctx.data == "digits" and default_calib_dir().is_dir():
                settings = dataclasses.replace(opts, calib=str(default_calib_dir()))
            else:
                data = ctx.data
        outputs, rows, metrics = [], [], {}
        runtime = {"ort": "onnxruntime", "tflite": "TFLite", "tensorrt": "TensorRT"}
        for t in opts.targets:
            backend, precision = _parse_target(t)
            # onnxruntime and TensorRT start from the exported graph; TFLite converts from PyTorch directly
            src = ctx.inputs.get("onnx") if backend != "tflite" and "onnx" in ctx.inputs else ctx.inputs["checkpoint"]
            out = ctx.out_dir / f"{backend}-{precision}{BACKENDS[backend].suffixes[0]}"
            own = settings
            if not (backend == "ort" and precision == "int8"):  # the target and the report are onnxruntime INT8's
                own = dataclasses.replace(settings, int8_target=None, report=False)
            if precision != "int8":
                own = dataclasses.replace(own, calib=None, calib_limit=None, max_drop=None)
            req = request_from(
                own,
                model=src.path,
                out=out,
                precision=precision,
                backend=backend,
                data=data if precision == "int8" else None,
                eval_data=ctx.data,
                command=ctx.command,
            )
            rep = quantize(req)
            label = f"{precision.upper()} ({runtime.get(backend, backend)})"
            outputs.append(Artifact(f"model:{backend}-{precision}", rep.out, label))
            acc = rep.record.get("accuracy") or {}
            metrics[label] = {
                "source": stage_of(src.label),
                "accuracy": acc,
                "notes": rep.notes,
                "size_bytes": rep.record.get("size_bytes"),
            }
            row = {
                "model": label,
                "format": f"{runtime.get(backend, backend)} {precision.upper()}",
                "size KiB": round(rep.out.stat().st_size / 1024, 1),
            }
            if acc.get("quantized_top1") is not None:
                row["top1 %"] = acc["quantized_top1"]
            rows.append(row)
        return StepResult(outputs, metrics, rows)


# ------------------------------------------------------------------------------------------------ validate
@dataclass
class ValidateOptions(ValidateSettings):
    quantized_agreement: float = option(
        95.0, min=0.0, max=100.0, help="Quantized models: top-1 agreement with their float source, in percent."
    )


@register_step
class Validate(Step):
    name = "validate"
    help = "check the ONNX exports (checker, parity, If-branch coverage, dynamic batch) and quantized agreement"
    Options = ValidateOptions
    needs = ("checkpoint",)

    @classmethod
    def select_inputs(cls, opts: ValidateOptions, artifacts: dict[str, Artifact]) -> dict[str, Artifact]:
        chosen = {k: a for k, a in deployables(artifacts).items() if k.startswith(("onnx", "model:"))}
        return {"checkpoint": artifacts["checkpoint"], "float": artifacts.get("float", artifacts["checkpoint"]), **chosen}

    @classmethod
    def run(cls, opts: ValidateOptions, ctx: StepContext) -> StepResult:
        from edgeconv import artifacts
        from edgeconv.measure.validate import validate_onnx

        metrics, rows, failures = {}, [], []
        sources = {"onnx": ctx.inputs["checkpoint"], "onnx:float": ctx.inputs["float"]}
        for kind, art in ctx.inputs.items():
            if kind in sources and kind.startswith("onnx"):
                rep = validate_onnx(
                    art.path,
                    against=sources[kind].path,
                    data=ctx.data,
                    split=opts.split,
                    tolerance=opts.tolerance,
                    limit=opts.limit,
                    min_agreement=opts.min_agreement,
                    allow_uncovered=opts.allow_uncovered,
                )
                metrics[art.label] = rep.to_dict()
                parity = rep.check("parity")
                if parity is not None and parity.data.get("onnx_top1") is not None:
                    rows.append({"model": art.label, "top1 %": parity.data["onnx_top1"]})
                if not rep.passed:
                    failures.append(rep.summary())
            elif kind.startswith("model:"):
                res = _agreement(art.path, ctx.inputs["checkpoint"].path, ctx.data, opts.split, opts.limit)
                res["passed"] = res["agree"] >= opts.quantized_agreement
                metrics[art.label] = res
                rows.append({"model": art.label, "top1 %": res["top1"], "agree %": res["agree"]})
                if not res["passed"]:
                    failures.append(
                        f"{art.label}: top-1 agreement with the float model {res['agree']:.2f}% "
                        f"< {opts.quantized_agreement:g}%"
                    )
        artifacts.atomic_write_json(ctx.out_dir / "validation.json", metrics)
        if failures:
            raise EdgeconvError("; ".join(failures))
        return StepResult([], metrics, rows)


def _agreement(model: Path, reference: Path, data: str, split: str, limit: int) -> dict:
    """Top-1 of a deployable on its native runtime, and how often it agrees with the PyTorch reference."""
    import numpy as np
    import torch

    from edgeconv.data.sources import load_samples, split_for
    from edgeconv.models import load_model
    from edgeconv.runtime.backends import load_runner, targets_for

    ref, ck = load_model(reference)
    samples = load_samples(
        data, ck["preprocessing"], split_for(data, "evaluate", split), limit=limit or None, classes=ck["classes"]
    )
    with torch.no_grad():
        ref_pred = torch.cat([ref(xb) for xb, _ in samples.batches(256)]).argmax(1).numpy()
    runner = load_runner(model, targets_for(model)[0], threads=torch.get_num_threads())
    x = samples.x.numpy().astype(np.float32)
    preds = [np.asarray(runner.run(x[i : i + 1])).argmax(1) for i in range(len(x))]
    pred = np.concatenate(preds)
    y = samples.y.numpy()
    lab = y >= 0
    return {
        "n": int(len(x)),
        "top1": float((pred[lab] == y[lab]).mean() * 100) if lab.any() else None,
        "agree": float((pred == ref_pred).mean() * 100),
        "reference": str(reference),
    }


# ------------------------------------------------------------------------------------------------ bench
@dataclass
class BenchOptions(BenchSettings):
    batches: list[int] = option(default_factory=lambda: [1], min=1, help="Batch sizes to time.")
    threads: int = option(0, min=0, help="Runtime threads (0 = the pipeline's threads).")


@register_step
class Bench(Step):
    name = "bench"
    help = "measure accuracy and latency of every model made so far, side by side in one run"
    Options = BenchOptions
    needs = ("checkpoint",)

    @classmethod
    def select_inputs(cls, opts: BenchOptions, artifacts: dict[str, Artifact]) -> dict[str, Artifact]:
        return deployables(artifacts)

    @classmethod
    def run(cls, opts: BenchOptions, ctx: StepContext) -> StepResult:
        from edgeconv import artifacts
        from edgeconv.measure.bench import BenchConfig, run_bench

        arts = list(ctx.inputs.values())
        by_path = {str(a.path): a for a in arts}
        ref = ctx.inputs.get("float", ctx.inputs.get("checkpoint"))
        cfg = BenchConfig(
            batches=list(opts.batches),
            data=ctx.data,
            split=opts.split,
            warmup=opts.warmup,
            iters=opts.iters,
            threads=opts.threads or ctx.cfg.pipeline.threads,
            reference=ref.path if ref else None,
            limit=opts.limit,
        )
        result = run_bench([a.path for a in arts], cfg)
        artifacts.atomic_write_json(ctx.out_dir / "bench.json", result)
        rows, routing = [], {}
        for r in result["rows"]:
            art = by_path.get(r["path"])
            label = art.label if art else r["model"]
            if r["batch"] != opts.batches[0]:  # the first batch size fills the main rows, others get their own
                label = f"{label} b{r['batch']}"
            row = {"model": label, "status": r["status"]}
            if r["status"] == "ok":
                row.update(
                    {
                        "top1 %": r.get("top1"),
                        "latency ms": r.get("p50_ms"),
                        "p90 ms": r.get("p90_ms"),
                        "agree %": r.get("agree"),
                        "size KiB": round(r.get("size_kib", 0), 1),
                    }
                )
                if r.get("routing"):
                    routing[label] = r["routing"]
            else:
                row["note"] = r.get("reason", "")
            rows.append(row)
        return StepResult([], {"settings": result["settings"], "device": result.get("device"), "routing": routing}, rows)
