"""Training and evaluation loops on in-memory samples (AdamW, warm-up + cosine, clipping, label smoothing)."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeconv.data.bundled import bundled
from edgeconv.data.sources import Samples
from edgeconv.data.spec import DataSpec
from edgeconv.models import routers
from edgeconv.models.routed import ROUTED_MODES


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    clip_grad: float = 1.0
    warmup_epochs: int = 1
    seed: int = 0
    augment: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_settings(cls, s, seed: int) -> "TrainConfig":
        """From `settings.TrainSettings` (what `edgeconv train` and the pipeline's [train] take)."""
        return cls(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
                   label_smoothing=s.label_smoothing, seed=seed, augment=s.augment)  # fmt: skip

    def check(self) -> None:
        """Ranges, before any data is loaded (each error names the CLI option)."""
        from edgeconv.common.checks import check_training
        from edgeconv.common.errors import EdgeconvError

        for name, value, kind in (("epochs", self.epochs, int), ("batch_size", self.batch_size, int),
                                  ("warmup_epochs", self.warmup_epochs, int), ("seed", self.seed, int),
                                  ("augment", self.augment, bool)):  # fmt: skip
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise EdgeconvError(f"{name} must be {'an integer' if kind is int else 'true or false'}, got {value!r}")
        if not 0 <= self.seed < 2**32 or not 0 <= self.warmup_epochs <= 100_000:
            raise EdgeconvError(f"seed must be in [0, 2**32) and warmup_epochs in [0, 100000], got {self.seed}, "
                                f"{self.warmup_epochs}")  # fmt: skip

        check_training(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing,
            clip_grad=self.clip_grad,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random affine jitter (shift +-10%, rotate +-10 deg, scale 0.9-1.1): digits stay legible."""
    B = x.shape[0]
    ang = (torch.rand(B, generator=gen) - 0.5) * (2 * math.pi / 18)
    scale = 1 + (torch.rand(B, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(B, 2, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    bg = x.amin(dim=(1, 2, 3), keepdim=True)  # fill with the image's background value, not zero
    return F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_total: int):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or n.endswith(".pos") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    warm = max(1, int(steps_total * cfg.warmup_epochs / max(cfg.epochs, 1)))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps_total - warm)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def supervised_loss(cfg: TrainConfig) -> LossFn:
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from edgeconv.train.distributed import unwrap

        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        inner = unwrap(model)
        aux = inner.aux_loss() if hasattr(inner, "aux_loss") else None
        return loss if aux is None else loss + aux

    return loss_fn


def _epoch_batches(train, cfg: TrainConfig, gen: torch.Generator, epoch: int, ctx) -> Iterator:
    """One epoch of (x, y) training batches for this process.

    In memory and in one process: a seeded permutation and the affine jitter, drawn from `gen` (whose state the
    checkpoint keeps). Image folders, and any source under torchrun: a DistributedSampler seeded by (seed, epoch),
    batch/W samples per process; folders draw random resized crops seeded per (seed, epoch, file), in memory the
    jitter is seeded per (seed, epoch, rank), so a resumed epoch is the same as an uninterrupted one.
    """
    from edgeconv.train import distributed

    if isinstance(train, Samples):
        if ctx.distributed:
            step = ctx.per_rank_batch(cfg.batch_size)
            order = torch.tensor(list(distributed.sampler(len(train), ctx, cfg.seed, epoch)), dtype=torch.int64)
            jitter = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + ctx.rank)
        else:
            step, order, jitter = cfg.batch_size, torch.randperm(len(train), generator=gen), gen
        for i in range(0, len(order), step):
            idx = order[i : i + step]
            x, y = train.x[idx], train.y[idx]
            yield (augment_batch(x, jitter) if cfg.augment else x), y
        return
    per_rank = ctx.per_rank_batch(cfg.batch_size)
    sampler = distributed.sampler(len(train), ctx, cfg.seed, epoch)
    for batch in train.loader(per_rank, train=cfg.augment, seed=cfg.seed, epoch=epoch, sampler=sampler):
        x, y = train.clean(batch)
        if len(y):
            yield x, y


def steps_per_epoch(n: int, batch_size: int, ctx) -> int:
    if not ctx.distributed:
        return math.ceil(n / batch_size)
    return math.ceil(math.ceil(n / ctx.world) / ctx.per_rank_batch(batch_size))


def fit(
    model: nn.Module,
    train,
    cfg: TrainConfig,
    *,
    loss_fn: LossFn | None = None,
    start_epoch: int = 0,
    opt_state: dict | None = None,
    description: str = "train",
    on_epoch: Callable[[int, nn.Module, dict], None] | None = None,
    show_progress: bool = True,
    ctx=None,
) -> list[dict]:
    """Train for cfg.epochs (from start_epoch); `on_epoch(epoch, model, state)` can checkpoint. Returns history.

    `train` is in-memory `Samples` or a streamed `FolderSamples`. Under torchrun (`ctx`, see edgeconv.train.distributed)
    the model runs as DistributedDataParallel and only rank 0 calls `on_epoch` and shows progress. Each epoch's
    record has its loss, images/s (all processes together) and seconds.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edgeconv.train import distributed

    ctx = ctx or distributed.Context()
    seed_everything(cfg.seed + start_epoch)
    gen = torch.Generator().manual_seed(cfg.seed + start_epoch)
    loss_fn = loss_fn or supervised_loss(cfg)
    steps = steps_per_epoch(len(train), cfg.batch_size, ctx)
    opt, sched = make_optimizer(model, cfg, steps * cfg.epochs)
    if opt_state:
        try:
            opt.load_state_dict(opt_state["optimizer"])
            sched.load_state_dict(opt_state["scheduler"])
            if opt_state.get("rng") is not None:  # same batches and jitter as an uninterrupted run
                gen.set_state(opt_state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            from edgeconv.common.errors import EdgeconvError

            raise EdgeconvError(f"--resume: the recorded optimizer state does not fit ({type(e).__name__}: {e})") from None
    net = distributed.wrap(model, ctx)
    history = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        disable=not (show_progress and ctx.is_main),
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=steps * cfg.epochs, completed=steps * start_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            total, n, t0 = 0.0, 0, time.perf_counter()
            for x, y in _epoch_batches(train, cfg, gen, epoch, ctx):
                loss = loss_fn(net, x, y)
                finite = bool(torch.isfinite(loss.detach()))
                if ctx.distributed:  # every process stops at the same step: none is left waiting in an all-reduce
                    finite = ctx.all_sum([0.0 if finite else 1.0])[0] == 0
                if not finite:
                    from edgeconv.common.errors import EdgeconvError

                    where = "" if not ctx.distributed else f" on at least one of the {ctx.world} processes"
                    raise EdgeconvError(
                        f"training diverged in epoch {epoch + 1}: the loss is not finite{where} (non-finite inputs "
                        f"or too high a learning rate, --lr {cfg.lr:g}); the last finished epoch's checkpoint is kept"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(y)
                n += len(y)
                rate = n * ctx.world / max(time.perf_counter() - t0, 1e-9)
                prog.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} {rate:,.0f} img/s")
            total, n = ctx.all_sum([total, float(n)])
            seconds = time.perf_counter() - t0
            rec = {"epoch": epoch + 1, "loss": total / max(n, 1), "images_per_s": round(n / max(seconds, 1e-9), 1),
                   "seconds": round(seconds, 2)}  # fmt: skip
            history.append(rec)
            prog.update(task, info=f"epoch {epoch + 1}/{cfg.epochs} loss {rec['loss']:.3f} {rec['images_per_s']:,.0f} img/s")
            if on_epoch and ctx.is_main:
                on_epoch(
                    epoch + 1,
                    model,
                    {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": gen.get_state()},
                )
            ctx.barrier()  # no process starts the next epoch before rank 0 has written this one
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, samples, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Logits and labels of every readable sample (a streamed folder skips unreadable files), plus per-router counts
    of samples sent to each branch.

    Results go into buffers allocated once for the whole set: small per-batch tensors kept alive between the large
    short-lived ones would pin the heap, and memory would grow with the number of files instead of staying flat.
    """
    model.eval()
    logits = labels = None
    n = 0
    routes: dict[str, list[int]] = {name: [0, 0] for name, _ in routers(model)}
    for x, y in samples.batches(batch_size):
        out = model(x)
        if logits is None:
            logits = torch.empty(len(samples), out.shape[1], dtype=out.dtype)
            labels = torch.empty(len(samples), dtype=torch.int64)
        logits[n : n + len(y)] = out
        labels[n : n + len(y)] = y
        n += len(y)
        for name, m in routers(model):
            if m.last_route is not None and m.mode in ROUTED_MODES:
                routes[name][1] += int(m.last_route.sum())
                routes[name][0] += int((~m.last_route).sum())
    if logits is None:
        from edgeconv.common.errors import EdgeconvError
        from edgeconv.data.folders import FolderSamples

        if isinstance(samples, FolderSamples) and samples.skipped:
            raise samples.nothing_readable(samples.source)
        raise EdgeconvError(f"{samples.source}: no samples to evaluate")
    return logits[:n], labels[:n], routes


def evaluate(model: nn.Module, samples, batch_size: int = 256) -> dict:
    """Top-1, loss, per-class accuracy, (for routed models) the share of inputs per branch, and images/s."""
    import time

    t0 = time.perf_counter()
    logits, y, routes = predict(model, samples, batch_size)
    seconds = time.perf_counter() - t0
    labelled = y >= 0
    if labelled.any() and int(y.max()) >= logits.shape[1]:
        from edgeconv.common.errors import EdgeconvError

        raise EdgeconvError(
            f"{samples.source}: label {int(y.max())} does not exist for a model with {logits.shape[1]} classes"
        )
    pred = logits.argmax(1)
    res: dict = {
        "n": int(len(y)),
        "top1": float((pred[labelled] == y[labelled]).float().mean() * 100) if labelled.any() else float("nan"),
    }
    res["loss"] = float(F.cross_entropy(logits[labelled], y[labelled])) if labelled.any() else float("nan")
    per_class = {}
    for c in range(len(samples.classes)):
        sel = y == c
        if sel.any():
            per_class[samples.classes[c]] = float((pred[sel] == c).float().mean() * 100)
    res["per_class"] = per_class
    res["routing"] = {name: {"conv": n[0], "attn": n[1]} for name, n in routes.items()}
    res["images_per_s"] = round(len(y) / max(seconds, 1e-9), 1)
    res["seconds"] = round(seconds, 2)
    if hasattr(samples, "report"):
        res["data"] = samples.report()
    return res


def run_train(
    model_name: str,
    data: str,
    out: str,
    *,
    cfg: TrainConfig,
    img_size: int | None = None,
    in_chans: int = 1,
    resume: str | None = None,
    weights: str | None = None,
    command: str = "edgeconv train",
    show_progress: bool = True,
) -> dict:
    """`edgeconv train`: build (or resume) a model, train on the split, measure val/test, write the checkpoint.

    The checkpoint is rewritten (atomically) after every epoch with the optimizer, scheduler and sampler state, so
    an interrupted run loses at most one epoch and `resume` continues it exactly.
    """
    import time
    from pathlib import Path

    from edgeconv import artifacts
    from edgeconv.common.checks import check_input_shape
    from edgeconv.common.errors import EdgeconvError
    from edgeconv.data.folders import split_record
    from edgeconv.data.sources import has_splits, load_samples, split_for
    from edgeconv.models import create_model, load_model, parse_name
    from edgeconv.train import distributed

    cfg.check()
    check_input_shape(img_size, in_chans)
    ctx = distributed.context()
    ctx.per_rank_batch(cfg.batch_size)
    start_epoch, opt_state, seconds_before, parent_info = 0, None, 0.0, None
    if resume:
        model, ckpt = load_model(resume)
        pre, classes, parent_info = ckpt["preprocessing"], ckpt["classes"], ckpt
        extra = ckpt.get("extra")
        state = extra.get("train_state") if isinstance(extra, dict) else None
        if state is None:
            raise EdgeconvError(f"{resume}: has no training state to resume from (it was not written by train)")
        try:
            start_epoch, seconds_before = int(state["epoch"]), float(state.get("seconds", 0.0))
            if not 0 <= start_epoch <= 100_000:
                raise ValueError(f"epoch {start_epoch}")
            cfg = TrainConfig(**{**state["config"], "epochs": max(cfg.epochs, start_epoch)})
            cfg.check()
            opt_state = {"optimizer": state["optimizer"], "scheduler": state["scheduler"], "rng": state.get("rng")}
            data = state.get("data", data)
            if not isinstance(data, str):
                raise TypeError("data is not a string")
        except EdgeconvError as e:
            raise EdgeconvError(f"{resume}: its training state records settings that cannot be used ({e})") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EdgeconvError(f"{resume}: malformed training state ({type(e).__name__}: {e})") from None
        train = load_samples(data, pre, split_for(data, "train"), classes=classes)
        _check_trainable(data, train)
    else:
        parse_name(model_name)  # an unknown name fails before any data is loaded
        timm_name = model_name[5:] if model_name.startswith("timm:") else None
        spec = DataSpec.parse(data)
        if spec.kind == "npz" and img_size is None and not timm_name:
            from edgeconv.data.sources import npz_image_size

            img_size = npz_image_size(spec.path)
            if img_size is None:
                raise EdgeconvError(
                    f"--data {data}: no square images in an array 'x' ([N, C, S, S] or [N, S, S, C]); give --img-size"
                )
        if not spec.bundled and img_size is None and not timm_name:
            raise EdgeconvError("--img-size is required for image folders (the size images are resized to)")
        if weights and parse_name(model_name)[0] not in ("timm", "module"):
            raise EdgeconvError(
                "--weights initialises timm:NAME and package.module:factory models; zoo models train from scratch "
                "or --resume"
            )
        if spec.bundled:
            ds = bundled(spec.kind)
            pre, classes = ds.preprocessing(img_size), list(ds.classes)
            train = load_samples(data, pre, "train")
        elif timm_name:  # timm's convention for the model: its pretrained config's size, filter, crop, mean/std
            from edgeconv.models.timm_family import pretrained_preprocessing

            pre = {**pretrained_preprocessing(timm_name, img_size, in_chans), "dataset": data, **split_record(data)}
            train = load_samples(data, pre, split_for(data, "train"))
            classes = train.classes
        else:
            pre, train = _measured_preprocessing(data, int(img_size), in_chans)
            classes = train.classes
        _check_trainable(data, train)
        seed_everything(cfg.seed)  # the initial weights are part of what the seed fixes
        model = create_model(model_name, num_classes=len(classes), in_chans=pre["channels"], img_size=pre["size"])
        if weights:
            from edgeconv.models.importer import load_into

            load_into(model, weights)
    seed_everything(cfg.seed)
    prov = artifacts.provenance(command, resume, parent_info)  # hashed once: `out` may be the resumed file itself
    t0 = time.perf_counter()
    last_state: dict = {}

    def save(epoch: int, m: nn.Module, state: dict, metrics: dict | None = None) -> None:
        last_state.update(
            {
                "epoch": epoch,
                "config": cfg.to_dict(),
                "data": data,
                "seconds": seconds_before + time.perf_counter() - t0,
                **state,
            }
        )
        artifacts.save_checkpoint(
            out,
            m,
            preprocessing=pre,
            classes=classes,
            metrics=metrics or {},
            provenance_rec=prov,
            extra={"train_state": dict(last_state)},
        )

    history = fit(
        model,
        train,
        cfg,
        start_epoch=start_epoch,
        opt_state=opt_state,
        on_epoch=save,
        description=f"train {model.cfg['family']}-{model.cfg.get('variant')}",
        show_progress=show_progress,
        ctx=ctx,
    )
    if not ctx.is_main:  # rank 0 alone evaluates and writes
        return None
    seconds = seconds_before + time.perf_counter() - t0
    metrics: dict = {"train_seconds": round(seconds, 1), "epochs": cfg.epochs}
    if history:
        metrics["train_images_per_s"] = round(sum(h["images_per_s"] for h in history) / len(history), 1)
    if ctx.distributed:
        metrics["processes"] = ctx.world
    if hasattr(train, "report"):
        metrics["train_data"] = train.report(speed=False)
    for split in ("val", "test") if DataSpec.parse(data).bundled else ("val",) if has_splits(data) else ():
        r = evaluate(model, load_samples(data, pre, split, classes=classes))
        metrics[f"{split}_top1"] = r["top1"]
    if not last_state and resume:  # nothing left to train: keep the resumed state as it was
        last_state.update(parent_info["extra"]["train_state"])
    artifacts.save_checkpoint(
        out,
        model,
        preprocessing=pre,
        classes=classes,
        metrics=metrics,
        provenance_rec=prov,
        extra={"train_state": last_state},
    )
    return {"out": str(Path(out)), **metrics}


def _check_trainable(data: str, train: Samples) -> None:
    from edgeconv.common.errors import EdgeconvError

    if len(train) == 0:
        raise EdgeconvError(f"{data}: no training samples")
    if bool((train.y < 0).any()):
        raise EdgeconvError(
            f"{data}: {int((train.y < 0).sum())} sample(s) have no label; training needs "
            "class sub-folders (imagefolder) or a 'y' array (npz)"
        )


MEASURE_LIMIT = 2000  # images (a class-stratified subset) used to measure a folder's mean/std


def _measured_preprocessing(data: str, size: int, channels: int):
    """Preprocessing for a user's data set: its own per-channel mean/std, measured on (a stratified subset of at
    most MEASURE_LIMIT of) the training samples by the evaluation geometry; returns it and the training set."""
    from edgeconv.data.folders import split_record
    from edgeconv.data.sources import load_samples, split_for

    split = split_for(data, "train")
    raw = load_samples(data, {"size": size, "channels": channels, "mean": [0.0] * channels, "std": [1.0] * channels}, split)
    x = raw.stratified(MEASURE_LIMIT, seed=0).x
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    pre = {
        "size": size,
        "channels": channels,
        "mean": [round(float(v), 4) for v in mean],
        "std": [round(float(v), 4) for v in std],
        "layout": "NCHW",
        "pixel_range": "[0,1] before normalisation",
        "dataset": data,
        **split_record(data),
    }
    return pre, load_samples(data, pre, split)
