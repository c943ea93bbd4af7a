"""Image folders as users have them: the ImageNet layout, mixed sizes resized by the preprocessing, streaming through
DataLoader workers, unreadable files counted and skipped, stratified calibration subsets with a file-list hash."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeconv.common.errors import EdgeconvError
from edgeconv.data.folders import SETTINGS, FolderSamples, configure, eval_geometry, scan, stratified_indices
from edgeconv.data.sources import check_held_out, has_splits, load_samples, split_for

RGB32 = {"size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small ImageNet-layout folder of mixed-size JPEG digits, with 2 corrupt and 1 truncated files per split."""
    from edgeconv.data.digitsfolder import write_digits_folder

    root = tmp_path_factory.mktemp("folder") / "digits"
    write_digits_folder(root, 300, 100, seed=0, corrupt=2, truncated=1, progress=False)
    return root


def test_imagenet_layout_has_splits_and_each_split_is_its_subfolder(folder):
    spec = f"imagefolder:{folder}"
    assert has_splits(spec) and split_for(spec, "train") == "train" and split_for(spec, "evaluate") == "test"
    assert check_held_out(spec, None, False, "distill") == spec  # no --eval-data needed: val/ is held out
    train, val = scan(folder, "train"), scan(folder, "val")
    assert len(train) == 303 and len(val) == 103 and train.classes == [str(i) for i in range(10)]
    assert all("/train/" in f for f in train.files) and all("/val/" in f for f in val.files)
    assert len(scan(folder, "test")) == len(val)  # no test/: evaluation reads val/
    assert len(scan(folder, "all")) == 406
    with pytest.raises(EdgeconvError, match="a folder"):
        load_samples("imagefolder:", RGB32)  # not the current folder


def _class_tree(root, per_class: dict[str, int]):
    for c, n in per_class.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (20, 30), (10 * i % 255, 20, 30)).save(root / c / f"{i:03d}.png")


def test_flat_class_tree_gets_a_seeded_stratified_split(tmp_path):
    _class_tree(tmp_path, {"a": 50, "b": 10, "c": 1})
    spec = f"imagefolder:{tmp_path}"
    assert has_splits(spec) and split_for(spec, "evaluate") == "test"
    assert check_held_out(spec, None, False, "prune") == spec  # the held-out part is evaluated, not training data
    train, test, every = scan(tmp_path, "train"), scan(tmp_path, "test"), scan(tmp_path, "all")
    assert scan(tmp_path, "val").files == test.files and len(every) == 61
    assert not set(train.files) & set(test.files) and len(train) + len(test) == 61
    held = np.bincount(test.labels, minlength=3).tolist()
    assert held == [10, 2, 0]  # 20 % of every class, none of a one-file class
    assert "seeded split" in test.split
    # the same split on every call; another seed or holdout gives another
    assert scan(tmp_path, "test").files == test.files
    try:
        configure(split_seed=1)
        assert scan(tmp_path, "test").files != test.files
        configure(split_seed=0, holdout=0.5)
        assert np.bincount(scan(tmp_path, "test").labels, minlength=3).tolist() == [25, 5, 0]
    finally:
        SETTINGS.holdout = SETTINGS.split_seed = None
    # a file added later moves at most one other file of its class across the split
    Image.new("RGB", (20, 30)).save(tmp_path / "a" / "new.png")
    moved = set(test.files) ^ (set(scan(tmp_path, "test").files) - {str(tmp_path / "a" / "new.png")})
    assert len(moved) <= 1


