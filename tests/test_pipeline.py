"""`edgeconv pipeline`: the file is checked before any work, steps are cached by content, failures keep earlier
artifacts, and the report says what happened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeconv.artifacts import file_sha256
from edgeconv.pipeline import PipelineConfigError, PipelineStepError, load_pipeline, run_pipeline
from edgeconv.pipeline.loader import parse_pipeline


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def own_copy(trained, tmp_path: Path) -> Path:
    """This test's own copy of the session checkpoint (a shared cache folder may be rewritten meanwhile)."""
    dst = tmp_path / "trained.pt"
    if not dst.exists():
        shutil.copyfile(trained(), dst)
    return dst


def run(cfg_path: Path, run_dir: Path):
    return run_pipeline(load_pipeline(cfg_path), run_dir, show_progress=False, log=lambda m: None)


# ------------------------------------------------------------------------------------------------ config checks
@pytest.mark.parametrize(
    "text, message",
    [
        ("[train]\nepoch = 3\n", r"unknown key 'train.epoch' \(did you mean 'epochs'"),
        ("[pipeline]\nnmae = 'x'\n[train]\n", r"unknown key 'pipeline.nmae'"),
        ("[train]\n[evaluate]\n", r"unknown step 'evaluate'"),
        ("[train]\nepochs = '3'\n", r"train.epochs must be an integer"),
        ("[train]\nepochs = 0\n", r"train.epochs = 0 is below the minimum 1"),
        ("[train]\naugment = 1\n", r"train.augment must be true or false"),
        ("[train]\nmodel = 'routed-huge'\n", r"train.model: unknown model 'routed-huge'"),
        ("[train]\n[eval]\nsplit = 'dev'\n", r"eval.split = 'dev' is not one of"),
        ("[pipeline]\ndata = 'mnist'\n[train]\n", r"pipeline.data = 'mnist'"),
        ("[pipeline]\nname = 'x'\n", r"no steps"),
        ("train = 3\n", r"train must be a table"),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path, text, message):
    with pytest.raises(PipelineConfigError, match=message):
        load_pipeline(write(tmp_path, text))


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(PipelineConfigError, match=r"train.checkpoint: no such file or folder: .*nope.pt"):
        load_pipeline(write(tmp_path, "[train]\ncheckpoint = 'nope.pt'\n"))
    with pytest.raises(PipelineConfigError, match=r"eval.data: no such folder: .*missing"):
        load_pipeline(write(tmp_path, "[train]\n[eval]\ndata = 'imagefolder:missing'\n"))
    with pytest.raises(PipelineConfigError, match="no such pipeline file"):
        load_pipeline(tmp_path / "absent.toml")


def test_impossible_order_is_named(tmp_path):
    with pytest.raises(PipelineConfigError, match=r"step 'eval' needs a PyTorch checkpoint.*put 'train' before"):
        load_pipeline(write(tmp_path, "[eval]\n[train]\n"))
    with pytest.raises(PipelineConfigError, match=r"step 'distill' needs a PyTorch checkpoint.*'train' before"):
        load_pipeline(write(tmp_path, "[distill]\n[train]\n"))
    with pytest.raises(PipelineConfigError, match=r"step 'prune' comes after 'export'.*move 'prune' before 'export'"):
        load_pipeline(write(tmp_path, "[train]\n[export]\n[prune]\nheads = 0.25\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[train]\n[prune]\n", r"nothing to prune: give prune.heads"),
        ("[train]\n[prune]\nheads = 1.5\n", r"prune.heads = 1.5 is above the maximum 1 \(exclusive\)"),
        ("[train]\n[prune]\nheads = 0.2\ncriterion = 'magic'\n", r"prune.criterion = 'magic' is not one of"),
        ("[train]\n[export]\nrouting = 'maybe'\n", r"export.routing = 'maybe' is not one of"),
        ("[train]\n[quantize]\ntargets = ['ort:int4']\n", r"quantize.targets\[0\] = 'ort:int4': ort supports"),
        ("[train]\n[quantize]\ntargets = ['coreml:int8']\n", r"unknown backend 'coreml'"),
        ("[train]\n[quantize]\ntargets = 'ort:int8'\n", r"quantize.targets must be a list of strings"),
        ("[train]\n[quantize]\ntargets = ['ort:int8', 'ort:int8']\n", r"quantize.targets lists a target twice"),
    ],
)
def test_step_options_are_checked_before_work(tmp_path, text, message):
    with pytest.raises(PipelineConfigError, match=message):
        load_pipeline(write(tmp_path, text))


