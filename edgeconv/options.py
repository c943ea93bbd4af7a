"""Options declared once: a dataclass field with `option(...)` is both a CLI flag and a pipeline TOML key.

A step's shared settings live in one dataclass next to the code that uses them (e.g. `quantize.QuantizeSettings`).
The pipeline reads the same dataclass from its TOML table (pipeline/config.py: types, choices and ranges checked
with the key named), and `cli_options(cls)` appends its fields to a Typer command as options - same default, same
help, same choices (from the registries), same range - and hands the command one instance of `cls`. A field added
to the dataclass therefore shows up in both places with one default.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from dataclasses import field
from typing import Any, Callable


def option(default: Any = dataclasses.MISSING, *, help: str = "", choices: tuple | None = None,
           min: float | None = None, max: float | None = None, path: bool = False, default_factory=None,
           cli: str | None = None):
    """A typed option. `path=True` marks a file/folder that must exist (pipeline: relative to the pipeline file);
    `cli` overrides the flag (e.g. "--per-channel/--per-tensor", "--target"); the default flag is --field-name."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "path": path, "cli": cli}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def typer_parameters(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter per field of `cls`, its default a typer.Option built from the field's metadata."""
    import typer

    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        tp, nullable = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flags = [meta.get("cli") or "--" + f.name.replace("_", "-")]
        kwargs: dict[str, Any] = {"help": meta.get("help") or None, "show_default": default is not None}
        if meta.get("choices"):
            # listed in the help; the value itself is checked by the library, which names the option in one line
            choices = " | ".join(map(str, meta["choices"]))
            kwargs["help"] = f"{kwargs['help'] or ''} Choices: {choices}.".strip()
        elif tp in (int, float):
            if meta.get("min") is not None:
                kwargs["min"] = meta["min"]
            if meta.get("max") is not None:
                kwargs["max"] = meta["max"]
        annotation = typing.Optional[tp] if nullable else tp
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=typer.Option(default, *flags, **kwargs), annotation=annotation))
    return params


def cli_options(cls: type, name: str = "options") -> Callable:
    """Decorate a Typer command that takes `NAME: cls`: the fields of `cls` become its options."""

    def deco(fn: Callable) -> Callable:
        try:
            sig = inspect.signature(fn, eval_str=True)
        except NameError:  # a type local to the caller: Typer resolves the rest from __annotations__
            sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != name]
        fields = [f.name for f in dataclasses.fields(cls)]
        clash = set(fields) & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__name__}: options {sorted(clash)} are declared twice")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values = {k: kwargs.pop(k) for k in fields if k in kwargs}
            return fn(*args, **kwargs, **{name: cls(**values)})

        wrapper.__signature__ = sig.replace(parameters=own + typer_parameters(cls))  # type: ignore[attr-defined]
        wrapper.__annotations__ = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != name}
        return wrapper

    return deco


def cli_defaults(cls: type) -> dict[str, Any]:
    """The default of every field as the CLI would see it (for tests that compare the two)."""
    return {p.name: p.default.default for p in typer_parameters(cls)}
