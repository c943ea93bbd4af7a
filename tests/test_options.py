"""Options declared once: each command's options and its pipeline table come from one dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from edgeconv.common.options import cli_defaults, cli_options, option
from edgeconv.quantize import QuantizeSettings


def _click_params(command_name: str) -> dict:
    import typer

    from edgeconv.cli import app

    cmd = typer.main.get_command(app).commands[command_name]
    return {p.name: p for p in cmd.params}


def test_every_pipeline_quantize_default_is_the_cli_default():
    from edgeconv.pipeline.steps import QuantizeOptions

    params = _click_params("quantize")
    pipeline = QuantizeOptions()
    for f in dataclasses.fields(QuantizeSettings):
        assert f.name in params, f"--{f.name} missing from the CLI"
        assert params[f.name].default == getattr(pipeline, f.name), f.name
        assert (params[f.name].help or "").startswith(f.metadata["help"][:30]), f.name
    assert cli_defaults(QuantizeSettings) == {
        f.name: getattr(pipeline, f.name) for f in dataclasses.fields(QuantizeSettings)
    }


# pipeline keys whose default means "the pipeline's own value" (not a CLI default that could drift)
INHERITED = {("eval", "data"), ("bench", "threads")}


@pytest.mark.parametrize("step", ["train", "eval", "prune", "distill", "export", "quantize", "validate", "bench"])
def test_every_pipeline_default_is_the_cli_default(step):
    """A pipeline key that is also an option of the command of the same name has the same default and help."""
    from edgeconv.pipeline.steps import STEPS

    params = _click_params(step)
    opts = STEPS[step].Options()
    shared = [f for f in dataclasses.fields(opts) if f.name in params and (step, f.name) not in INHERITED]
    assert shared or step == "eval", step
    for f in shared:
        assert params[f.name].default == getattr(opts, f.name), f"{step}.{f.name}"
        if f.metadata.get("help"):
            assert (params[f.name].help or "").startswith(f.metadata["help"][:30]), f"{step}.{f.name}"


def test_settings_choices_match_the_torch_side_registries():
    from edgeconv.common.settings import CRITERIA as NAMES
    from edgeconv.common.settings import EXPORT_ROUTINGS
    from edgeconv.compress.importance import CRITERIA
    from edgeconv.export.onnx import ROUTINGS

    assert tuple(CRITERIA) == NAMES and tuple(ROUTINGS) == EXPORT_ROUTINGS


def test_choices_come_from_the_registries():
    from edgeconv.quantize import METHODS, OP_POLICIES
    from edgeconv.quantize.targets import TARGETS

    meta = {f.name: f.metadata for f in dataclasses.fields(QuantizeSettings)}
    assert meta["method"]["choices"] == METHODS and meta["ops"]["choices"] == OP_POLICIES
    assert meta["int8_target"]["choices"] == tuple(TARGETS)
    assert "Choices: auto | weights | all" in _click_params("quantize")["ops"].help


def test_a_new_option_shows_up_in_cli_and_pipeline_with_one_default(tmp_path):
    """What adding a field to QuantizeSettings does, on a subclass: a flag with its default, and a TOML key."""
    import typer
    from typer.testing import CliRunner

    from edgeconv.pipeline.config import PipelineConfigError, build_options

    @dataclass
    class Extended(QuantizeSettings):
        knob: int = option(3, min=1, help="A new knob.")

    seen = {}
    app = typer.Typer()

    @app.command()
    @cli_options(Extended, name="settings")
    def cmd(name: str = typer.Argument(...), settings: Extended = None) -> None:
        seen.update(name=name, settings=settings)

    res = CliRunner().invoke(app, ["x", "--knob", "5", "--per-tensor", "--target", "arm64"])
    assert res.exit_code == 0, res.output
    assert seen["settings"].knob == 5 and seen["settings"].per_channel is False
    assert seen["settings"].int8_target == "arm64" and seen["settings"].method == "minmax"
    CliRunner().invoke(app, ["y"])
    assert seen["settings"].knob == 3
    assert build_options(Extended, {"knob": 7}, "quantize", "t.toml", tmp_path).knob == 7
    assert build_options(Extended, {}, "quantize", "t.toml", tmp_path).knob == 3
    with pytest.raises(PipelineConfigError, match="quantize.knob = 0 is below the minimum 1"):
        build_options(Extended, {"knob": 0}, "quantize", "t.toml", tmp_path)


def test_pipeline_int8_target_is_checked_with_its_key(tmp_path):
    from edgeconv.pipeline import PipelineConfigError, load_pipeline

    p = tmp_path / "p.toml"
    p.write_text("[train]\n[export]\n[quantize]\nint8_target = 'tensorrt'\n")
    with pytest.raises(PipelineConfigError, match="quantize.int8_target: --target tensorrt is written by --backend"):
        load_pipeline(p)
    p.write_text("[train]\n[export]\n[quantize]\nint8_target = 'avx2'\n")
    with pytest.raises(PipelineConfigError, match="quantize.int8_target = 'avx2' is not one of portable"):
        load_pipeline(p)


def test_pipeline_int8_target_without_an_ort_int8_target_is_refused(tmp_path):
    from edgeconv.pipeline import PipelineConfigError, load_pipeline

    p = tmp_path / "p.toml"
    p.write_text("[train]\n[export]\n[quantize]\ntargets = ['ort:fp16']\nint8_target = 'arm64'\n")
    with pytest.raises(PipelineConfigError, match="int8_target applies to the ort:int8 target"):
        load_pipeline(p)


def test_pipeline_prune_on_unsplit_data_needs_eval_data_before_any_step(tmp_path):
    import numpy as np

    from edgeconv.pipeline import PipelineConfigError, load_pipeline

    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 32, 32), np.float32), y=np.zeros(4, np.int64))
    p = tmp_path / "p.toml"
    p.write_text("[pipeline]\ndata = 'npz:d.npz'\n[train]\nimg_size = 32\n[prune]\nheads = 0.25\n")
    with pytest.raises(PipelineConfigError, match="no held-out split.*prune.eval_data.*prune.eval_on_train"):
        load_pipeline(p)
    p.write_text("[pipeline]\ndata = 'npz:d.npz'\n[train]\nimg_size = 32\n[prune]\nheads = 0.25\neval_data = 'npz:d.npz'\n")
    cfg = load_pipeline(p)
    assert cfg.step("prune").options.eval_data == f"npz:{tmp_path / 'd.npz'}"  # relative to the pipeline file