def test_relative_paths_resolve_against_the_pipeline_file(tmp_path, trained):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "m.pt").write_bytes(trained().read_bytes())
    cfg = load_pipeline(write(sub, "[train]\ncheckpoint = 'm.pt'\n"))
    assert Path(cfg.step("train").options.checkpoint) == sub / "m.pt"
    assert cfg.pipeline.name == "p" and [s.name for s in cfg.steps] == ["train"]


def test_cli_rejects_a_bad_file_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    run_dir = tmp_path / "run"
    bad = write(tmp_path, "[train]\nepochs = 1\nlearning_rate = 0.1\n")
    res = CliRunner().invoke(app, ["pipeline", str(bad), "--run-dir", str(run_dir)])
    assert res.exit_code != 0 and "learning_rate" in str(res.exception)
    assert not run_dir.exists()  # nothing was created, let alone trained


# ------------------------------------------------------------------------------------------------ running
def test_second_run_reuses_every_step_and_one_option_reruns_only_what_follows(tmp_path, trained):
    ckpt = own_copy(trained, tmp_path)
    run_dir = tmp_path / "run"
    text = f"[pipeline]\nname = 'cache'\n[train]\ncheckpoint = '{ckpt}'\n[eval]\nsplit = 'val'\n"
    first = run(write(tmp_path, text), run_dir)
    assert first.statuses() == {"train": "ran", "eval": "ran"}
    model = run_dir / "train" / "model.pt"
    assert file_sha256(model) == file_sha256(ckpt)
    mtime = model.stat().st_mtime_ns

    second = run(write(tmp_path, text), run_dir)
    assert second.statuses() == {"train": "cached", "eval": "cached"}
    assert model.stat().st_mtime_ns == mtime
    assert second.report["models"] == first.report["models"]

    # an option of the last step: only that step runs again
    third = run(write(tmp_path, text.replace("'val'", "'test'")), run_dir)
    assert third.statuses() == {"train": "cached", "eval": "ran"}
    # an option of the first step that changes its output: it and every step after it run again
    other = tmp_path / "other.pt"
    other.write_bytes(ckpt.read_bytes())
    from edgeconv.artifacts import save_checkpoint
    from edgeconv.models import load_model

    m, ck = load_model(other)
    save_checkpoint(other, m, preprocessing=ck["preprocessing"], classes=ck["classes"], metrics={"tag": 1})
    text4 = text.replace("'val'", "'test'").replace(str(ckpt), str(other))
    fourth = run(write(tmp_path, text4), run_dir)
    assert fourth.statuses() == {"train": "ran", "eval": "ran"}

    # asked to: a cached step runs again; an unknown step name is refused before any work
    forced = run_pipeline(load_pipeline(write(tmp_path, text4)), run_dir, log=lambda m: None, rerun=["eval"])
    assert forced.statuses() == {"train": "cached", "eval": "ran"}
    with pytest.raises(PipelineConfigError, match="--rerun bench: not a step"):
        run_pipeline(load_pipeline(write(tmp_path, text)), run_dir, rerun=["bench"])

    # a damaged artifact is not trusted: the step that made it runs again
    model.write_bytes(b"garbage")
    fifth = run(write(tmp_path, text4), run_dir)
    assert fifth.statuses()["train"] == "ran" and file_sha256(model) == file_sha256(other)


def test_changing_a_middle_option_reruns_that_step_and_the_ones_after(tmp_path, trained):
    run_dir = tmp_path / "run"
    text = (
        f"[train]\ncheckpoint = '{own_copy(trained, tmp_path)}'\n[prune]\nheads = 0.25\ncriterion = 'l1'\n"
        "[eval]\nsplit = 'val'\n"
    )
    first = run(write(tmp_path, text), run_dir)
    assert first.statuses() == {"train": "ran", "prune": "ran", "eval": "ran"}
    rec = json.loads((run_dir / "prune" / "step.json").read_text())
    assert rec["metrics"]["params_after"] < rec["metrics"]["params_before"]
    assert rec["figures"] == ["prune/head_sensitivity.png"] and (run_dir / rec["figures"][0]).is_file()
    assert run(write(tmp_path, text), run_dir).statuses() == {"train": "cached", "prune": "cached", "eval": "cached"}
    again = run(write(tmp_path, text.replace("0.25", "0.5")), run_dir)
    assert again.statuses() == {"train": "cached", "prune": "ran", "eval": "ran"}
    rec2 = json.loads((run_dir / "prune" / "step.json").read_text())
    assert rec2["metrics"]["params_after"] < rec["metrics"]["params_after"]
    assert "prune: head sensitivity" in again.report["figures"]
    rows = {r["model"]: r for r in again.report["models"]}
    assert (
        set(rows) == {"float (PyTorch)", "pruned (PyTorch)"}
        and rows["pruned (PyTorch)"]["params"] == rec2["metrics"]["params_after"]
    )


