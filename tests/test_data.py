"""Data sources: the deterministic digits split, image folders and npz files in the model's input spec, and every
way such input can be wrong named in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgeconv.common.errors import EdgeconvError
from edgeconv.data.sources import (
    default_calib_dir,
    digits_images01,
    digits_split_indices,
    load_samples,
    write_digits_calibration,
)


def _png(path, size=32, mode="L", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode in ("L",) else (size, size, len(mode))
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)
    return path


def _truncated_noise_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8), "L").save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --------------------------------------------------------------------------------------------------- digits
def test_digits_split_is_deterministic_disjoint_stratified_and_complete():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    a, b = digits_split_indices(labels), digits_split_indices(labels)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    sets = [set(a[k].tolist()) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == len(labels) == 1797
    assert 0.19 < len(sets[2]) / len(labels) < 0.21
    test_counts = np.bincount(labels[a["test"]], minlength=10)
    assert test_counts.min() >= 35  # every class present in the test split


def test_digits_are_normalised_to_the_model_spec(digits_pre):
    s = load_samples("digits", digits_pre, "train")
    assert s.x.shape[1:] == (1, 32, 32) and s.x.dtype == torch.float32
    assert abs(float(s.x.mean())) < 0.15 and 0.8 < float(s.x.std()) < 1.2  # mean/std measured on train
    assert s.classes == [str(i) for i in range(10)] and set(s.y.tolist()) == set(range(10))
    assert s.fingerprint() == load_samples("digits", digits_pre, "train").fingerprint()
    assert len(load_samples("digits", digits_pre, "all")) == 1797
    assert len(load_samples("digits", digits_pre, "test", limit=7)) == 7


def test_digits_refuse_a_three_channel_model_and_unknown_splits(digits_pre):
    with pytest.raises(EdgeconvError, match="1-channel"):
        load_samples("digits", {**digits_pre, "channels": 3, "mean": [0.3] * 3, "std": [0.3] * 3})
    with pytest.raises(EdgeconvError, match="unknown split"):
        load_samples("digits", digits_pre, "holdout")
    with pytest.raises(EdgeconvError, match="unknown data source"):
        load_samples("mnist", digits_pre)


# --------------------------------------------------------------------------------------------------- image folders
def test_shipped_calibration_set_is_real_digits_in_the_model_spec(digits_pre):
    s = load_samples(f"imagefolder:{default_calib_dir()}", digits_pre, "all")
    assert len(s) == 100 and s.classes == [str(i) for i in range(10)]
    assert np.bincount(s.y.numpy()).tolist() == [10] * 10
    x01, _ = digits_images01("train", 32)
    assert s.x.std() > 0.5  # not blank images


def test_written_calibration_pngs_reload_as_the_same_pixels(tmp_path, digits_pre):
    assert write_digits_calibration(tmp_path, per_class=2) == 20
    s = load_samples(f"imagefolder:{tmp_path}", digits_pre, "all")
    x01, y = digits_images01("train", 32)
    first0 = int(torch.nonzero(y == 0)[0])
    expect = (x01[first0] * 255).round() / 255
    got = s.x[0] * digits_pre["std"][0] + digits_pre["mean"][0]
    assert torch.allclose(got, expect, atol=1e-5) and int(s.y[0]) == 0


def test_folder_labels_follow_the_model_classes_not_the_folder_order(tmp_path, digits_pre):
    _png(tmp_path / "3" / "a.png")
    _png(tmp_path / "7" / "b.png")
    own = load_samples(f"imagefolder:{tmp_path}", digits_pre, "all")  # a class tree: the whole of it
    assert own.classes == ["3", "7"] and own.y.tolist() == [0, 1]
    model_order = load_samples(f"imagefolder:{tmp_path}", digits_pre, "all", classes=[str(i) for i in range(10)])
    assert model_order.y.tolist() == [3, 7]
    with pytest.raises(EdgeconvError, match="not among the model's classes"):
        load_samples(f"imagefolder:{tmp_path}", digits_pre, "all", classes=["cat", "dog"])


def test_flat_folder_is_unlabelled(tmp_path, digits_pre):
    _png(tmp_path / "a.png")
    s = load_samples(f"imagefolder:{tmp_path}", digits_pre)
    assert s.y.tolist() == [-1] and s.classes == []


def test_rgb_folder_for_an_rgb_model_and_opaque_rgba_counts_as_rgb(tmp_path):
    pre = {"size": 16, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    _png(tmp_path / "c" / "rgb.png", 16, "RGB", 200)
    _png(tmp_path / "c" / "rgba.png", 16, "RGBA", 255)
    s = load_samples(f"imagefolder:{tmp_path}", pre)
    assert s.x.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("size,mode", [(28, "L"), (32, "RGB"), (40, "RGBA")])
def test_images_of_other_sizes_and_modes_become_the_model_input(tmp_path, digits_pre, size, mode):
    _png(tmp_path / "0" / "a.png", size=size, mode=mode, value=10)
    s = load_samples(f"imagefolder:{tmp_path}", digits_pre)
    assert s.x.shape == (1, 1, 32, 32) and torch.isfinite(s.x).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda d: (d / "0").mkdir(parents=True) or (d / "0" / "a.png").write_bytes(b"not a png"),
        lambda d: _truncated_noise_png(d / "0" / "a.png"),
    ],
)
def test_unreadable_images_are_skipped_and_listed_or_fatal_on_request(tmp_path, digits_pre, make):
    from edgeconv.data.folders import SETTINGS, configure

    root = tmp_path / "data"
    make(root)
    _png(root / "0" / "good.png")
    s = load_samples(f"imagefolder:{root}", digits_pre)
    assert s.x.shape == (1, 1, 32, 32) and s.y.tolist() == [0]
    assert list(s.skipped) == [str(root / "0" / "a.png")] and s.report()["skipped"] == 1
    before = SETTINGS.bad_images
    try:
        configure(bad_images="fail")
        with pytest.raises(EdgeconvError, match="a.png: unreadable image") as e:
            load_samples(f"imagefolder:{root}", digits_pre).x
        assert "\n" not in str(e.value)
    finally:
        configure(bad_images=before)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d.mkdir(parents=True, exist_ok=True), "no images found"),
        (lambda d: (d / "notes").mkdir(parents=True) or (d / "notes" / "a.txt").write_text("x"), "no images found"),
    ],
)
def test_bad_image_folders_are_one_readable_error(tmp_path, digits_pre, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(EdgeconvError, match=message) as e:
        load_samples(f"imagefolder:{root}", digits_pre)
    assert "\n" not in str(e.value)


def test_missing_folder_and_a_file_instead_of_a_folder(tmp_path, digits_pre):
    with pytest.raises(EdgeconvError, match="no such folder"):
        load_samples(f"imagefolder:{tmp_path / 'nope'}", digits_pre)
    f = _png(tmp_path / "one.png")
    with pytest.raises(EdgeconvError, match="is not a folder"):
        load_samples(f"imagefolder:{f}", digits_pre)


# --------------------------------------------------------------------------------------------------- npz
def test_npz_in_nchw_nhw_and_nhwc_uint8_and_float(tmp_path, digits_pre):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "nhw.npz", x=u8, y=np.array([0, 1, 2, 3]))
    np.savez(tmp_path / "nhwc.npz", x=u8[..., None], y=np.array([0, 1, 2, 3]))
    np.savez(tmp_path / "float.npz", x=(u8 / 255.0).astype(np.float32)[:, None])
    a = load_samples(f"npz:{tmp_path / 'nhw.npz'}", digits_pre)
    b = load_samples(f"npz:{tmp_path / 'nhwc.npz'}", digits_pre)
    c = load_samples(f"npz:{tmp_path / 'float.npz'}", digits_pre)
    assert a.x.shape == (4, 1, 32, 32) and torch.allclose(a.x, b.x) and torch.allclose(a.x, c.x, atol=1e-5)
    assert a.y.tolist() == [0, 1, 2, 3] and c.y.tolist() == [-1] * 4


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"x": np.zeros((4, 28, 28), np.float32)}, r"x has shape \[4, 1, 28, 28\], the model expects \[N, 1, 32, 32\]"),
        ({"x": np.zeros((4, 3, 32, 32), np.float32)}, r"the model expects \[N, 1, 32, 32\]"),
        ({"z": np.zeros(3)}, "no array named 'x'"),
        ({"x": np.zeros((4, 32, 32), np.float32), "y": np.zeros(3, np.int64)}, "y must be integer labels of shape"),
        ({"x": np.zeros((2, 32, 32), np.float32), "y": np.array([0.5, 1.0])}, "y must be integer labels"),
        ({"x": np.zeros((2, 32, 32), np.int32)}, "x has dtype int32"),
        (
            {"x": np.zeros((2, 32, 32), np.float32), "y": np.array([0, 4]), "classes": np.array(["a", "b"])},
            "label 4 is out of range for 2 classes",
        ),
    ],
)
def test_bad_npz_is_one_readable_error(tmp_path, digits_pre, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EdgeconvError, match=message):
        load_samples(f"npz:{tmp_path / 'bad.npz'}", digits_pre)


@pytest.mark.parametrize("content", [b"PK\x03\x04garbage", b"", b"\x93NUMPY garbage"])
def test_corrupt_npz_files_are_one_readable_error(tmp_path, digits_pre, content):
    (tmp_path / "bad.npz").write_bytes(content)
    with pytest.raises(EdgeconvError, match="unreadable npz|expected an .npz|not an .npz"):
        load_samples(f"npz:{tmp_path / 'bad.npz'}", digits_pre)


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path, digits_pre):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(EdgeconvError, match="unreadable npz"):
        load_samples(f"npz:{tmp_path / 'obj.npz'}", digits_pre)


# ----------------------------------------------------------------------------------------------- splits
def test_one_rule_decides_the_split_of_every_role():
    from edgeconv.data.sources import split_for

    assert [split_for("digits", r) for r in ("train", "calibrate", "evaluate")] == ["train", "train", "test"]
    assert split_for("digits", "evaluate", "val") == "val"
    for spec in ("imagefolder:x", "npz:y.npz"):
        assert {split_for(spec, r) for r in ("train", "calibrate", "evaluate")} == {"all"}


def test_evaluating_on_training_data_is_refused_unless_asked_for():
    from edgeconv.data.sources import check_held_out

    assert check_held_out("digits", None, False, "prune") == "digits"
    assert check_held_out("npz:a.npz", "npz:b.npz", False, "prune") == "npz:b.npz"
    with pytest.raises(EdgeconvError, match="prune: --data npz:a.npz has no held-out split.*--eval-on-train"):
        check_held_out("npz:a.npz", None, False, "prune")
    assert check_held_out("npz:a.npz", None, True, "prune") == "npz:a.npz"


def test_prune_on_an_unsplit_folder_refuses_before_any_work(trained, tmp_path):
    from edgeconv.compress.prune import PruneRequest, run_prune

    with pytest.raises(EdgeconvError, match="no held-out split"):
        run_prune(str(trained("routed-tiny")), f"imagefolder:{tmp_path}", PruneRequest(heads=0.25), str(tmp_path / "p.pt"))
    assert not (tmp_path / "p.pt").exists()


def test_commands_read_the_data_a_model_was_trained_on_unless_told():
    from edgeconv.data.sources import data_for

    assert data_for(None, {"dataset": "digits"}, "eval") == "digits"
    assert data_for(None, {"dataset": "imagefolder:/data/pets"}, "eval") == "imagefolder:/data/pets"
    assert data_for("npz:x.npz", {"dataset": "digits"}, "eval") == "npz:x.npz"
    with pytest.raises(EdgeconvError, match=r"validate: the model \(input 3x224x224\) records no data .* --data SPEC"):
        data_for(None, {"channels": 3, "size": 224, "source": "timm pretrained_cfg"}, "validate")


# ------------------------------------------------------------------------------------------------ data specs
def test_a_data_spec_is_parsed_once_into_kind_and_path_and_reads_as_its_text(tmp_path):
    import pickle

    from edgeconv.common.settings import LoaderSettings
    from edgeconv.data.spec import DataSpec

    spec = DataSpec.parse(f"imagefolder:{tmp_path}", LoaderSettings(workers=0, bad_images="fail"))
    assert (spec.kind, spec.path, spec) == ("imagefolder", tmp_path, f"imagefolder:{tmp_path}")
    assert DataSpec.parse(spec) is spec  # parsing a parsed spec keeps it (and its loader options)
    again = pickle.loads(pickle.dumps(spec))  # DataLoader workers and torchrun get the options too
    assert again == spec and again.kind == "imagefolder" and again.loader.bad_images == "fail"
    assert DataSpec.parse("digits").bundled and DataSpec.parse("digits").path is None
    for bad, msg in (("pets", "unknown data source"), ("npz:", "give a path"), ("folder:x", "unknown data source")):
        with pytest.raises(EdgeconvError, match=msg):
            DataSpec.parse(bad)


def test_loader_options_travel_with_the_spec_not_through_the_process_settings(tmp_path, digits_pre):
    """`--bad-images fail` given as the spec's options holds while the process default says skip."""
    from edgeconv.common.settings import SETTINGS, LoaderSettings
    from edgeconv.data.spec import DataSpec

    root = tmp_path / "data"
    (root / "0").mkdir(parents=True)
    (root / "0" / "a.png").write_bytes(b"not a png")
    _png(root / "0" / "good.png")
    assert SETTINGS.bad_images == "skip"
    strict = DataSpec.parse(f"imagefolder:{root}", LoaderSettings(workers=0, bad_images="fail"))
    with pytest.raises(EdgeconvError, match="a.png: unreadable image"):
        load_samples(strict, digits_pre).x
    lenient = load_samples(f"imagefolder:{root}", digits_pre)  # the process default: skip and list
    assert lenient.x.shape[0] == 1 and len(lenient.skipped) == 1


