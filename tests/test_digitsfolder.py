"""The digits JPEG folder generator: layout, balance, sizes, broken files, reproducibility, CLI refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from edgeconv.common.errors import EdgeconvError
from edgeconv.data import digitsfolder
from edgeconv.data.digitsfolder import main, write_digits_folder

CLASSES = [str(i) for i in range(10)]
ARGS = dict(n_train=60, n_val=20, corrupt=2, truncated=1, min_size=24, max_size=96, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("digitsjpeg") / "a"
    return out, write_digits_folder(out, seed=0, workers=1, **ARGS)


def test_layout_and_balance(folder):
    root, manifest = folder
    assert sorted(p.name for p in root.iterdir()) == ["MANIFEST.json", "train", "val"]
    assert json.loads((root / "MANIFEST.json").read_text()) == manifest
    for split, n in (("train", 60), ("val", 20)):
        assert sorted(p.name for p in (root / split).iterdir()) == CLASSES
        per_class = {c: len(list((root / split / c).glob("img_*.jpg"))) for c in CLASSES}
        assert per_class == {c: n // 10 for c in CLASSES}
        assert manifest["splits"][split]["per_class"] == per_class
        assert manifest["splits"][split]["images"] == n
        assert len(list((root / split).glob("*/bad_*.jpg"))) == 2
        assert len(list((root / split).glob("*/trunc_*.jpg"))) == 1
        assert len([p for p in (root / split).rglob("*") if p.is_file()]) == n + 3
        # every name is unique across the split (index-based), and only these three kinds exist
        names = [p.name for p in (root / split).rglob("*.jpg")]
        assert len(names) == len(set(names))
        assert all(n.startswith(("img_", "bad_", "trunc_")) for n in names)
    assert manifest["seed"] == 0 and manifest["corrupt"] == 2 and manifest["truncated"] == 1
    assert (manifest["min_size"], manifest["max_size"]) == (24, 96)
    assert manifest["splits"]["train"]["digits_split"] == "train" and manifest["splits"]["val"]["digits_split"] == "test"
    listed = manifest["bad_files"]["corrupt"]["train"] + manifest["bad_files"]["truncated"]["val"]
    assert all((root / rel).is_file() for rel in listed)


def test_good_images_decode_as_rgb_with_varied_sizes(folder):
    root, _ = folder
    sizes = []
    for p in sorted(root.rglob("img_*.jpg")):
        with Image.open(p) as im:
            im.load()
            assert im.mode == "RGB" and im.format == "JPEG"
            sizes.append(im.size)
    assert len(sizes) == 80
    assert all(24 <= w <= 96 and 24 <= h <= 96 for w, h in sizes)
    widths, heights = {w for w, _ in sizes}, {h for _, h in sizes}
    assert len(widths) > 10 and len(heights) > 10
    assert len({round(w / h, 2) for w, h in sizes}) > 10  # aspect ratios vary


def test_broken_files_fail_to_decode(folder, monkeypatch):
    root, _ = folder
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    bad = sorted(root.rglob("bad_*.jpg"))
    trunc = sorted(root.rglob("trunc_*.jpg"))
    assert len(bad) == 4 and len(trunc) == 2
    for p in bad:
        with pytest.raises((OSError, SyntaxError, ValueError)):
            with Image.open(p) as im:
                im.load()
    for p in trunc:
        with Image.open(p) as im:  # the header is intact: it opens, and fails when decoded
            assert im.format == "JPEG"
            with pytest.raises(OSError):
                im.load()


def test_same_seed_and_any_worker_count_give_identical_files(folder, tmp_path, monkeypatch):
    root, manifest = folder
    want = _files(root)
    assert write_digits_folder(tmp_path / "again", seed=0, workers=1, **ARGS) == manifest
    assert _files(tmp_path / "again") == want
    monkeypatch.setattr(digitsfolder, "CHUNK", 7)  # several tasks per split, so both workers write
    assert write_digits_folder(tmp_path / "pool", seed=0, workers=2, **ARGS) == manifest
    assert _files(tmp_path / "pool") == want
    write_digits_folder(tmp_path / "seed1", seed=1, workers=1, **ARGS)
    other = _files(tmp_path / "seed1")
    assert other.keys() == want.keys()  # same names, other pictures
    assert all(other[k] != want[k] for k in want if "/img_" in k)


def test_refuses_non_empty_folder_and_bad_numbers(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(EdgeconvError, match="not empty"):
        write_digits_folder(full, 10, 2, progress=False)
    with pytest.raises(EdgeconvError, match="larger than"):
        write_digits_folder(tmp_path / "new", 10, 2, min_size=50, max_size=40, progress=False)
    assert not (tmp_path / "new").exists()
    for argv in (
        ["--min-size", "50", "--max-size", "40"],
        ["--min-size", "0"],
        ["--max-size", "-3"],
        ["--train", "0"],
        ["--workers", "0"],
    ):
        base = {"--train": "10", "--val": "2"}
        base.update(dict(zip(argv[::2], argv[1::2])))
        with pytest.raises(SystemExit) as e:
            main([str(tmp_path / "new"), *[x for kv in base.items() for x in kv]])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()


def test_cli_refuses_non_empty_output_with_one_line(tmp_path):
    (tmp_path / "old.jpg").write_bytes(b"x")
    r = subprocess.run(
        [sys.executable, "-m", "edgeconv.data.digitsfolder", str(tmp_path), "--train", "10", "--val", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not empty" in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.jpg"]


def test_cli_writes_a_folder(tmp_path, capsys):
    out = tmp_path / "cli"
    main([str(out), "--train", "20", "--val", "10", "--corrupt", "1", "--min-size", "30", "--max-size", "40"])
    assert "train 21 files, val 11 files" in capsys.readouterr().out
    m = json.loads((out / "MANIFEST.json").read_text())
    assert m["splits"]["train"]["files"] == 21 and m["splits"]["val"]["files"] == 11
    assert (m["min_size"], m["max_size"]) == (30, 40)