def test_a_class_trees_split_rule_travels_with_the_model_and_another_tree_is_read_whole(tmp_path):
    from edgeconv.data.folders import split_record, split_rule

    _class_tree(tmp_path / "a", {"x": 10, "y": 10})
    _class_tree(tmp_path / "b", {"x": 5, "y": 5})
    spec_a, spec_b = f"imagefolder:{tmp_path / 'a'}", f"imagefolder:{tmp_path / 'b'}"
    try:
        configure(split_seed=7, holdout=0.3)  # `edgeconv --split-seed 7 --holdout 0.3 train ...`
        rec = split_record(spec_a)
    finally:
        SETTINGS.holdout = SETTINGS.split_seed = None
    assert rec == {"split_rule": {"holdout": 0.3, "seed": 7}} and split_record(f"imagefolder:{tmp_path / 'b' / 'x'}") == {}
    assert split_rule(rec) == (0.3, 7)  # a later `eval` without the flags uses the model's recorded rule
    held = load_samples(spec_a, {**RGB32, **rec}, "test")
    assert len(held) == 6 and "holdout 0.3, seed 7" in held.source
    assert split_for(spec_a, "evaluate", trained_on=spec_a) == "test"
    assert split_for(spec_b, "evaluate", trained_on=spec_a) == "all"  # a separate tree to evaluate on: all of it


def test_unlabelled_folder_stays_one_unsplit_set(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 30)).save(tmp_path / f"{i}.png")
    spec = f"imagefolder:{tmp_path}"
    assert not has_splits(spec) and split_for(spec, "evaluate") == "all"
    with pytest.raises(EdgeconvError, match="no held-out split"):
        check_held_out(spec, None, False, "prune")
    with pytest.raises(EdgeconvError, match="holdout"):
        configure(holdout=1.5)


def test_evaluation_geometry_resizes_the_shorter_side_and_centre_crops():
    assert eval_geometry(32, 32, {"size": 32}) == (None, (0, 0, 32, 32))  # already the input: untouched
    resize, box = eval_geometry(64, 128, {"size": 32})
    assert resize == (32, 64) and box == (0, 16, 32, 48)
    resize, box = eval_geometry(100, 100, {"size": 224, "crop_pct": 0.875})  # timm's convention
    assert resize == (256, 256) and box == (16, 16, 240, 240)


def test_streamed_batches_skip_and_list_unreadable_files_and_do_not_depend_on_workers(folder):
    from edgeconv.data.folders import SETTINGS, configure

    before = SETTINGS.workers
    try:
        outs = {}
        for w in (0, 2):
            configure(workers=w)
            s = load_samples(f"imagefolder:{folder}", RGB32, "val")
            assert isinstance(s, FolderSamples)
            xs, ys = zip(*s.batches(16))
            outs[w] = torch.cat(xs), torch.cat(ys)
            assert len(s.skipped) == 3 and all("bad_" in p or "trunc_" in p for p in s.skipped)
            assert s.report()["skipped"] == 3 and s.images_per_s > 0
        assert torch.equal(outs[0][0], outs[2][0]) and torch.equal(outs[0][1], outs[2][1])
        assert outs[0][0].shape == (100, 3, 32, 32) and torch.isfinite(outs[0][0]).all()
    finally:
        SETTINGS.workers = before


def test_training_crops_are_seeded_per_epoch_and_file(folder):
    s = load_samples(f"imagefolder:{folder}", RGB32, "train")
    good = [i for i, f in enumerate(s.index.files) if "/img_" in f][:4]
    sub = FolderSamples(s.index.subset(np.array(good)), RGB32, s.source)

    def crops(epoch):
        (batch,) = list(sub.loader(4, train=True, seed=0, epoch=epoch, workers=0))
        return batch[0]

    assert torch.equal(crops(0), crops(0)) and not torch.equal(crops(0), crops(1))
    (plain,) = list(sub.loader(4, workers=0))
    assert not torch.equal(crops(0), plain[0])


def test_stratified_subsets_keep_class_proportions_and_are_seeded():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    idx = stratified_indices(labels, 20, seed=0)
    assert len(idx) == 20 and np.bincount(labels[idx]).tolist() == [10, 6, 3, 1]
    assert np.array_equal(idx, stratified_indices(labels, 20, seed=0))
    assert not np.array_equal(idx, stratified_indices(labels, 20, seed=1))
    assert np.array_equal(np.sort(idx), idx)


