"""Pipeline files: TOML with a `[pipeline]` table and one table per step, run in the order they appear.

```toml
[pipeline]
name = "demo"
data = "digits"

[train]
model = "routed-tiny"
epochs = 20

[export]
```

Every option is typed (a dataclass per step, see steps.py) and the whole file is checked before any work: unknown
tables or keys, wrong types, values outside their choices, missing input files and step orders that cannot work
are all reported with the offending key named (`train.epochs`, `[quantize]`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeconv.common.errors import EdgeconvError
from edgeconv.common.options import option  # noqa: F401 - steps declare their options with it
from edgeconv.common.settings import DATA_HELP

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class PipelineConfigError(EdgeconvError):
    """The pipeline file is wrong; raised before any step runs."""


@dataclass
class PipelineOptions:
    name: str = option("", help="Run name (default: the file's stem); the run folder is runs/NAME.")
    data: str = option("digits", help=f"{DATA_HELP}, used by every step unless overridden.")
    seed: int = option(0, help="Seed for every step that samples.")
    threads: int = option(2, min=1, help="torch threads for training and evaluation.")


@dataclass
class StepSpec:
    name: str
    options: Any  # the step's Options dataclass instance


@dataclass
class PipelineConfig:
    pipeline: PipelineOptions
    steps: list[StepSpec]
    base_dir: Path  # relative paths in the file are relative to this folder
    source: str = "<pipeline>"

    def step(self, name: str) -> StepSpec | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> dict:
        return {
            "pipeline": dataclasses.asdict(self.pipeline),
            "steps": [{"step": s.name, "options": dataclasses.asdict(s.options)} for s in self.steps],
        }


# ------------------------------------------------------------------------------------------------ typed values
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(arg).removeprefix('a ').removeprefix('an ')}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`; returns the value (ints are accepted as floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in args:
            try:
                return _coerce(value, a, key, where)
            except PipelineConfigError:
                continue
        raise PipelineConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise PipelineConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
        return [_coerce(v, arg, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise PipelineConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
    return value


def unknown_key(key: str, known: list[str], where: str, what: str = "key") -> PipelineConfigError:
    close = difflib.get_close_matches(key.rpartition(".")[2], known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return PipelineConfigError(f"{where}: unknown {what} {key!r} ({hint}known: {', '.join(known) or 'none'})")


def build_options(cls: type, table: Any, section: str, where: str, base_dir: Path) -> Any:
    """Instantiate the dataclass `cls` from a TOML table, naming the key of any problem as `section.key`."""
    if not isinstance(table, dict):
        raise PipelineConfigError(f"{where}: {section} must be a table of options, got {table!r}")
    hints = typing.get_type_hints(cls)
    flds = {f.name: f for f in dataclasses.fields(cls)}
    for k in table:
        if k not in flds:
            raise unknown_key(f"{section}.{k}", list(flds), where)
    values = {}
    for name, f in flds.items():
        key = f"{section}.{name}"
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PipelineConfigError(f"{where}: {key} is required ({f.metadata.get('help', '')})")
            continue
        v = _coerce(table[name], hints[name], key, where)
        meta = f.metadata
        for item in v if isinstance(v, list) else [v]:
            if meta.get("choices") and item not in meta["choices"]:
                choices = ", ".join(map(str, meta["choices"]))
                raise PipelineConfigError(f"{where}: {key} = {item!r} is not one of {choices}")
            number = isinstance(item, (int, float)) and not isinstance(item, bool)
            if number and not math.isfinite(item):
                raise PipelineConfigError(f"{where}: {key} must be a finite number, got {item!r}")
            lo, hi = meta.get("min"), meta.get("max")
            if number and lo is not None and (item <= lo if meta.get("min_open") else item < lo):
                raise PipelineConfigError(
                    f"{where}: {key} = {item!r} is below the minimum {lo}" + (" (exclusive)" if meta.get("min_open") else "")
                )
            if number and hi is not None and (item >= hi if meta.get("max_open") else item > hi):
                raise PipelineConfigError(
                    f"{where}: {key} = {item!r} is above the maximum {hi}" + (" (exclusive)" if meta.get("max_open") else "")
                )
        if meta.get("path") and isinstance(v, str) and v:
            p = Path(v).expanduser()
            p = p if p.is_absolute() else base_dir / p
            if not p.exists():
                raise PipelineConfigError(f"{where}: {key}: no such file or folder: {p}")
            v = str(p)
        values[name] = v
    return cls(**values)


def resolve_data_spec(spec: str, key: str, where: str, base_dir: Path) -> str:
    """Check a data spec now (the source must exist) and make its path absolute."""
    from edgeconv.data.spec import BUNDLED, DataSpec

    try:
        parsed = DataSpec.parse(spec, name=key)
    except EdgeconvError:
        raise PipelineConfigError(
            f"{where}: {key} = {spec!r}: use {', '.join(BUNDLED)}, imagefolder:PATH or npz:PATH"
        ) from None
    if parsed.bundled:
        return parsed
    p = parsed.path.expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.exists():
        kind = parsed.kind
        raise PipelineConfigError(f"{where}: {key}: no such {'folder' if kind == 'imagefolder' else 'file'}: {p}")
    return DataSpec(parsed.kind, p, parsed.loader)
