"""Knowledge distillation into a pruned student: recovery, checkpoint/resume, feature projection, bad pairs."""

from __future__ import annotations

import pytest
import torch

from edgeconv import artifacts
from edgeconv.common.errors import EdgeconvError
from edgeconv.compress.distill import DistillConfig, run_distill, state_path
from edgeconv.compress.prune import PruneRequest, run_prune
from edgeconv.models import create_model, load_model
from edgeconv.train.loop import TrainConfig


@pytest.fixture(scope="module")
def pruned_student(trained, tmp_path_factory):
    """routed-tiny with 80% of its hidden channels removed (accuracy drops well below the teacher's)."""
    import shutil

    d = tmp_path_factory.mktemp("kd")
    teacher = d / "teacher.pt"  # an own copy: a shared fixture cache may be rewritten by another run meanwhile
    shutil.copyfile(trained("routed-tiny"), teacher)
    out = d / "student.pt"
    run_prune(str(teacher), "digits", PruneRequest(channels=0.8, criterion="l1"), str(out), command="pytest")
    return teacher, out


@pytest.mark.slow
def test_distillation_recovers_a_pruned_student_and_resumes(pruned_student, tmp_path, monkeypatch):
    teacher, student = pruned_student
    out = tmp_path / "kd.pt"
    res = run_distill(
        str(teacher),
        str(student),
        "digits",
        str(out),
        dcfg=DistillConfig(),
        tcfg=TrainConfig(epochs=2, lr=1e-3),
        baseline=True,
        show_progress=False,
    )
    rows = {r["model"].split(" (")[0]: r["top1 %"] for r in res["rows"]}
    assert set(rows) == {"teacher", "student before KD", "student after KD", "student fine-tuned without KD"}
    assert rows["student after KD"] > rows["student before KD"] + 10, rows
    model, ck = load_model(out)
    assert ck["metrics"]["test_top1"] == pytest.approx(rows["student after KD"])
    assert ck["provenance"]["teacher_sha256"] == artifacts.file_sha256(teacher)
    assert ck["config"]["structure"] == artifacts.read_checkpoint(student)["config"]["structure"]
    assert not state_path(out).exists()  # a finished run leaves no resume state behind

    # interrupted run: the epoch checkpoint and the resume state survive, --resume continues from there
    out2 = tmp_path / "kd2.pt"

    def crash(*a, **k):
        raise KeyboardInterrupt

    import edgeconv.train.loop

    monkeypatch.setattr(edgeconv.train.loop, "evaluate", crash)
    with pytest.raises(KeyboardInterrupt):
        run_distill(
            str(teacher),
            str(student),
            "digits",
            str(out2),
            dcfg=DistillConfig(),
            tcfg=TrainConfig(epochs=1, lr=1e-3),
            baseline=False,
            show_progress=False,
        )
    monkeypatch.undo()
    assert state_path(out2).exists()
    assert artifacts.read_checkpoint(out2)["extra"]["distill"]["epoch"] == 1
    res2 = run_distill(
        str(teacher),
        str(student),
        "digits",
        str(out2),
        dcfg=DistillConfig(),
        tcfg=TrainConfig(epochs=2, lr=1e-3),
        resume=True,
        baseline=False,
        show_progress=False,
    )
    assert res2["metrics"]["epochs"] == 2
    assert artifacts.read_checkpoint(out2)["extra"]["distill"]["epoch"] == 2


@pytest.mark.slow  # over 5 s: `make test` runs it, `make test-fast` stays a quick loop
def test_feature_distillation_learns_a_projection_across_widths(trained, tmp_path):
    teacher = trained("routed-tiny")  # pooled width 48
    student = tmp_path / "hvt.pt"  # pooled width 64
    pre = artifacts.read_checkpoint(teacher)["preprocessing"]
    artifacts.save_checkpoint(student, create_model("hvt-tiny"), preprocessing=pre, classes=[str(i) for i in range(10)])
    out = tmp_path / "kd.pt"
    run_distill(
        str(teacher),
        str(student),
        "digits",
        str(out),
        dcfg=DistillConfig(feature=True),
        tcfg=TrainConfig(epochs=1),
        baseline=False,
        show_progress=False,
    )
    before = load_model(student)[0].state_dict()
    after = load_model(out)[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_student_with_other_classes_fails_clearly(trained, tmp_path):
    teacher = trained("routed-tiny")
    pre = artifacts.read_checkpoint(teacher)["preprocessing"]
    student = tmp_path / "five.pt"
    artifacts.save_checkpoint(
        student, create_model("routed-tiny", num_classes=5), preprocessing=pre, classes=[str(i) for i in range(5)]
    )
    with pytest.raises(EdgeconvError, match="10 classes .* 5 classes"):
        run_distill(
            str(teacher),
            str(student),
            "digits",
            str(tmp_path / "o.pt"),
            dcfg=DistillConfig(),
            tcfg=TrainConfig(epochs=1),
            show_progress=False,
        )
    assert not (tmp_path / "o.pt").exists()


def test_bad_distill_options_fail_clearly(trained, tmp_path):
    t = str(trained("routed-tiny"))
    with pytest.raises(EdgeconvError, match="--alpha"):
        run_distill(t, t, "digits", str(tmp_path / "o.pt"), dcfg=DistillConfig(alpha=1.5), tcfg=TrainConfig(epochs=1))
    with pytest.raises(EdgeconvError, match="--resume: no unfinished distillation"):
        run_distill(t, t, "digits", str(tmp_path / "o.pt"), dcfg=DistillConfig(), tcfg=TrainConfig(epochs=1), resume=True)
