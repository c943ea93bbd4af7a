"""Bad input ends in one line and a non-zero exit, before any work, and leaves every input byte-identical: outputs
that are inputs, swapped provenance, pipeline folders that escape, unbounded numbers and configs, interrupts."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeconv.common.errors import EdgeconvError


def _digest(paths) -> dict:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if Path(p).is_file()}


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from edgeconv import cli

    monkeypatch.setattr(sys, "argv", ["edgeconv", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return int(e.value.code or 0), capsys.readouterr().err


def _one_line(code: int, err: str, *fragments: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def ckpt(trained, tmp_path) -> Path:
    p = tmp_path / "m.pt"
    p.write_bytes(Path(trained("routed-tiny")).read_bytes())
    return p


# ----------------------------------------------------------------------------------------------- output = input
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(ckpt, tmp_path, monkeypatch, capsys):
    onnx_in = tmp_path / "q.onnx"
    onnx_in.write_bytes(b"not read: the check comes first")
    before = _digest([ckpt, onnx_in])
    cases = [
        (["export", ckpt, "-o", tmp_path / "x.onnx", "--json", ckpt], "--json", "input CKPT"),
        (["eval", ckpt, "--json", ckpt], "--json", "input CKPT"),
        (["prune", ckpt, "--heads", "0.25", "-o", ckpt], "-o", "input CKPT"),
        (["distill", "--teacher", ckpt, "--student", ckpt, "-o", ckpt], "-o", "input --teacher"),
        (["quantize", onnx_in, "--int8", "-o", tmp_path / "y.onnx", "--json", onnx_in], "--json", "input MODEL"),
        (["quantize", onnx_in, "--int8", "-o", tmp_path / "z.onnx", "--json", tmp_path / "z.onnx"], "same file", ""),
        (["validate", onnx_in, "--json", onnx_in], "--json", "input MODEL"),
        (["bench", ckpt, "--csv", ckpt], "--csv", "input MODELS"),
        (["info", ckpt, "--json", ckpt], "--json", "input ARTIFACT"),
    ]
    for args, *frags in cases:
        t = time.perf_counter()
        code, err = _cli(monkeypatch, capsys, *args)
        _one_line(code, err, *[f for f in frags if f])
        assert time.perf_counter() - t < 1.0, args  # refused before any work
        assert _digest([ckpt, onnx_in]) == before, args


def test_outputs_into_a_file_or_an_unwritable_place_fail_first(ckpt, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, err = _cli(monkeypatch, capsys, "export", ckpt, "-o", blocker / "m.onnx")
    _one_line(code, err, "-o", "cannot write there", "not a folder")
    code, err = _cli(monkeypatch, capsys, "eval", ckpt, "--json", tmp_path)
    _one_line(code, err, "--json", "is a directory")
    code, err = _cli(monkeypatch, capsys, "eval", tmp_path)
    _one_line(code, err, "CKPT", "is a directory")


# ----------------------------------------------------------------------------------------------- provenance
@pytest.mark.slow  # over 10 s: `make test` runs it, `make test-fast` stays a quick loop
def test_tflite_from_onnx_refuses_a_checkpoint_changed_since_export(ckpt, tmp_path):
    pytest.importorskip("litert_torch")
    from edgeconv.export.onnx import export_onnx
    from edgeconv.quantize import QuantizeRequest, quantize

    onx = tmp_path / "m.onnx"
    export_onnx(ckpt, onx)
    sd = torch.load(ckpt, weights_only=True)
    sd["metrics"] = {"retrained": 1.0}  # the same path now holds another file
    torch.save(sd, ckpt)
    out = tmp_path / "m.tflite"
    with pytest.raises(EdgeconvError, match="has changed since the export"):
        quantize(QuantizeRequest(onx, out, "fp32", "tflite"))
    assert not out.exists()


def test_bench_trusts_a_recorded_source_path_only_with_its_hash(ckpt, tmp_path):
    from edgeconv.measure.bench import Artifact, find_reference

    other = tmp_path / "other.pt"
    other.write_bytes(ckpt.read_bytes() + b"")
    art = Artifact(tmp_path / "m.onnx", "ort", "m.onnx")
    art.source_paths = [str(ckpt)]
    art.source_sha256s = ["0" * 64]
    assert find_reference([art], None) is None
    from edgeconv.artifacts import file_sha256

    art.source_sha256s = [file_sha256(ckpt)]
    assert find_reference([art], None) == ckpt


# ----------------------------------------------------------------------------------------------- pipeline folders
@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ""])
def test_pipeline_names_cannot_leave_runs(name, tmp_path):
    from edgeconv.pipeline import PipelineConfigError, load_pipeline

    p = tmp_path / "p.toml"
    p.write_text(f"[pipeline]\nname = {name!r}\n[train]\n")
    if name == "":
        assert load_pipeline(p).pipeline.name == "p"  # empty: the file's stem
        return
    with pytest.raises(PipelineConfigError, match="pipeline.name"):
        load_pipeline(p)


def test_a_step_record_pointing_outside_the_run_is_not_trusted(tmp_path):
    from edgeconv.pipeline.runner import _intact

    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"x")
    digest = hashlib.sha256(b"x").hexdigest()
    run = tmp_path / "runs" / "r"
    (run / "train").mkdir(parents=True)
    for path in (str(outside), "../../elsewhere.pt"):
        assert not _intact({"outputs": [{"path": path, "sha256": digest}]}, run, lambda p: digest)
    (run / "train" / "model.pt").write_bytes(b"x")
    assert _intact({"outputs": [{"path": "train/model.pt", "sha256": digest}]}, run, lambda p: digest)


# ----------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "args,frag",
    [
        (["train", "--lr", "-1"], "--lr must be in (0, 10]"),
        (["train", "--lr", "nan"], "--lr must be a finite number"),
        (["train", "--label-smoothing", "5"], "--label-smoothing must be in [0, 1)"),
        (["train", "--img-size", "0"], "--img-size must be in [8, 2048]"),
        (["train", "--img-size", "-8"], "--img-size"),
        (["train", "--img-size", "100000"], "--img-size"),
        (["train", "--in-chans", "0", "--data", "digits"], "--in-chans"),
        (["models", "--img-size", "0"], "--img-size must be in [8, 2048]"),
    ],
)
def test_numbers_out_of_range_are_refused_first(args, frag, tmp_path, monkeypatch, capsys):
    extra = ["-o", tmp_path / "o.pt"] if args[0] == "train" else []
    t = time.perf_counter()
    code, err = _cli(monkeypatch, capsys, *args, *extra)
    _one_line(code, err, frag)
    assert time.perf_counter() - t < 1.0
    assert not (tmp_path / "o.pt").exists()


def test_validate_bounds(tmp_path, monkeypatch, capsys):
    m = tmp_path / "m.onnx"
    m.write_bytes(b"x")
    for args, frag in (
        (["--tolerance", "-1"], "--tolerance must be in [0, inf]"),
        (["--min-agreement", "150"], "--min-agreement must be in [0, 100]"),
    ):
        code, err = _cli(monkeypatch, capsys, "validate", m, *args)
        _one_line(code, err, frag)


def test_a_checkpoint_asking_for_a_huge_model_is_refused_not_built(ckpt, tmp_path, monkeypatch, capsys):
    sd = torch.load(ckpt, weights_only=True)
    sd["config"]["depth"] = 10**6
    bad = tmp_path / "huge.pt"
    torch.save(sd, bad)
    for cmd in ("info", "eval"):
        t = time.perf_counter()
        code, err = _cli(monkeypatch, capsys, cmd, bad)
        _one_line(code, err, "config 'depth' = 1000000 is outside 1..64")
        assert time.perf_counter() - t < 5.0
    sd["config"]["depth"] = 2
    sd["preprocessing"]["size"] = 10**9
    torch.save(sd, bad)
    code, err = _cli(monkeypatch, capsys, "info", bad)
    _one_line(code, err, "preprocessing 'size'")


# ----------------------------------------------------------------------------------------------- interrupts
@pytest.mark.slow  # over 10 s: `make test` runs it, `make test-fast` stays a quick loop
def test_ctrl_c_says_what_was_kept_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "m.pt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from edgeconv.cli import main; main()",
            "train",
            "--model",
            "routed-tiny",
            "--epochs",
            "50",
            "-o",
            str(out),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    time.sleep(8)  # imports, data, and into the first epochs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-500:]
    assert "interrupted: no partial file was written" in err and "Traceback" not in err
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow  # over 10 s: `make test` runs it, `make test-fast` stays a quick loop
def test_ctrl_c_during_export_is_not_swallowed(ckpt, tmp_path):
    """torch.export/dynamo run user callbacks while tracing; an interrupt landing there still stops the export
    with exit 130 and no ONNX file (our SIGINT handler raises a BaseException that `except Exception` lets by)."""
    out = tmp_path / "m.onnx"
    # the interrupt is sent 0.5 s into torch.onnx.export itself (tracing takes seconds on any machine)
    code = (
        "import os, signal, threading, torch\n"
        "real = torch.onnx.export\n"
        "def export(*a, **k):\n"
        "    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "    return real(*a, **k)\n"
        "torch.onnx.export = export\n"
        "from edgeconv.cli import main\n"
        "main()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "export", str(ckpt), "-o", str(out)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        text=True,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-800:]
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_temp_files_of_killed_writers_are_cleaned(tmp_path):
    from edgeconv.artifacts import atomic_write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".r.json.{dead.pid}.abc.tmp"
    orphan.write_text("half")
    live = tmp_path / f".r.json.{os.getppid()}.def.tmp"  # a running process's temp file stays
    live.write_text("in progress")
    atomic_write_text(tmp_path / "r.json", "{}")
    assert not orphan.exists() and live.exists()


def test_nan_data_and_nan_weights_are_refused_in_one_line(ckpt, tmp_path, monkeypatch, capsys):
    """NaN pixels in an npz stop train/eval before any work; a checkpoint holding NaN weights (or a NaN mean/std)
    is refused by every command that reads it; a training run whose loss turns NaN stops and says so."""
    import numpy as np

    from edgeconv import artifacts
    from edgeconv.data.sources import Samples
    from edgeconv.models import load_model
    from edgeconv.train.loop import TrainConfig, fit

    x = np.random.default_rng(0).random((20, 1, 32, 32)).astype(np.float32)
    x[3, 0, 5, 5] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(20) % 10)
    for args in (["train", "--data", f"npz:{tmp_path / 'nan.npz'}", "--img-size", "32", "-o",
                  tmp_path / "t.pt"], ["eval", ckpt, "--data", f"npz:{tmp_path / 'nan.npz'}"]):  # fmt: skip
        _one_line(*_cli(monkeypatch, capsys, *args), "1 NaN or infinite value(s)")
    assert not (tmp_path / "t.pt").exists()

    c = artifacts.read_checkpoint(ckpt)
    name = next(k for k, v in c["state_dict"].items() if v.is_floating_point())
    c["state_dict"][name] = c["state_dict"][name].clone().fill_(float("nan"))
    torch.save(c, tmp_path / "nan.pt")
    before = (tmp_path / "nan.pt").read_bytes()
    for cmd in (["info"], ["eval"], ["export", "-o", tmp_path / "nan.onnx"]):
        _one_line(*_cli(monkeypatch, capsys, cmd[0], tmp_path / "nan.pt", *cmd[1:]), f"entry {name!r} holds NaN")
    assert (tmp_path / "nan.pt").read_bytes() == before and not (tmp_path / "nan.onnx").exists()

    model, _ = load_model(ckpt)
    bad = Samples(torch.full((16, 1, 32, 32), float("inf")), torch.zeros(16, dtype=torch.long), [str(i) for i in range(10)])
    with pytest.raises(EdgeconvError, match="training diverged in epoch 1"):
        fit(model, bad, TrainConfig(epochs=1, batch_size=8), show_progress=False)


def test_late_failures_come_first(ckpt, tmp_path, monkeypatch, capsys):
    """An opset no onnx release has is refused before the export's tracing; a folder given as the pipeline file
    and --holdout outside (0, 1) are one line each."""
    t = time.perf_counter()
    _one_line(*_cli(monkeypatch, capsys, "export", ckpt, "-o", tmp_path / "m.onnx", "--opset", "999"), "opset 999")
    assert time.perf_counter() - t < 5.0 and not (tmp_path / "m.onnx").exists()  # the export itself takes ~45 s
    _one_line(*_cli(monkeypatch, capsys, "pipeline", tmp_path), "is a directory")
    _one_line(*_cli(monkeypatch, capsys, "--holdout", "1.5", "models"), "--holdout must be a fraction")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_crafted_resume_states_are_one_line(ckpt, tmp_path, monkeypatch, capsys):
    """distill --resume with a state file that is random bytes, a pickle asking for code, or a dict with the right
    teacher hash and nonsense values; train --resume with a crafted train_state: one line each, nothing run."""
    import pickle

    from edgeconv import artifacts
    from edgeconv.compress.distill import state_path

    out = tmp_path / "s.pt"
    out.write_bytes(ckpt.read_bytes())
    crafted = {"teacher_sha256": artifacts.file_sha256(ckpt), "epoch": "many", "train_config": {}, "distill_config": {}}
    for content, frag in (
        (b"\x00\x01garbage" * 20, "corrupt or truncated distillation state"),
        (pickle.dumps({"x": _Evil()}, protocol=2), "refusing to load"),
        (None, "is malformed"),
    ):
        if content is None:
            torch.save(crafted, state_path(out))
        else:
            state_path(out).write_bytes(content)
        args = ("distill", "--teacher", ckpt, "--student", ckpt, "--resume", "-o", out)
        code, err = _cli(monkeypatch, capsys, *args)
        _one_line(code, err, frag)
        assert "pwned" not in capsys.readouterr().out

    c = artifacts.read_checkpoint(ckpt)
    c["extra"] = {"train_state": {"epoch": -3, "config": {"lr": 1e-3}, "optimizer": {}, "scheduler": {}}}
    torch.save(c, tmp_path / "r.pt")
    _one_line(*_cli(monkeypatch, capsys, "train", "--resume", tmp_path / "r.pt", "-o", tmp_path / "r2.pt"), "malformed")
    c["extra"] = {"train_state": {"epoch": 1, "config": {"lr": -1.0}, "optimizer": {}, "scheduler": {}}}
    torch.save(c, tmp_path / "r.pt")
    _one_line(*_cli(monkeypatch, capsys, "train", "--resume", tmp_path / "r.pt", "-o", tmp_path / "r2.pt"), "cannot be used")
    assert not (tmp_path / "r2.pt").exists()
