"""The bad-input battery: every command x every class of bad input ends in one line naming what is wrong, a non-zero
exit, no traceback, nothing new written, and every input file byte-identical afterwards.

Classes: missing, empty, truncated, random bytes, the wrong kind of file, a directory, a text file, names with rich
markup or too long for the file system; outputs that are inputs, directories, under a file, or too long; numbers
that are negative, zero, huge, NaN or infinite. Crafted configs, traversal and Ctrl-C have their own tests in
tests/test_hardening.py; this file holds the table that runs every command against every class.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

# ----------------------------------------------------------------------------------------------- the world a case sees
KINDS = {"pt": ".pt", "onnx": ".onnx", "tflite": ".tflite", "toml": ".toml", "json": ".json", "npz": ".npz", "png": ".png"}


@pytest.fixture(scope="module")
def good(trained, exported, tmp_path_factory) -> dict[str, Path]:
    """Valid files of every kind an argument takes, in a folder of their own (copied: tests never touch the cache)."""
    d = tmp_path_factory.mktemp("good")
    files = {"pt": d / "m.pt", "onnx": d / "m.onnx"}
    shutil.copyfile(trained("routed-tiny"), files["pt"])
    shutil.copyfile(exported("routed-tiny"), files["onnx"])
    files["toml"] = d / "p.toml"
    files["toml"].write_text('[pipeline]\nname = "b"\n\n[train]\nmodel = "routed-tiny"\nepochs = 1\n')
    files["json"] = d / "bench.json"
    files["json"].write_text('{"rows": []}\n')
    (d / "battery_net.py").write_text(NET)  # a user's module for `import` (found through sys.path, see the test)
    return files


USER_NET = "battery_net:build"  # the user's factory written by the `good` fixture
NET = """
import torch.nn as nn


def build(num_classes, in_chans):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


def _bad_file(d: Path, cls: str, kind: str, good: dict[str, Path]) -> Path:
    """A file of class `cls` where an argument expects `kind`, named with that kind's suffix."""
    suffix = KINDS[kind]
    p = d / f"bad{suffix}"
    source = good.get(kind, good["onnx"] if kind != "onnx" else good["pt"])
    if cls == "missing":
        return p
    if cls == "empty":
        p.write_bytes(b"")
    elif cls == "truncated":
        data = source.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif cls == "random":
        p.write_bytes(random.Random(0).randbytes(4096))
    elif cls == "text":
        p.write_text("model = 'routed-tiny'\n" if kind != "toml" else "[pipeline\nname = \n")
    elif cls == "wrong-kind":  # a valid file of another kind under this kind's name
        other = good["onnx"] if kind in ("pt", "tflite", "npz", "png") else good["pt"]
        p.write_bytes(other.read_bytes())
    elif cls == "directory":
        p.mkdir()
        (p / "inner.txt").write_text("x")
    elif cls == "markup":
        p = d / f"[bold red]x[/]:smile:{suffix}"
    elif cls == "too-long":
        p = d / ("n" * 300 + suffix)
    else:
        raise AssertionError(cls)
    return p


FILE_CLASSES = ["missing", "empty", "truncated", "random", "text", "wrong-kind", "directory", "markup", "too-long"]

