"""Training and evaluation: an accuracy floor on a short run, hard routing close to soft, exact resume after an
interruption, and refusals for data that cannot be trained or scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeconv import artifacts
from edgeconv.common.errors import EdgeconvError
from edgeconv.data.sources import digits_images01, load_samples
from edgeconv.models import load_model, set_routing
from edgeconv.train.loop import TrainConfig, evaluate, run_train


def test_short_run_reaches_the_accuracy_floor_and_records_it(trained):
    model, ck = load_model(trained())
    test = load_samples("digits", ck["preprocessing"], "test")
    res = evaluate(model, test)
    assert res["top1"] >= 95.0, res["top1"]  # 12 epochs of routed-tiny on digits
    assert res["top1"] == pytest.approx(ck["metrics"]["test_top1"], abs=1e-4)
    assert set(res["per_class"]) == set(ck["classes"]) and min(res["per_class"].values()) >= 80.0
    assert res["loss"] < 0.5


def test_hard_routing_is_within_a_point_of_soft_and_counts_every_input(trained):
    model, ck = load_model(trained())
    test = load_samples("digits", ck["preprocessing"], "test")
    hard = evaluate(model, test)
    for name, counts in hard["routing"].items():
        assert counts["conv"] + counts["attn"] == len(test), name
    set_routing(model, "soft")
    soft = evaluate(model, test)
    assert abs(hard["top1"] - soft["top1"]) <= 1.0, (hard["top1"], soft["top1"])


def _small_digits_npz(path, n: int = 96):
    x01, y = digits_images01("train", 32)
    np.savez(
        path,
        x=(x01[:n, 0].numpy() * 255).round().astype(np.uint8),
        y=y[:n].numpy(),
        classes=np.array([str(i) for i in range(10)]),
    )
    return f"npz:{path}"


def test_resume_after_an_interruption_continues_exactly(tmp_path, monkeypatch):
    torch.set_num_threads(1)  # identical arithmetic in both runs
    data = _small_digits_npz(tmp_path / "small.npz")
    cfg = TrainConfig(epochs=3, batch_size=32)
    run_train("routed-tiny", data, str(tmp_path / "straight.pt"), cfg=cfg, img_size=32, show_progress=False)

    real_save, saves = artifacts.save_checkpoint, []

    def save_then_die(*a, **kw):  # the run is killed right after its epoch-2 checkpoint is on disk
        out = real_save(*a, **kw)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(artifacts, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_train("routed-tiny", data, str(tmp_path / "cut.pt"), cfg=cfg, img_size=32, show_progress=False)
    monkeypatch.setattr(artifacts, "save_checkpoint", real_save)
    half = artifacts.read_checkpoint(tmp_path / "cut.pt")
    assert half["extra"]["train_state"]["epoch"] == 2 and "test_top1" not in half["metrics"]

    run_train(
        "routed-tiny", data, str(tmp_path / "resumed.pt"), cfg=cfg, resume=str(tmp_path / "cut.pt"), show_progress=False
    )
    a, b = artifacts.read_checkpoint(tmp_path / "straight.pt"), artifacts.read_checkpoint(tmp_path / "resumed.pt")
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-6), k
    assert b["extra"]["train_state"]["epoch"] == 3
    assert b["provenance"]["parent_sha256"] == artifacts.file_sha256(tmp_path / "cut.pt")


def test_measured_preprocessing_for_user_data(tmp_path):
    data = _small_digits_npz(tmp_path / "small.npz", n=40)
    out = tmp_path / "m.pt"
    run_train("can-tiny", data, str(out), cfg=TrainConfig(epochs=1, batch_size=20), img_size=32, show_progress=False)
    ck = artifacts.read_checkpoint(out)
    assert ck["classes"] == [str(i) for i in range(10)]
    assert 0.05 < ck["preprocessing"]["mean"][0] < 0.6 and ck["preprocessing"]["std"][0] > 0.1
    assert ck["preprocessing"]["dataset"] == data


def test_training_refuses_unlabelled_data_and_weights_for_zoo_models(tmp_path):
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 32, 32), np.float32))
    with pytest.raises(EdgeconvError, match="have no label"):
        run_train(
            "routed-tiny",
            f"npz:{tmp_path / 'nolabels.npz'}",
            str(tmp_path / "o.pt"),
            cfg=TrainConfig(epochs=1),
            img_size=32,
            show_progress=False,
        )
    with pytest.raises(EdgeconvError, match="have no label"):  # the size comes from the npz's header: 32
        run_train(
            "routed-tiny",
            f"npz:{tmp_path / 'nolabels.npz'}",
            str(tmp_path / "o.pt"),
            cfg=TrainConfig(epochs=1),
            show_progress=False,
        )
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 1, 32, 48), np.float32))
    with pytest.raises(EdgeconvError, match="no square images .* give --img-size"):
        run_train(
            "routed-tiny", f"npz:{tmp_path / 'wide.npz'}", str(tmp_path / "o.pt"), cfg=TrainConfig(), show_progress=False
        )
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    with pytest.raises(EdgeconvError, match="--img-size is required for image folders"):
        run_train(
            "routed-tiny", f"imagefolder:{tmp_path / 'imgs'}", str(tmp_path / "o.pt"), cfg=TrainConfig(), show_progress=False
        )
    with pytest.raises(EdgeconvError, match="--weights initialises timm"):
        run_train(
            "routed-tiny",
            "digits",
            str(tmp_path / "o.pt"),
            cfg=TrainConfig(epochs=1),
            weights=str(tmp_path / "w.pt"),
            show_progress=False,
        )
    with pytest.raises(EdgeconvError, match="unknown model"):
        run_train("routed-xl", "digits", str(tmp_path / "o.pt"), cfg=TrainConfig(epochs=1), show_progress=False)
    assert not (tmp_path / "o.pt").exists()


def test_resume_needs_a_training_state(trained, tmp_path):
    model, ck = load_model(trained())
    bare = artifacts.save_checkpoint(tmp_path / "bare.pt", model, preprocessing=ck["preprocessing"], classes=ck["classes"])
    with pytest.raises(EdgeconvError, match="no training state"):
        run_train(
            "routed-tiny", "digits", str(tmp_path / "o.pt"), cfg=TrainConfig(epochs=1), resume=str(bare), show_progress=False
        )


def test_scoring_labels_the_model_does_not_have_is_an_error(trained, tmp_path):
    model, ck = load_model(trained())
    np.savez(tmp_path / "eleven.npz", x=np.zeros((2, 32, 32), np.float32), y=np.array([3, 11]))
    samples = load_samples(f"npz:{tmp_path / 'eleven.npz'}", ck["preprocessing"])
    with pytest.raises(EdgeconvError, match="label 11 does not exist for a model with 10 classes"):
        evaluate(model, samples)