def test_calibration_limit_is_stratified_and_records_the_file_list(folder):
    from edgeconv.quantize.calibration import load_calibration

    calib = load_calibration(RGB32, data=f"imagefolder:{folder}", limit=40)
    rec = calib.record()
    assert calib.size == 40 and "stratified 40 of 303" in rec["source"]
    assert len(rec["file_list_sha256"]) == 64 and rec["files"] == 40
    counts = np.bincount(calib.samples.y.numpy(), minlength=10)
    assert counts.min() >= 3 and counts.max() <= 5  # 40 of ~30 per class
    again = load_calibration(RGB32, data=f"imagefolder:{folder}", limit=40).record()
    assert again["file_list_sha256"] == rec["file_list_sha256"] and again["sha256"] == rec["sha256"]
    other = load_calibration(RGB32, data=f"imagefolder:{folder}", limit=41).record()
    assert other["file_list_sha256"] != rec["file_list_sha256"]
    seeded = load_calibration(RGB32, data=f"imagefolder:{folder}", limit=40, seed=7)
    srec = seeded.record()
    assert srec["files"] == 40 and "seed 7" in srec["source"]
    assert srec["file_list_sha256"] != rec["file_list_sha256"] and srec["sha256"] != rec["sha256"]
    assert (np.bincount(seeded.samples.y.numpy(), minlength=10) == counts).all()  # the same quota per class
    # a seed with nothing to draw (every sample used) is refused rather than silently ignored
    for limit in (None, 303, 500):
        with pytest.raises(EdgeconvError, match=r"--calib-seed 7 has no subset to draw: all 303 .*below 303"):
            load_calibration(RGB32, data=f"imagefolder:{folder}", limit=limit, seed=7)


def test_holding_a_folder_in_memory_is_refused_above_the_limit(folder, monkeypatch):
    import edgeconv.data.folders as folders

    monkeypatch.setattr(folders, "MEMORY_LIMIT_BYTES", 1000)
    with pytest.raises(EdgeconvError, match=r"need .* GiB in memory.*--limit"):
        load_samples(f"imagefolder:{folder}", RGB32, "val").x


@pytest.mark.slow
def test_train_and_eval_on_an_imagenet_layout_folder(folder, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    out = tmp_path / "m.pt"
    r = CliRunner().invoke(
        app,
        ["train", "-m", "resformer-tiny", "--data", f"imagefolder:{folder}", "--img-size", "32", "--in-chans", "3",
         "--epochs", "3", "--batch-size", "32", "-o", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "skipped 3 unreadable file(s) of 303" in r.output
    from edgeconv.artifacts import read_checkpoint

    metrics = read_checkpoint(out)["metrics"]
    assert metrics["train_data"]["skipped"] == 3 and metrics["train_images_per_s"] > 0
    assert 0 <= metrics["val_top1"] <= 100
    r = CliRunner().invoke(app, ["eval", str(out), "--data", f"imagefolder:{folder}", "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["n"] == 100 and res["data"]["skipped"] == 3 and res["images_per_s"] > 0


def test_a_folder_holding_only_val_is_that_split_not_a_class_named_val(tmp_path):
    """`root/val/<class>/...` alone: evaluation reads val/ with its class folders; training says what is missing."""
    from PIL import Image

    from edgeconv.data.sources import has_splits, load_samples, split_for

    for c in ("0", "1"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), (10 * i, 50, 90)).save(tmp_path / "val" / c / f"{i}.png")
    spec = f"imagefolder:{tmp_path}"
    assert has_splits(spec) and split_for(spec, "evaluate") == "test"
    s = load_samples(spec, RGB32, split_for(spec, "evaluate"), classes=["0", "1", "2"])
    assert len(s) == 4 and sorted(s.y.tolist()) == [0, 0, 1, 1]
    with pytest.raises(EdgeconvError, match=r"has no train/ folder \(found: val\)"):
        load_samples(spec, RGB32, "train")
