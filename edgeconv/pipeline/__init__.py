"""`edgeconv pipeline FILE.toml`: train -> prune -> distill -> export -> quantize -> validate -> bench in one run
folder, each step re-used while its inputs and options are unchanged, ending with report.md / report.json.

`load_pipeline(path)` checks the whole file (keys, types, inputs, step order) before any work;
`run_pipeline(cfg, run_dir)` runs it; `demo_pipeline_path()` is the shipped demo.
"""

from __future__ import annotations

from pathlib import Path

from edgeconv.pipeline.config import PipelineConfig, PipelineConfigError  # noqa: F401
from edgeconv.pipeline.loader import load_pipeline, parse_pipeline  # noqa: F401
from edgeconv.pipeline.runner import PipelineStepError, RunResult, StepOutcome, run_pipeline  # noqa: F401
from edgeconv.pipeline.step import Artifact, Step, StepContext, StepResult  # noqa: F401
from edgeconv.pipeline.steps import STEPS, register_step  # noqa: F401


def demo_pipeline_path() -> Path:
    """The demo pipeline shipped inside the package (edgeconv/pipeline/demo.toml)."""
    return Path(__file__).resolve().parent / "demo.toml"
