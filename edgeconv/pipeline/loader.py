"""Reading a pipeline file: TOML in, a checked `PipelineConfig` out (every step's options typed by its `Options`).

Sits above `config` (the option types) and `steps` (the step table), so neither imports the other's reader.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgeconv.pipeline.config import (
    RUN_NAME,
    PipelineConfig,
    PipelineConfigError,
    PipelineOptions,
    StepSpec,
    build_options,
    resolve_data_spec,
    unknown_key,
)
from edgeconv.pipeline.step import check_order
from edgeconv.pipeline.steps import STEPS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


# ------------------------------------------------------------------------------------------------ loading
def parse_pipeline(doc: dict, *, base_dir: Path, source: str = "<pipeline>") -> PipelineConfig:
    """Check a parsed TOML document completely (keys, types, inputs, step order) and build the config."""
    if "pipeline" in doc:
        pipe = build_options(PipelineOptions, doc["pipeline"], "pipeline", source, base_dir)
    else:
        pipe = PipelineOptions()
    pipe.name = pipe.name or Path(source).stem or "pipeline"
    if not RUN_NAME.fullmatch(pipe.name):  # starts with a letter or digit: never "." or ".."
        raise PipelineConfigError(
            f"{source}: pipeline.name = {pipe.name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 100; it names the folder runs/NAME, so no '/' or '..')"
        )
    pipe.data = resolve_data_spec(pipe.data, "pipeline.data", source, base_dir)
    specs = []
    for section, table in doc.items():
        if section == "pipeline":
            continue
        if section not in STEPS:
            raise unknown_key(section, list(STEPS), source, what="step")
        step = STEPS[section]
        opts = build_options(step.Options, table, section, source, base_dir)
        for key in ("data", "eval_data"):
            if getattr(opts, key, None):
                setattr(opts, key, resolve_data_spec(getattr(opts, key), f"{section}.{key}", source, base_dir))
        specs.append(StepSpec(section, opts))
    if not specs:
        raise PipelineConfigError(f"{source}: no steps (add tables such as 'train' and 'export'; known: {', '.join(STEPS)})")
    cfg = PipelineConfig(pipe, specs, base_dir, source)
    for s in specs:
        STEPS[s.name].check(s.options, cfg)
    check_order(cfg)
    return cfg


def load_pipeline(path: str | Path) -> PipelineConfig:
    p = Path(path)
    if not p.exists():
        raise PipelineConfigError(f"no such pipeline file: {p}")
    if p.is_dir():
        raise PipelineConfigError(f"{p} is a directory; give the pipeline's .toml file")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PipelineConfigError(f"{p}: not valid TOML ({e})")
    except UnicodeDecodeError:
        raise PipelineConfigError(f"{p}: not a text file")
    except OSError as e:
        raise PipelineConfigError(f"{p}: cannot read ({e.strerror or e})")
    return parse_pipeline(doc, base_dir=p.resolve().parent, source=str(p))