# slot name, argv with X for the bad file (and G:kind for a good file, O:name for an output path), X's kind
SLOTS = [
    ("eval", ["eval", "X"], "pt"),
    ("prune", ["prune", "X", "--heads", "0.25", "-o", "O:p.pt"], "pt"),
    ("distill --teacher", ["distill", "--teacher", "X", "--student", "G:pt", "--epochs", "1", "-o", "O:s.pt"], "pt"),
    ("distill --student", ["distill", "--teacher", "G:pt", "--student", "X", "--epochs", "1", "-o", "O:s.pt"], "pt"),
    ("export", ["export", "X", "-o", "O:x.onnx"], "pt"),
    ("quantize .pt", ["quantize", "X", "--int8", "-o", "O:q.onnx"], "pt"),
    ("quantize .onnx", ["quantize", "X", "--int8", "-o", "O:q.onnx"], "onnx"),
    ("quantize tflite", ["quantize", "X", "--int8", "-b", "tflite", "-o", "O:q.tflite"], "onnx"),
    ("quantize --calib", ["quantize", "G:onnx", "--int8", "--calib", "X", "-o", "O:q.onnx"], "npz"),
    ("validate", ["validate", "X"], "onnx"),
    ("validate --against", ["validate", "G:onnx", "--against", "X"], "pt"),
    ("bench .onnx", ["bench", "X", "--iters", "1", "--warmup", "0"], "onnx"),
    ("bench .pt", ["bench", "X", "--iters", "1", "--warmup", "0"], "pt"),
    ("bench .tflite", ["bench", "X", "--iters", "1", "--warmup", "0"], "tflite"),
    ("bench --reference", ["bench", "G:onnx", "--reference", "X", "--iters", "1", "--warmup", "0"], "pt"),
    ("bench --compare", ["bench", "G:onnx", "--compare", "X", "--iters", "1", "--warmup", "0"], "json"),
    ("info .pt", ["info", "X"], "pt"),
    ("info .onnx", ["info", "X"], "onnx"),
    ("info .tflite", ["info", "X"], "tflite"),
    ("inspect", ["inspect", "X", "digits:0", "-o", "O:insp"], "pt"),
    ("inspect IMAGES", ["inspect", "G:pt", "X", "-o", "O:insp"], "png"),
    ("train --resume", ["train", "--resume", "X", "--epochs", "1", "-o", "O:t.pt"], "pt"),
    ("train --data npz", ["train", "--data", "npz:X", "--epochs", "1", "-o", "O:t.pt"], "npz"),
    ("eval --data npz", ["eval", "G:pt", "--data", "npz:X"], "npz"),
    (
        "import",
        ["import", USER_NET, "X", "--classes", "10", "--img-size", "32", "--in-chans", "1", "-o", "O:i.pt"],
        "pt",
    ),
    ("pipeline --check", ["pipeline", "X", "--check"], "toml"),
    ("pipeline", ["pipeline", "X", "--run-dir", "O:run"], "toml"),
]

# a few classes do not apply to a slot: a text file is a valid npz spec error only by content, etc. (none so far)
SKIP: set[tuple[str, str]] = set()


def _tree(root: Path) -> dict[str, str]:
    """Every file under root with its sha256 (directories as entries too): what a refused command must leave alone."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _argv(template: list[str], bad: Path, good: dict[str, Path], outdir: Path) -> list[str]:
    argv = []
    for a in template:
        if a == "X":
            a = str(bad)
        elif a.startswith("npz:X"):
            a = f"npz:{bad}"
        elif a.startswith("G:"):
            a = str(good[a[2:]])
        elif a.startswith("O:"):
            a = str(outdir / a[2:])
        argv.append(a)
    return argv


def assert_refused(code: int, out: str, err: str, *fragments: str) -> str:
    """A non-zero exit with exactly one line on stderr that starts with `error: `, no traceback, nothing on stdout."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code not in (0, None), f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in out + err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    if os.environ.get("EDGECONV_BATTERY_LOG"):  # every refusal's line, to read them side by side
        with open(os.environ["EDGECONV_BATTERY_LOG"], "a") as log:
            log.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split('::')[-1]}\t{lines[0]}\n")
    return lines[0]


