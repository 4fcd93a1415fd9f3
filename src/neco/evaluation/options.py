"""Typed settings dataclasses that also declare their command-line options.

A settings class is a dataclass whose fields are made with `option(default, help, ...)`. The same
declaration gives the `neco eval` options (`add_options`), builds the settings from parsed
arguments (`from_args`) and validates them (`validate`, which `from_args` calls: bounds and
choices, with messages that name the option). Example:

    @dataclass
    class ProbeSettings:
        epochs: int = option(25, "training epochs", minimum=1)
        mode: str = option("fast", "probe mode", choices=("fast", "exact"))

    add_options(parser.add_argument_group("probe"), ProbeSettings)
    settings = from_args(ProbeSettings, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = ["option", "add_options", "from_args", "validate", "flag_of", "parse_fraction"]

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    flag: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field carrying its CLI help, bounds and choices (tuple/list defaults are copied)."""
    metadata = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "flag": flag,
        "cli": cli,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)  # MISSING: a required field


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag of a settings field: `--memory-size` for `memory_size`, or its own `flag`."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def parse_fraction(text: str | float) -> float:
    """A fraction given as `1/128`, `0.5` or `1`; must lie in (0, 1]."""
    try:
        value = float(Fraction(str(text)))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"a fraction must look like 1/128, 0.125 or 1 but is {text!r}") from err
    if not 0.0 < value <= 1.0:
        raise ValueError(f"a fraction must be in (0, 1] but is {text!r}")
    return value


def _base(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type of `annotation`, whether None is allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


def _shown(default: Any) -> str:
    if default is None:
        return "none"
    return " ".join(map(str, default)) if isinstance(default, tuple | list) else str(default)


def _argparse_kwargs(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    base, optional = _base(annotation)
    meta = field.metadata
    default = field.default if field.default is not _MISSING else field.default_factory()  # type: ignore[misc]
    kwargs: dict[str, Any] = {
        "dest": field.name,
        "default": default,
        "help": f"{meta.get('help', '')} (default: {_shown(default)})".strip(),
    }
    if meta.get("choices"):
        # shown in the usage, validated by `validate` so that the message names the option like the others
        kwargs["metavar"] = "{" + ",".join(map(str, meta["choices"])) + "}"
    if base is bool:
        return {**kwargs, "action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) in (tuple, list):
        args = typing.get_args(base)
        variadic = typing.get_origin(base) is list or (len(args) == 2 and args[1] is Ellipsis)
        if variadic:
            name = field.name.upper()
            kwargs.setdefault("metavar", name[:-3] + "Y" if name.endswith("IES") else name.removesuffix("S"))
        return {**kwargs, "type": args[0], "nargs": "+" if variadic else len(args)}
    kind = base if base in (int, float, str, Path) else str
    if optional and base in (int, float):
        return {**kwargs, "type": lambda text: None if text.lower() in ("none", "null") else kind(text)}
    return {**kwargs, "type": kind}


def add_options(group: Any, cls: type) -> None:
    """Add one option per CLI field of the settings dataclass `cls` to an argparse parser or group."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("cli", True):
            group.add_argument(flag_of(field), **_argparse_kwargs(field, hints[field.name]))


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The validated settings `cls` of parsed arguments (fields absent from `args` keep their defaults)."""
    hints = typing.get_type_hints(cls)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for name, value in values.items():
        if typing.get_origin(_base(hints[name])[0]) is tuple and isinstance(value, list):
            values[name] = tuple(value)  # argparse's nargs gives lists
    settings = cls(**{**values, **overrides})
    validate(settings)
    return settings


def validate(settings: Any) -> None:
    """Check every field's choices and bounds, then the class's own `check()`; ValueError names the option."""
    for field in dataclasses.fields(settings):
        meta, value, name = field.metadata, getattr(settings, field.name), flag_of(field)
        if meta.get("choices") and value not in meta["choices"]:
            raise ValueError(f"`{name}` must be one of {list(meta['choices'])} but is {value!r}")
        low, high, exclusive = meta.get("minimum"), meta.get("maximum"), meta.get("exclusive_minimum")
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue  # bounds apply to numbers (None, text and flags have none)
            # a list option names the offending item: "`--ks` must be >= 0 but holds -5", not "(-5,)"
            shown = f"holds {item}" if isinstance(value, tuple | list) else f"is {value}"
            if not math.isfinite(item):  # nan passes every bound check below
                raise ValueError(f"`{name}` must be a finite number but {shown}")
            if low is not None and (item <= low if exclusive else item < low):
                raise ValueError(f"`{name}` must be {'>' if exclusive else '>='} {low} but {shown}")
            if high is not None and item > high:
                raise ValueError(f"`{name}` must be <= {high} but {shown}")
    if hasattr(settings, "check"):
        settings.check()