# ------------------------------------------------------------------------------------------------ fashion
def _fashion_installed() -> bool:
    from edgeconv.data.bundled import fashion_dir

    return (fashion_dir() / "train-images-idx3-ubyte.gz").is_file()


needs_fashion = pytest.mark.skipif(not _fashion_installed(), reason="dataset-fashion-mnist is not installed")


@needs_fashion
def test_fashion_splits_are_fixed_stratified_and_disjoint_and_its_recorded_stats_are_measured():
    from edgeconv.data.bundled import _fashion_file, bundled, fashion_split_indices

    ds = bundled("fashion")
    images, labels = _fashion_file("train")
    parts = fashion_split_indices(labels)
    assert len(parts["train"]) == 55_000 and len(parts["val"]) == 5_000
    assert not set(parts["train"]) & set(parts["val"])
    assert np.bincount(labels[parts["val"]]).tolist() == [500] * 10
    assert (fashion_split_indices(labels)["val"] == parts["val"]).all()  # the same draw every time
    x, y = ds.images01("test", 28)
    assert x.shape == (10_000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    train01 = images[parts["train"]].astype(np.float64) / 255
    assert abs(train01.mean() - ds.mean) < 5e-4 and abs(train01.std() - ds.std) < 5e-4


def test_fashion_missing_is_one_line_naming_the_package(tmp_path, monkeypatch, digits_pre):
    from edgeconv.data import bundled

    monkeypatch.setenv(bundled.FASHION_DIR_ENV, str(tmp_path))
    bundled._fashion_file.cache_clear()
    try:
        with pytest.raises(EdgeconvError, match="apt-get install dataset-fashion-mnist") as e:
            load_samples("fashion", digits_pre, "test")
        assert "\n" not in str(e.value)
    finally:
        bundled._fashion_file.cache_clear()