@pytest.mark.parametrize("cls", FILE_CLASSES)
@pytest.mark.parametrize("slot,template,kind", SLOTS, ids=[s[0] for s in SLOTS])
def test_bad_input_files(slot, template, kind, cls, good, tmp_path, monkeypatch, capsys):
    if (slot, cls) in SKIP:
        pytest.skip("does not apply")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(good["pt"].parent))
    work = tmp_path / "in"
    work.mkdir()
    outdir = tmp_path / "out"
    outdir.mkdir()
    bad = _bad_file(work, cls, kind, good)
    before_in, before_good = _tree(tmp_path), _tree(good["pt"].parent)
    code, out, err = run_cli(monkeypatch, capsys, *_argv(template, bad, good, outdir))
    line = assert_refused(code, out, err)
    assert _tree(tmp_path) == before_in, "a refused command wrote or changed a file"
    assert _tree(good["pt"].parent) == before_good
    if cls in ("markup",):
        assert "[bold red]" in line or ":smile:" in line, line  # the user's path, printed as typed, not as markup


# ----------------------------------------------------------------------------------------------- outputs
# slot, argv with Y for the output under test (SAME: the argument Y would destroy), Y's suffix
OUT_SLOTS = [
    # (train --resume X -o X continues a run in place, on purpose; --weights is an input it must not overwrite)
    (
        "train -o",
        ["train", "--model", USER_NET, "--img-size", "32", "--weights", "G:pt", "-o", "Y"],
        ".pt",
        "G:pt",
    ),
    ("import -o", ["import", USER_NET, "G:pt", "--classes", "10", "--img-size", "32", "-o", "Y"], ".pt", "G:pt"),
    ("eval --json", ["eval", "G:pt", "--json", "Y"], ".json", "G:pt"),
    ("prune -o", ["prune", "G:pt", "--heads", "0.25", "-o", "Y"], ".pt", "G:pt"),
    ("prune --json", ["prune", "G:pt", "--heads", "0.25", "-o", "O:p.pt", "--json", "Y"], ".json", "G:pt"),
    ("prune --heatmap", ["prune", "G:pt", "--heads", "0.25", "-o", "O:p.pt", "--heatmap", "Y"], ".png", "G:pt"),
    ("distill -o", ["distill", "--teacher", "G:pt", "--student", "G:pt", "-o", "Y"], ".pt", "G:pt"),
    (
        "distill --json",
        ["distill", "--teacher", "G:pt", "--student", "G:pt", "-o", "O:s.pt", "--json", "Y"],
        ".json",
        "G:pt",
    ),
    ("export -o", ["export", "G:pt", "-o", "Y"], ".onnx", "G:pt"),
    ("export --json", ["export", "G:pt", "-o", "O:x.onnx", "--json", "Y"], ".json", "G:pt"),
    ("quantize -o", ["quantize", "G:onnx", "--int8", "-o", "Y"], ".onnx", "G:onnx"),
    ("quantize --json", ["quantize", "G:onnx", "--int8", "-o", "O:q.onnx", "--json", "Y"], ".json", "G:onnx"),
    ("validate --junit", ["validate", "G:onnx", "--junit", "Y"], ".xml", "G:onnx"),
    ("validate --json", ["validate", "G:onnx", "--json", "Y"], ".json", "G:onnx"),
    ("bench --json", ["bench", "G:onnx", "--json", "Y"], ".json", "G:onnx"),
    ("bench --csv", ["bench", "G:onnx", "--csv", "Y"], ".csv", "G:onnx"),
    ("bench --md", ["bench", "G:onnx", "--md", "Y"], ".md", "G:onnx"),
    ("bench --plot", ["bench", "G:onnx", "--plot", "Y"], ".png", "G:onnx"),
    ("bench --profile-plot", ["bench", "G:onnx", "--profile-plot", "Y"], ".png", "G:onnx"),
    ("info --json", ["info", "G:pt", "--json", "Y"], ".json", "G:pt"),
]
# folders a command writes into
DIR_SLOTS = [
    ("inspect -o", ["inspect", "G:pt", "digits:0", "-o", "Y"], "G:pt"),
    ("pipeline --run-dir", ["pipeline", "G:toml", "--run-dir", "Y"], "G:toml"),
    ("demo --run-dir", ["demo", "--run-dir", "Y"], None),
]
OUT_CLASSES = ["same-as-input", "directory", "under-a-file", "too-long"]
DIR_CLASSES = ["a-file", "under-a-file", "too-long"]


