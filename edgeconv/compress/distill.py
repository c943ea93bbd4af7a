"""Knowledge distillation: a (pruned) student learns from a teacher's soft targets and, optionally, its features.

Loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T))      (Hinton et al. 2015; T^2 keeps gradient scale)
     + (1 - alpha) * CE(s, y)                                  (hard labels, with the train config's smoothing)
     + beta * MSE(P(pool(f_s)), pool(f_t))                     (--feature: pooled forward_features; P is a learned
                                                                linear projection when the widths differ, else identity)
     + the student's own auxiliary loss (router balance / decisiveness of routed blocks).

Training reuses `edgeconv.train.loop.fit` (same optimiser, schedule, augmentation), with a custom loss and a per-epoch
checkpoint. Optimiser state cannot go through the checkpoint's JSON-plain `extra`, so resumable state lives in a
side file `<out>.state.pt` (plain tensors, read with weights_only=True), removed when the run completes.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeconv.common.errors import EdgeconvError
from edgeconv.train.loop import TrainConfig


@dataclass
class DistillConfig:
    alpha: float = 0.7  # weight of the soft-target term (1 - alpha on hard labels)
    temperature: float = 4.0
    feature: bool = False
    beta: float = 1.0  # weight of the feature term when --feature

    @staticmethod
    def from_settings(s, seed: int) -> tuple["DistillConfig", TrainConfig]:
        """(distillation, training) configs from `settings.DistillSettings` (`edgeconv distill`, [distill])."""
        return (DistillConfig(alpha=s.alpha, temperature=s.temperature, feature=s.feature),
                TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=seed))  # fmt: skip

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise EdgeconvError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise EdgeconvError(f"--temperature must be > 0, got {self.temperature}")


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled features before the classifier ([B, C] from a map [B,C,H,W] or tokens [B,N,C])."""
    if not hasattr(model, "forward_features"):
        raise EdgeconvError(f"--feature: {type(model).__name__} has no forward_features")
    f = model.forward_features(x)
    return f.mean(dim=(2, 3)) if f.ndim == 4 else f.mean(dim=1)


def feature_width(model: nn.Module, pre: dict) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        w = pooled_features(model, torch.zeros(2, pre["channels"], pre["size"], pre["size"])).shape[-1]
        model.train(was)
    return int(w)


class StudentWithProjector(nn.Module):
    """The student plus the feature projector, so one optimiser trains both; forward is the student's."""

    def __init__(self, student: nn.Module, projector: nn.Module | None):
        super().__init__()
        self.student = student
        self.projector = projector

    def forward(self, x: torch.Tensor, features: bool = False):
        """Logits; with `features`, (logits, projected pooled features). The feature path runs in forward so that
        DistributedDataParallel sees every parameter that gets a gradient."""
        if not features:
            return self.student(x)
        f = pooled_features(self.student, x)
        logits = self.student.head.fc(self.student.head.norm(f))
        return logits, (self.projector(f) if self.projector is not None else f)

    def aux_loss(self):
        return self.student.aux_loss() if hasattr(self.student, "aux_loss") else None


def check_compatible(teacher_ck: dict, student_ck: dict, teacher_path, student_path) -> None:
    t, s = teacher_ck["classes"], student_ck["classes"]
    if list(t) != list(s):
        raise EdgeconvError(
            f"teacher {teacher_path} has {len(t)} classes {t[:12]}, student {student_path} has "
            f"{len(s)} classes {s[:12]}: distillation needs the same classes in the same order"
        )
    tp, sp = teacher_ck["preprocessing"], student_ck["preprocessing"]
    for k in ("size", "channels", "mean", "std"):
        if tp.get(k) != sp.get(k):
            raise EdgeconvError(f"teacher and student expect different inputs ({k}: {tp.get(k)} vs {sp.get(k)})")


