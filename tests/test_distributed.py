"""Distillation under torchrun on CPU (gloo, 2 processes): the global batch is kept, rank 0 alone writes, a killed
worker leaves the last checkpoint loadable, and --resume finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeconv import artifacts
from edgeconv.common.errors import EdgeconvError
from edgeconv.data.sources import digits_preprocessing
from edgeconv.models import load_model
from edgeconv.train.distributed import Context

pytestmark = pytest.mark.slow


def test_the_global_batch_must_split_evenly():
    assert Context(0, 2).per_rank_batch(64) == 32
    with pytest.raises(EdgeconvError, match="not divisible by the 3 processes"):
        Context(0, 3).per_rank_batch(64)


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "edgeconv",
        *args,
    ]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.fixture
def student(tmp_path):
    from edgeconv.models import create_model

    path = tmp_path / "student.pt"
    torch.manual_seed(0)
    artifacts.save_checkpoint(
        path,
        create_model("routed-tiny"),
        preprocessing=digits_preprocessing(32),
        classes=[str(i) for i in range(10)],
        provenance_rec=artifacts.provenance("test", None, None),
    )
    return path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_two_process_distillation_survives_a_killed_worker_and_resumes(trained, student, tmp_path):
    out, js = tmp_path / "kd.pt", tmp_path / "kd.json"
    args = ["distill", "--teacher", str(trained()), "--student", str(student), "--epochs", "4", "--batch-size", "64",
            "--no-baseline", "-o", str(out), "--json", str(js)]  # fmt: skip
    proc = subprocess.Popen(_torchrun(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = Path(str(out) + ".state.pt")
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint within 240 s"
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, log
    model, ck = load_model(out)  # the last finished epoch, whole
    done = ck["extra"]["distill"]["epoch"]
    assert 1 <= done < 4
    st = torch.load(state, map_location="cpu", weights_only=True)
    assert st["epoch"] == done

    r = subprocess.run(_torchrun(*args, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("distillation (alpha") == 1  # only rank 0 prints
    assert "Traceback" not in r.stdout + r.stderr
    _, ck = load_model(out)
    assert ck["extra"]["distill"]["epoch"] == 4 and ck["metrics"]["processes"] == 2
    assert not state.exists()
    res = json.loads(js.read_text())
    assert res["metrics"]["epochs"] == 4 and 0 <= res["metrics"]["test_top1"] <= 100


DIVERGE = """
import torch
from edgeconv.train import distributed
from edgeconv.data.sources import digits_preprocessing, load_samples
from edgeconv.common.errors import EdgeconvError
from edgeconv.models import create_model
from edgeconv.train.loop import TrainConfig, fit, supervised_loss

ctx = distributed.context()
cfg = TrainConfig(epochs=1, batch_size=32)
base, steps = supervised_loss(cfg), [0]

def loss_fn(net, x, y):  # rank 1 alone diverges at its third step
    steps[0] += 1
    loss = base(net, x, y)
    return loss * float("nan") if ctx.rank == 1 and steps[0] == 3 else loss

model = create_model("routed-tiny")
try:
    fit(model, load_samples("digits", digits_preprocessing(32), "train"), cfg, loss_fn=loss_fn, show_progress=False,
        ctx=ctx)
    print(f"rank {ctx.rank}: finished", flush=True)
except EdgeconvError as e:
    print(f"rank {ctx.rank}: stopped at step {steps[0]}: {e}", flush=True)
distributed.shutdown()
"""


def test_a_loss_that_diverges_on_one_rank_stops_every_rank(tmp_path):
    """Without agreeing, rank 0 would step on into DDP's gradient all-reduce and wait there for gloo's timeout."""
    script = tmp_path / "diverge.py"
    script.write_text(DIVERGE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    import re

    found = sorted(re.findall(r"rank (\d): (stopped at step \d|finished)", r.stdout))  # two processes, one pipe
    assert found == [("0", "stopped at step 3"), ("1", "stopped at step 3")], r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("the loss is not finite on at least one of the 2 processes") == 2