def _bad_output(d: Path, cls: str, suffix: str, same: Path | None) -> Path:
    if cls == "same-as-input":
        return same
    if cls == "directory":
        (d / f"o{suffix}").mkdir()
        return d / f"o{suffix}"
    if cls in ("under-a-file", "a-file"):
        (d / "file").write_text("a file, not a folder")
        return d / "file" / f"o{suffix}" if cls == "under-a-file" else d / "file"
    if cls == "too-long":
        return d / ("n" * 300 + suffix)
    raise AssertionError(cls)


def _resolve(template, good, outdir, y):
    return [str(y) if a == "Y" else a for a in _argv(template, Path("unused"), good, outdir)]


@pytest.mark.parametrize("cls", OUT_CLASSES)
@pytest.mark.parametrize("slot,template,suffix,same", OUT_SLOTS, ids=[s[0] for s in OUT_SLOTS])
def test_bad_outputs(slot, template, suffix, same, cls, good, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(good["pt"].parent))
    (outdir := tmp_path / "out").mkdir()
    y = _bad_output(tmp_path, cls, suffix, good[same[2:]])
    before, before_good = _tree(tmp_path), _tree(good["pt"].parent)
    code, out, err = run_cli(monkeypatch, capsys, *_resolve(template, good, outdir, y))
    assert_refused(code, out, err, slot.split()[1])  # the line names the argument
    assert _tree(tmp_path) == before and _tree(good["pt"].parent) == before_good


