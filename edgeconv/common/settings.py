"""The settings of train, prune, distill, export, validate and bench, declared once (torch-free).

Each dataclass is both the Typer options of its command (`options.cli_options`) and the keys of its pipeline table
(the pipeline's option classes derive from it and add only pipeline-only keys), so a default, a choice list or a
help text exists in one place. `quantize.QuantizeSettings` is the same for quantize.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from edgeconv.common.checks import MAX_IMG_SIZE
from edgeconv.common.errors import EdgeconvError
from edgeconv.common.options import option

SPLITS = ("train", "val", "test", "all")
# the names of compress/importance.CRITERIA (a test keeps them equal; importing the registry needs torch)
CRITERIA = ("gradient", "taylor", "random", "l1")
# export/onnx.ROUTINGS (a test keeps them equal): what a routed model's routers become in ONNX
EXPORT_ROUTINGS = ("gated", "soft", "static:conv", "static:attn")

DATA_HELP = "digits | fashion | imagefolder:PATH | npz:PATH"
EVAL_DATA_HELP = "Held-out labelled data for the top-1 after the step (default: the data's test split)."
EVAL_ON_TRAIN_HELP = "Accept evaluating on the training data when it has no held-out split (scores what it fit)."


@dataclass
class TrainSettings:
    epochs: int = option(30, min=1, max=100_000)
    batch_size: int = option(64, min=1, max=65_536)
    lr: float = option(3e-3, min=0, max=10, min_open=True)
    weight_decay: float = option(0.05, min=0, max=10)
    label_smoothing: float = option(0.1, min=0, max=1, max_open=True)
    augment: bool = option(True, cli="--augment/--no-augment", help="Random affine jitter while training.")
    img_size: Optional[int] = option(None, min=8, max=MAX_IMG_SIZE, help="Input size (default: the data's; digits: 32).")


@dataclass
class HeldOut:
    """Where a step that trains or changes the model is evaluated afterwards (data.check_held_out)."""

    eval_data: Optional[str] = option(None, help=EVAL_DATA_HELP)
    eval_on_train: bool = option(False, help=EVAL_ON_TRAIN_HELP)


@dataclass
class PruneSettings(HeldOut):
    heads: Optional[float] = option(
        None, min=0, max=1, min_open=True, max_open=True, help="Fraction of all attention heads to remove (0..1)."
    )
    channels: Optional[float] = option(
        None, min=0, max=1, min_open=True, max_open=True, help="Fraction of all hidden channels to remove (0..1)."
    )
    target_macs: Optional[float] = option(
        None, min=0, max=1, min_open=True, max_open=True, help="Keep at most this fraction of the MACs (0..1)."
    )
    min_keep: float = option(
        0.0,
        min=0,
        max=1,
        max_open=True,
        help="Every prunable layer keeps at least this fraction of its heads/channels (0: at least one).",
    )
    criterion: str = option("gradient", choices=CRITERIA, help="How units are ranked.")
    batches: int = option(64, min=1, help="Calibration batches for the gradient criteria.")
    batch_size: int = option(
        8, min=1, help="Calibration batch size (small batches: less gradient cancellation between samples)."
    )
    steps: int = option(1, min=1, help="Prune in this many steps, re-scoring between them.")
    bn_recalibrate: bool = option(
        True,
        cli="--bn-recalibrate/--no-bn-recalibrate",
        help="Re-estimate BatchNorm statistics on calibration samples after removal (no weight changes).",
    )


@dataclass
class DistillSettings(HeldOut):
    epochs: int = option(10, min=1, max=100_000)
    alpha: float = option(0.7, min=0.0, max=1.0, help="Weight of the soft-target (KD) term; 1-alpha on labels.")
    temperature: float = option(4.0, min=0.01, help="Softmax temperature of the soft targets.")
    feature: bool = option(False, help="Also match pooled features (learned projection when widths differ).")
    batch_size: int = option(64, min=1, max=65_536)
    lr: float = option(1e-3, min=0, max=10, min_open=True)
    baseline: bool = option(
        False,
        cli="--baseline/--no-baseline",
        help="Also fine-tune without KD for the same epochs (a comparison row; doubles the time).",
    )


@dataclass
class ExportSettings:
    routing: Optional[str] = option(
        None,
        choices=EXPORT_ROUTINGS,
        help="gated (routers become ONNX If; default for routed models) | soft | "
        "static:conv | static:attn; ignored for models without routers.",
    )
    opset: Optional[int] = option(None, min=1, help="ONNX opset, 18 or newer (default: the exporter's).")
    dynamic_batch: bool = option(
        True, cli="--dynamic-batch/--static-batch", help="Symbolic batch dimension, or batch fixed to 1."
    )
    simplify: bool = option(
        True, cli="--simplify/--no-simplify", help="Simplify with onnxslim (kept only if it checks and matches)."
    )


@dataclass
class ValidateSettings:
    split: str = option("test", choices=SPLITS)
    limit: Optional[int] = option(None, min=1, help="Validate on the first N samples only.")
    tolerance: float = option(1e-4, min=0, help="Max abs logit difference ONNX FP32 vs PyTorch.")
    allow_uncovered: bool = option(False, help="Pass even when no sample took some If branch.")
    min_agreement: float = option(
        100.0, min=0, max=100, help="ONNX FP32: top-1 agreement with PyTorch required, in percent."
    )


@dataclass
class BenchSettings:
    warmup: int = option(10, min=0, help="Untimed calls before timing.")
    iters: int = option(100, min=1, help="Timed calls per row.")
    split: str = option("test", choices=SPLITS)
    limit: Optional[int] = option(None, min=1, help="Accuracy on the first N samples only.")


# ----------------------------------------------------------------------------------------------- loader (root options)
BAD_IMAGES = ("skip", "fail")
INTERPOLATIONS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}  # PIL codes


@dataclass
class LoaderSettings:
    workers: int | None = None  # None: min(8, CPUs)
    bad_images: str = "skip"
    holdout: float | None = None  # share of each class a flat class tree holds out (None: recorded, else 0.2)
    split_seed: int | None = None

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


SETTINGS = LoaderSettings()


def configure(
    workers: int | None = None,
    bad_images: str | None = None,
    holdout: float | None = None,
    split_seed: int | None = None,
) -> None:
    """Process-wide loader settings (`edgeconv --workers N --bad-images skip|fail --holdout F --split-seed N`)."""
    if workers is not None:
        if workers < 0 or workers > 256:
            raise EdgeconvError(f"--workers must be in [0, 256], got {workers}")
        SETTINGS.workers = workers
    if bad_images is not None:
        if bad_images not in BAD_IMAGES:
            raise EdgeconvError(f"--bad-images must be one of {', '.join(BAD_IMAGES)}, got {bad_images!r}")
        SETTINGS.bad_images = bad_images
    if holdout is not None:
        if not 0.0 < holdout < 1.0:  # also false for NaN
            raise EdgeconvError(f"--holdout must be a fraction in (0, 1), got {holdout}")
        SETTINGS.holdout = float(holdout)
    if split_seed is not None:
        if not 0 <= split_seed < 2**32:
            raise EdgeconvError(f"--split-seed must be in [0, 2**32), got {split_seed}")
        SETTINGS.split_seed = int(split_seed)
