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


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    path: bool = False,
    default_factory=None,
    cli: str | None = None,
):
    """A typed option. `min`/`max` bound a number (`min_open`/`max_open`: the bound itself is refused); `path=True`
    marks a file/folder that must exist (pipeline: relative to the pipeline file); `cli` overrides the flag (e.g.
    "--per-channel/--per-tensor", "--target"); the default flag is --field-name."""
    meta = {
        "help": help,
        "choices": choices,
        "min": min,
        "max": max,
        "min_open": min_open,
        "max_open": max_open,
        "path": path,
        "cli": cli,
    }
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
        elif tp in (int, float) and (meta.get("min") is not None or meta.get("max") is not None):
            # checked by the command wrapper (one line naming the flag), not by click (a usage box)
            kwargs["help"] = f"{kwargs['help'] or ''} Range: {range_text(meta)}.".strip()
        annotation = typing.Optional[tp] if nullable else tp
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(default, *flags, **kwargs),
                annotation=annotation,
            )
        )
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
            check_ranges(cls, values)
            return fn(*args, **kwargs, **{name: cls(**values)})

        wrapper.__signature__ = sig.replace(parameters=own + typer_parameters(cls))  # type: ignore[attr-defined]
        wrapper.__annotations__ = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != name}
        return wrapper

    return deco


def flag(f: dataclasses.Field) -> str:
    """The CLI flag of a field (the first spelling of a --on/--off pair)."""
    return (f.metadata.get("cli") or "--" + f.name.replace("_", "-")).split("/")[0]


def range_text(meta) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    return (
        f"{'(' if meta.get('min_open') else '['}{'-inf' if lo is None else lo}, "
        f"{'inf' if hi is None else hi}{')' if meta.get('max_open') else ']'}"
    )


def check_ranges(cls: type, values: dict[str, Any]) -> None:
    """Every numeric value given for `cls` within its field's range, else one line naming the flag."""
    from edgeconv.common.checks import check_number

    for f in dataclasses.fields(cls):
        meta, v = f.metadata, values.get(f.name)
        if (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and (meta.get("min") is not None or meta.get("max") is not None)
        ):
            check_number(
                flag(f),
                v,
                min=meta.get("min"),
                max=meta.get("max"),
                min_open=meta.get("min_open", False),
                max_open=meta.get("max_open", False),
            )


def cli_defaults(cls: type) -> dict[str, Any]:
    """The default of every field as the CLI would see it (for tests that compare the two)."""
    return {p.name: p.default.default for p in typer_parameters(cls)}