@pytest.mark.parametrize("cls", DIR_CLASSES)
@pytest.mark.parametrize("slot,template,same", DIR_SLOTS, ids=[s[0] for s in DIR_SLOTS])
def test_bad_output_folders(slot, template, same, cls, good, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (outdir := tmp_path / "out").mkdir()
    y = _bad_output(tmp_path, cls, "", None)
    before, before_good = _tree(tmp_path), _tree(good["pt"].parent)
    code, out, err = run_cli(monkeypatch, capsys, *_resolve(template, good, outdir, y))
    assert_refused(code, out, err, slot.split()[1])
    assert _tree(tmp_path) == before and _tree(good["pt"].parent) == before_good


# ----------------------------------------------------------------------------------------------- numbers
# command prefix, option, bad values; every one refused before any work with the option named
NUMBERS = [
    (["train", "-o", "O:t.pt"], "--epochs", ["0", "-3", "1e3", "100001"]),
    (["train", "-o", "O:t.pt"], "--lr", ["-1", "0", "nan", "inf", "11"]),
    (["train", "-o", "O:t.pt"], "--batch-size", ["0", "-1", "1000000"]),
    (["train", "-o", "O:t.pt"], "--label-smoothing", ["-0.1", "1", "5", "nan"]),
    (["train", "-o", "O:t.pt"], "--weight-decay", ["-1", "nan"]),
    (["train", "-o", "O:t.pt"], "--img-size", ["-8", "0", "4", "100000"]),
    (["train", "-o", "O:t.pt"], "--in-chans", ["0", "-1", "1000"]),
    (["models"], "--img-size", ["0", "-8", "100000"]),
    (["models"], "--in-chans", ["0", "99"]),
    (["prune", "G:pt", "-o", "O:p.pt"], "--heads", ["-0.1", "1", "1.5", "nan"]),
    (["prune", "G:pt", "-o", "O:p.pt"], "--channels", ["-0.1", "1", "inf"]),
    (["prune", "G:pt", "-o", "O:p.pt"], "--target-macs", ["0", "-1", "1.5", "nan"]),
    (["prune", "G:pt", "--heads", "0.25", "-o", "O:p.pt"], "--batches", ["0", "-1"]),
    (["prune", "G:pt", "--heads", "0.25", "-o", "O:p.pt"], "--steps", ["0", "-2"]),
    (["distill", "--teacher", "G:pt", "--student", "G:pt", "-o", "O:s.pt"], "--alpha", ["-0.5", "1.5", "nan"]),
    (["distill", "--teacher", "G:pt", "--student", "G:pt", "-o", "O:s.pt"], "--temperature", ["0", "-1", "nan"]),
    (["distill", "--teacher", "G:pt", "--student", "G:pt", "-o", "O:s.pt"], "--epochs", ["0", "-1"]),
    (["distill", "--teacher", "G:pt", "--student", "G:pt", "-o", "O:s.pt"], "--lr", ["0", "nan", "-1"]),
    (["export", "G:pt", "-o", "O:x.onnx"], "--opset", ["0", "-1", "999", "7"]),
    (["quantize", "G:onnx", "--int8", "-o", "O:q.onnx"], "--calib-limit", ["0", "-5"]),
    (["quantize", "G:onnx", "--int8", "-o", "O:q.onnx"], "--calib-seed", ["-1", "4294967296", "x", "3"]),
    (["quantize", "G:onnx", "--int8", "-o", "O:q.onnx"], "--max-drop", ["-1", "nan"]),
    (["validate", "G:onnx"], "--tolerance", ["-1", "nan", "inf"]),
    (["validate", "G:onnx"], "--min-agreement", ["-1", "150", "nan"]),
    (["validate", "G:onnx"], "--batch", ["0", "1", "-4"]),
    (["validate", "G:onnx"], "--limit", ["0", "-1"]),
    (["bench", "G:onnx"], "--batch", ["0", "-1", "x", "1,,0"]),
    (["bench", "G:onnx"], "--iters", ["0", "-1"]),
    (["bench", "G:onnx"], "--warmup", ["-1"]),
    (["bench", "G:onnx"], "--threads", ["0", "-2"]),
    (["bench", "G:onnx"], "--limit", ["0"]),
    (["bench", "G:onnx", "--host", "u@h"], "--remote-timeout", ["-5", "0", "nan"]),
    (["bench", "G:onnx", "--host", "u@h"], "--ssh-port", ["0", "70000"]),
    (["import", USER_NET, "G:pt", "--classes", "10", "-o", "O:i.pt"], "--crop-pct", ["0", "2", "nan"]),
    (["import", USER_NET, "G:pt", "--classes", "10", "-o", "O:i.pt"], "--img-size", ["0", "100000"]),
    ([], "--holdout", ["0", "1", "-0.2", "nan"]),
    ([], "--workers", ["-1"]),
]
NUMBER_CASES = [(pre, opt, v) for pre, opt, values in NUMBERS for v in values]


@pytest.mark.parametrize(
    "prefix,option,value", NUMBER_CASES, ids=[f"{(p or ['root'])[0]} {o} {v}" for p, o, v in NUMBER_CASES]
)
def test_bad_numbers(prefix, option, value, good, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(good["pt"].parent))
    (outdir := tmp_path / "out").mkdir()
    argv = _argv(prefix, Path("unused"), good, outdir)
    argv = [option, value, "info", str(good["pt"])] if not prefix else [*argv, option, value]
    before, before_good = _tree(tmp_path), _tree(good["pt"].parent)
    code, out, err = run_cli(monkeypatch, capsys, *argv)
    assert_refused(code, out, err, option)
    assert _tree(tmp_path) == before and _tree(good["pt"].parent) == before_good


# ----------------------------------------------------------------------------------------------- crafted ONNX files
def _crafted_onnx(good: dict[str, Path], d: Path, cls: str) -> Path:
    """A well-formed ONNX file with a hostile or useless content: external data that points outside its folder,
    or a graph with no outputs."""
    import onnx

    m = onnx.load(str(good["onnx"]))
    if cls == "external-traversal":
        t = m.graph.initializer[0]
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", "../../../../etc/passwd"
    elif cls == "no-outputs":
        m.graph.ClearField("output")
    p = d / f"{cls}.onnx"
    onnx.save(m, str(p))
    return p


ONNX_SLOTS = [s for s in SLOTS if s[2] == "onnx"]


@pytest.mark.parametrize("cls", ["external-traversal", "no-outputs"])
@pytest.mark.parametrize("slot,template,kind", ONNX_SLOTS, ids=[s[0] for s in ONNX_SLOTS])
def test_crafted_onnx_files(slot, template, kind, cls, good, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (work := tmp_path / "in").mkdir()
    (outdir := tmp_path / "out").mkdir()
    bad = _crafted_onnx(good, work, cls)
    before, before_good = _tree(tmp_path), _tree(good["pt"].parent)
    code, out, err = run_cli(monkeypatch, capsys, *_argv(template, bad, good, outdir))
    assert_refused(code, out, err, "outside" if cls == "external-traversal" else "no outputs")
    assert _tree(tmp_path) == before and _tree(good["pt"].parent) == before_good


def test_external_data_inside_the_folder_is_read(good, tmp_path, monkeypatch, capsys):
    """The check above refuses only what points outside: weights saved beside the model still load and run."""
    import onnx

    m = onnx.load(str(good["onnx"]))
    p = tmp_path / "ext.onnx"
    onnx.save(m, str(p), save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").is_file()
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "bench", p, "--iters", "1", "--warmup", "0", "--limit", "16")
    assert code == 0, err


# ----------------------------------------------------------------------------------------------- refused up front
# a bad argument that can be checked without the model is refused before torch is even imported: the property
# behind "refusals are instant" (a timing would depend on the machine; the import does not)
UP_FRONT = [
    ["train", "--lr", "-1", "-o", "O:t.pt"],
    ["train", "--data", "npz:nope.npz", "-o", "O:t.pt"],
    ["train", "--epochs", "x", "-o", "O:t.pt"],
    ["import", USER_NET, "nope.pt", "--classes", "10", "-o", "O:i.pt"],
    ["eval", "nope.pt"],
    ["eval", "G:pt", "--json", "G:pt"],
    ["prune", "G:pt", "--heads", "2", "-o", "O:p.pt"],
    ["prune", "G:pt", "-o", "G:pt"],
    ["distill", "--teacher", "G:pt", "--student", "G:pt", "--alpha", "nan", "-o", "O:s.pt"],
    ["export", "G:pt", "-o", "O:x.onnx", "--opset", "5"],
    ["export", "G:pt", "-o", "G:pt"],
    ["quantize", "G:onnx", "--int8", "-o", "G:onnx"],
    ["quantize", "G:onnx", "--int8", "--calib", "nope", "-o", "O:q.onnx"],
    ["validate", "G:onnx", "--tolerance", "-1"],
    ["bench", "G:onnx", "--batch", "0"],
    ["bench", "G:onnx", "--host", "", "--iters", "1"],
    ["bench", "G:onnx", "--json", "G:onnx"],
    ["inspect", "nope.pt", "digits:0"],
    ["pipeline", "nope.toml"],
    ["demo", "--run-dir", "G:pt"],
    ["info", "nope.pt"],
    ["models", "--img-size", "0"],
    ["--holdout", "2", "info", "G:pt"],
]
PROBE = (
    "import sys\n"
    "from edgeconv.cli import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as e:\n"
    "    print('exit', e.code, 'torch' in sys.modules)\n"
)


@pytest.mark.parametrize("template", UP_FRONT, ids=[" ".join(t[:4]) for t in UP_FRONT])
def test_up_front_refusals_import_no_torch(template, good, tmp_path):
    import subprocess
    import sys

    argv = _argv(template, Path("unused"), good, tmp_path)
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.strip() == "exit 2 False", (proc.stdout, proc.stderr[-800:])
    assert_refused(2, "", proc.stderr)
