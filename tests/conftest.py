"""Shared fixtures: small models trained once per test session on the real digits data.

Set EDGECONV_TEST_CACHE=DIR to keep the trained checkpoints between runs while developing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `edgeconv ARGS` in this process through the real entry point; returns (exit code, stdout, stderr)."""
    from edgeconv.cli import main

    monkeypatch.setattr(sys, "argv", ["edgeconv", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli(*ARGS) -> (exit code, stdout + stderr) of `edgeconv ARGS` through the real entry point."""

    def run(*args):
        code, out, err = run_cli(monkeypatch, capsys, *args)
        return code, out + err

    return run


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("EDGECONV_TEST_CACHE")
    if env:
        p = Path(env)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return tmp_path_factory.mktemp("trained")


@pytest.fixture(scope="session")
def trained(cache_dir):
    """trained(name="routed-tiny", epochs=12) -> Path of a checkpoint trained on digits (cached per session)."""
    from edgeconv.train.loop import TrainConfig, run_train

    def get(name: str = "routed-tiny", epochs: int = 12) -> Path:
        path = cache_dir / f"{name}-e{epochs}.pt"
        state = _finished_or_resumable(path)
        if state != "finished":
            # train writes the checkpoint after every epoch: a run interrupted earlier is continued, not trusted
            run_train(
                name,
                "digits",
                str(path),
                cfg=TrainConfig(epochs=epochs),
                show_progress=False,
                resume=str(path) if state == "resumable" else None,
                command=f"pytest fixture train {name}",
            )
        return path

    return get


def _finished_or_resumable(path: Path) -> str:
    from edgeconv.artifacts import read_checkpoint
    from edgeconv.common.errors import EdgeconvError

    if not path.exists():
        return "missing"
    try:
        ck = read_checkpoint(path)
    except EdgeconvError:
        return "missing"
    if "test_top1" in ck.get("metrics", {}):
        return "finished"
    return "resumable" if "train_state" in ck.get("extra", {}) else "missing"


@pytest.fixture(scope="session")
def digits_pre():
    from edgeconv.data.sources import digits_preprocessing

    return digits_preprocessing(32)


@pytest.fixture(scope="session")
def exported(trained, cache_dir):
    """exported(name) -> ONNX of the 12-epoch fixture checkpoint (default export: gated routing for routed models).

    One cached file per model, shared by every test module (a gated export is slow); re-exported when the cached
    file is not the default export of this checkpoint (another checkpoint version, routing or batch setting; the
    cache outlives a run when EDGECONV_TEST_CACHE is set)."""
    from edgeconv.artifacts import file_sha256
    from edgeconv.artifacts.card import read_metadata
    from edgeconv.export.onnx import export_onnx

    def is_default_export(onnx_path: Path, ckpt: Path) -> bool:
        meta = read_metadata(onnx_path)
        return (
            meta.get("source_sha256") == file_sha256(ckpt)
            and meta.get("routing") in ("gated", "none")
            and meta.get("dynamic_batch") == "true"
        )

    def get(name: str) -> Path:
        ckpt = trained(name)
        out = cache_dir / f"{name}-e12.onnx"
        if not out.exists() or not is_default_export(out, ckpt):
            export_onnx(ckpt, out)
        return out

    return get