def kd_loss_fn(teacher: nn.Module, dcfg: DistillConfig, tcfg: TrainConfig):
    from edgeconv.train.distributed import unwrap

    teacher.eval()
    T = dcfg.temperature

    def loss_fn(model: StudentWithProjector, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x)
            t_feat = pooled_features(teacher, x) if dcfg.feature else None
        if dcfg.feature:
            s_logits, proj = model(x, features=True)
        else:
            s_logits = model(x)
        soft = F.kl_div(F.log_softmax(s_logits / T, dim=-1), F.softmax(t_logits / T, dim=-1), reduction="batchmean") * (
            T * T
        )
        hard = F.cross_entropy(s_logits, y, label_smoothing=tcfg.label_smoothing)
        loss = dcfg.alpha * soft + (1 - dcfg.alpha) * hard
        if dcfg.feature:
            loss = loss + dcfg.beta * F.mse_loss(proj, t_feat)
        aux = unwrap(model).aux_loss()
        return loss if aux is None else loss + aux

    return loss_fn


def state_path(out) -> Path:
    return Path(str(out) + ".state.pt")


def run_distill(
    teacher_path: str,
    student_path: str,
    data: str,
    out: str,
    *,
    dcfg: DistillConfig,
    tcfg: TrainConfig,
    resume: bool = False,
    baseline: bool = True,
    command: str = "edgeconv distill",
    show_progress: bool = True,
    eval_data: str | None = None,
    allow_train_eval: bool = False,
) -> dict:
    """`edgeconv distill`: KD into the student, per-epoch checkpoint and resume; returns the comparison rows.

    With `baseline`, the same student is also fine-tuned without KD for the same epochs (same seed and schedule),
    so the table shows what distillation itself adds.
    """
    from edgeconv import artifacts
    from edgeconv.data.sources import check_held_out, load_samples, split_for
    from edgeconv.models import load_model
    from edgeconv.train import distributed
    from edgeconv.train.loop import evaluate, fit

    dcfg.check()
    ctx = distributed.context()
    ctx.per_rank_batch(tcfg.batch_size)
    teacher, t_ck = load_model(teacher_path)
    student0, s_ck = load_model(student_path)
    check_compatible(t_ck, s_ck, teacher_path, student_path)
    pre, classes = s_ck["preprocessing"], s_ck["classes"]
    eval_data = check_held_out(data, eval_data, allow_train_eval, "distill")
    train = load_samples(data, pre, split_for(data, "train"), classes=classes)
    test = load_samples(eval_data, pre, split_for(eval_data, "evaluate", trained_on=data), classes=classes)
    if len(train) == 0:
        raise EdgeconvError(f"{data}: no training samples")

    student = copy.deepcopy(student0)
    projector = None
    if dcfg.feature:
        if not hasattr(getattr(student, "head", None), "fc"):
            raise EdgeconvError(f"--feature: {student_path} has no pooled classifier head (edgeconv families only)")
        ws, wt = feature_width(student, pre), feature_width(teacher, pre)
        projector = nn.Linear(ws, wt) if ws != wt else None
    wrapped = StudentWithProjector(student, projector)
    start_epoch, opt_state = 0, None
    sp = state_path(out)
    if resume:
        if not sp.exists() or not Path(out).exists():
            raise EdgeconvError(f"--resume: no unfinished distillation at {out} (missing {sp.name})")
        st = artifacts.safe_torch_load(sp, what="distillation state")
        if not isinstance(st, dict):
            raise EdgeconvError(f"--resume: {sp} is not a distillation state")
        if st.get("teacher_sha256") != artifacts.file_sha256(teacher_path):
            raise EdgeconvError(f"--resume: {out} was distilled from a different teacher")
        resumed, _ = load_model(out)
        wrapped.student = resumed
        try:
            if projector is not None:
                projector.load_state_dict(st["projector"])
            start_epoch = int(st["epoch"])
            if not 0 <= start_epoch <= 100_000:
                raise ValueError(f"epoch {start_epoch}")
            tcfg = TrainConfig(**{**st["train_config"], "epochs": max(tcfg.epochs, start_epoch)})
            dcfg = DistillConfig(**st["distill_config"])
            tcfg.check()
            dcfg.check()
            opt_state = {"optimizer": st["optimizer"], "scheduler": st["scheduler"]}
        except EdgeconvError as e:
            raise EdgeconvError(f"--resume: {sp} records settings that cannot be used ({e})") from None
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise EdgeconvError(f"--resume: {sp} is malformed ({type(e).__name__}: {e})") from None

    prov = artifacts.provenance(command, student_path, s_ck)
    prov["teacher_sha256"] = artifacts.file_sha256(teacher_path)
    prov["teacher_path"] = str(teacher_path)

    def save(epoch: int, m: StudentWithProjector, state: dict, metrics: dict | None = None) -> None:
        artifacts.save_checkpoint(
            out,
            m.student,
            preprocessing=pre,
            classes=classes,
            metrics=metrics or {},
            provenance_rec=prov,
            extra={"distill": {"epoch": epoch, "epochs": tcfg.epochs, **asdict(dcfg)}},
        )
        buf = {
            "epoch": epoch,
            "train_config": tcfg.to_dict(),
            "distill_config": asdict(dcfg),
            "teacher_sha256": prov["teacher_sha256"],
            "optimizer": state["optimizer"],
            "scheduler": state["scheduler"],
            "projector": m.projector.state_dict() if m.projector is not None else {},
        }
        with artifacts.atomic_path(sp) as tmp:
            torch.save(buf, tmp)

    history = fit(
        wrapped,
        train,
        tcfg,
        loss_fn=kd_loss_fn(teacher, dcfg, tcfg),
        start_epoch=start_epoch,
        opt_state=opt_state,
        on_epoch=save,
        description="distill",
        show_progress=show_progress,
        ctx=ctx,
    )
    student = wrapped.student
    plain = None
    if baseline:  # every process takes part in the baseline's training too
        plain = copy.deepcopy(student0)
        fit(plain, train, TrainConfig(**{**tcfg.to_dict()}), description="fine-tune without KD",
            show_progress=show_progress, ctx=ctx)  # fmt: skip
    if not ctx.is_main:  # rank 0 alone evaluates and writes
        return None

    rows = [
        {"model": "teacher", "path": str(teacher_path), "top1 %": evaluate(teacher, test)["top1"]},
        {"model": "student before KD", "path": str(student_path), "top1 %": evaluate(student0, test)["top1"]},
        {"model": "student after KD", "path": str(out), "top1 %": evaluate(student, test)["top1"]},
    ]
    if plain is not None:
        rows.append(
            {
                "model": f"student fine-tuned without KD ({tcfg.epochs} ep)",
                "path": "-",
                "top1 %": evaluate(plain, test)["top1"],
            }
        )
    metrics = {
        f"{split_for(eval_data, 'evaluate', trained_on=data)}_top1": rows[2]["top1 %"],
        "evaluated_on": test.source,
        "teacher_top1": rows[0]["top1 %"],
        "student_before_top1": rows[1]["top1 %"],
        "epochs": tcfg.epochs,
        "train_images_per_s": history[-1]["images_per_s"] if history else None,
        **({"processes": ctx.world} if ctx.distributed else {}),
        **({"train_data": train.report(speed=False)} if hasattr(train, "report") else {}),
    }
    if baseline:
        metrics["finetune_no_kd_top1"] = rows[3]["top1 %"]
    artifacts.save_checkpoint(
        out,
        student,
        preprocessing=pre,
        classes=classes,
        metrics=metrics,
        provenance_rec=prov,
        extra={
            "distill": {
                "epoch": tcfg.epochs,
                "epochs": tcfg.epochs,
                **asdict(dcfg),
                "data": data,
                "train_config": tcfg.to_dict(),
            }
        },
    )
    sp.unlink(missing_ok=True)
    return {"rows": rows, "metrics": metrics, "out": str(out)}