def test_failed_step_stops_the_run_and_keeps_earlier_artifacts(tmp_path, trained):
    from PIL import Image

    bad_dir = tmp_path / "imgs" / "3"
    bad_dir.mkdir(parents=True)
    (bad_dir / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # not a readable image
    run_dir = tmp_path / "run"
    ckpt = own_copy(trained, tmp_path)
    text = f"[train]\ncheckpoint = '{ckpt}'\n[eval]\ndata = 'imagefolder:{tmp_path / 'imgs'}'\n"
    with pytest.raises(
        PipelineStepError, match=r"step 'eval' failed: .*no readable images.*artifacts of train are kept"
    ) as ei:
        run(write(tmp_path, text), run_dir)
    assert [(o.step, o.status) for o in ei.value.outcomes] == [("train", "ran"), ("eval", "failed")]
    model = run_dir / "train" / "model.pt"
    assert file_sha256(model) == file_sha256(ckpt)
    assert json.loads((run_dir / "eval" / "step.json").read_text())["status"] == "failed"
    assert "Traceback" in (run_dir / "eval" / "error.log").read_text()
    assert (run_dir / "eval" / "step.log").is_file()  # the step's stderr, kept out of the console
    statuses = {s["step"]: s["status"] for s in json.loads((run_dir / "run.json").read_text())["steps"]}
    assert statuses == {"train": "ran", "eval": "failed"}

    # fixed: the finished step is re-used, the failed one runs
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(bad_dir / "a.png")
    res = run(write(tmp_path, text), run_dir)
    assert res.statuses() == {"train": "cached", "eval": "ran"}


def test_an_interrupted_step_leaves_run_json_and_report_about_this_run(tmp_path, trained, monkeypatch):
    from edgeconv.pipeline import steps

    run_dir = tmp_path / "run"
    ckpt = own_copy(trained, tmp_path)
    text = f"[train]\ncheckpoint = '{ckpt}'\n[eval]\n"
    first = run(write(tmp_path, text), run_dir)
    assert first.statuses() == {"train": "ran", "eval": "ran"}

    def ctrl_c(options, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps.STEPS["eval"], "run", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(write(tmp_path, text + "split = 'val'\n"), run_dir)
    statuses = {s["step"]: s["status"] for s in json.loads((run_dir / "run.json").read_text())["steps"]}
    assert statuses == {"train": "cached", "eval": "interrupted"}
    rep = json.loads((run_dir / "report.json").read_text())
    assert {s["step"]: s["status"] for s in rep["steps"]} == statuses
    assert not (run_dir / "eval" / "step.json").exists()  # runs again next time


def test_report_json_and_md(tmp_path, trained):
    from edgeconv.data.sources import load_samples
    from edgeconv.models import load_model
    from edgeconv.train.loop import evaluate

    run_dir = tmp_path / "run"
    ckpt = own_copy(trained, tmp_path)
    res = run(write(tmp_path, f"[pipeline]\nname = 'rep'\n[train]\ncheckpoint = '{ckpt}'\n[eval]\n"), run_dir)
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep == json.loads(json.dumps(res.report, default=str))
    assert rep["pipeline"] == "rep" and [s["step"] for s in rep["steps"]] == ["train", "eval"]
    model, ck = load_model(ckpt)
    expect = evaluate(model, load_samples("digits", ck["preprocessing"], "test"))
    (row,) = rep["models"]
    assert row["model"] == "float (PyTorch)" and row["top1 %"] == pytest.approx(expect["top1"])
    assert row["params"] == sum(p.numel() for p in model.parameters())
    mix = rep["routing"]["float (PyTorch)"]
    assert set(mix) == {"blocks.0", "blocks.1"}
    for block, counts in expect["routing"].items():
        assert counts["conv"] + counts["attn"] == expect["n"]
        assert mix[block] == pytest.approx(100 * counts["attn"] / expect["n"])
    assert rep["figures"]["routing mix"] == "routing_mix.png" and (run_dir / "routing_mix.png").is_file()
    md = (run_dir / "report.md").read_text()
    assert "| float (PyTorch) | PyTorch |" in md and "![routing mix](routing_mix.png)" in md


@pytest.mark.slow  # over 5 s: `make test` runs it, `make test-fast` stays a quick loop
def test_real_training_step_with_tiny_epochs(tmp_path):
    run_dir = tmp_path / "run"
    text = "[pipeline]\nthreads = 1\n[train]\nmodel = 'hvt-tiny'\nepochs = 1\n[eval]\nsplit = 'val'\n"
    res = run(write(tmp_path, text), run_dir)
    assert res.statuses() == {"train": "ran", "eval": "ran"}
    rec = json.loads((run_dir / "train" / "step.json").read_text())
    assert rec["metrics"]["model"] == "hvt-tiny" and 0 <= rec["rows"][0]["top1 %"] <= 100
    assert rec["outputs"][0]["sha256"] == file_sha256(run_dir / "train" / "model.pt")


def test_the_shipped_demo_pipeline_is_valid():
    from edgeconv.pipeline import demo_pipeline_path

    cfg = load_pipeline(demo_pipeline_path())
    assert cfg.pipeline.name == "demo" and cfg.steps[0].name == "train"
    assert cfg.step("train").options.model == "routed-tiny"


def test_parse_pipeline_accepts_a_dict(tmp_path):
    cfg = parse_pipeline({"train": {"epochs": 2}}, base_dir=tmp_path, source="inline")
    assert cfg.step("train").options.epochs == 2 and cfg.pipeline.name == "inline"


@pytest.mark.slow
def test_full_chain_to_int8_on_two_runtimes(tmp_path, trained):
    """train (given) -> prune -> distill -> export -> quantize (ORT + TFLite INT8) -> validate -> bench, twice."""
    import importlib.util

    targets = ["ort:int8"] + (["tflite:int8"] if importlib.util.find_spec("litert_torch") else [])
    text = (
        f"[pipeline]\nname = 'chain'\nthreads = 1\n[train]\ncheckpoint = '{own_copy(trained, tmp_path)}'\n"
        "[prune]\nheads = 0.25\ncriterion = 'l1'\n[distill]\nepochs = 1\n[export]\n"
        f"[quantize]\ntargets = {json.dumps(targets)}\ncalib_limit = 20\n"
        "[validate]\nallow_uncovered = true\nquantized_agreement = 80.0\n[bench]\niters = 5\nwarmup = 1\n"
    )
    run_dir = tmp_path / "run"
    res = run(write(tmp_path, text), run_dir)
    steps = ["train", "prune", "distill", "export", "quantize", "validate", "bench"]
    assert res.statuses() == {s: "ran" for s in steps}
    rows = {r["model"]: r for r in res.report["models"]}
    expected = [
        "float (PyTorch)",
        "pruned+distilled (PyTorch)",
        "float (onnxruntime FP32)",
        "pruned+distilled (onnxruntime FP32)",
        "INT8 (onnxruntime)",
    ]
    expected += ["INT8 (TFLite)"] if len(targets) == 2 else []
    for label in expected:
        assert rows[label]["status"] == "ok", rows[label]
        assert 50 < rows[label]["top1 %"] <= 100 and rows[label]["latency ms"] > 0
    assert rows["pruned+distilled (PyTorch)"]["params"] < rows["float (PyTorch)"]["params"]
    assert rows["float (PyTorch)"]["agree %"] == 100.0  # the bench reference is the float model
    assert (run_dir / "validate" / "validation.json").is_file()
    assert {"prune: head sensitivity", "accuracy vs latency", "routing mix"} <= set(res.report["figures"])
    assert set(res.report["routing"]["INT8 (onnxruntime)"]) == {"blocks.0", "blocks.1"}  # If nodes -> blocks
    again = run(write(tmp_path, text), run_dir)
    assert again.statuses() == {s: "cached" for s in steps}
    assert again.report["models"] == res.report["models"]
