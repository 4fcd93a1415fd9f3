"""Settings declared once: dataclass fields carrying their help, bounds and choices.

`option(default, help, minimum=..., choices=...)` makes a dataclass field; `validate(settings)` checks
every field's bounds and choices and then the class's own `check()`, raising a ValueError that names
the option: its flag (`--memory-size`, the `neco eval` settings) or its dotted config key under a
prefix (`loss.steepness_student`, the training config). The `neco eval` options are built from these
fields by `neco.evaluation.options`; the training config is parsed by jsonargparse from the same
annotations (`neco.training.config`).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

__all__ = ["option", "validate", "flag_of", "flags_of", "parse_fraction"]

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    flag: str | tuple[str, ...] | None = None,
    metavar: str | None = None,
    nargs: str | None = None,
    group: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field carrying its CLI help, bounds and choices (tuple/list defaults are copied).

    `flag`: its spellings (`("-o", "--out")`), or a name without dashes for a positional argument;
    `group`: the `--help` section it is listed in.
    """
    metadata = {name: value for name, value in locals().items() if name != "default"}  # the keywords above
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)  # MISSING: a required field


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag of a settings field: `--memory-size` for `memory_size`, or its own `flag`."""
    spellings = flags_of(field)
    return next((s for s in spellings if s.startswith("--")), spellings[0])  # `--out` of `-o/--out`


def flags_of(field: dataclasses.Field) -> list[str]:
    """Every spelling of a field's flag, in the order given (a name without dashes: a positional)."""
    flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
    return [flag] if isinstance(flag, str) else list(flag)


def parse_fraction(text: str | float) -> float:
    """A fraction given as `1/128`, `0.5` or `1`; must lie in (0, 1]."""
    try:
        value = float(Fraction(str(text)))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"a fraction must look like 1/128, 0.125 or 1 but is {text!r}") from err
    if not 0.0 < value <= 1.0:
        raise ValueError(f"a fraction must be in (0, 1] but is {text!r}")
    return value


def validate(settings: Any, prefix: str | None = None) -> None:
    """Check every field's (or list item's) choices and bounds, then the class's `check()`; ValueError names the option.

    The option is named by its flag (`--memory-size`), or by its dotted config key under `prefix` (`loss.`);
    a field holding a dataclass (a config section) is checked in turn.
    """
    for field in dataclasses.fields(settings):
        meta, value = field.metadata, getattr(settings, field.name)
        name = flag_of(field) if prefix is None else prefix + field.name
        if dataclasses.is_dataclass(value):  # a section of the training config
            validate(value, name + ".")
            continue
        low, high, exclusive = meta.get("minimum"), meta.get("maximum"), meta.get("exclusive_minimum")
        for item in value if isinstance(value, tuple | list) else (value,):
            # a list option names the offending item: "`--ks` must be >= 0 but holds -5", not "(-5,)"
            shown = f"holds {item!r}" if isinstance(value, tuple | list) else f"is {value!r}"
            if meta.get("choices") and item is not None and item not in meta["choices"]:
                raise ValueError(f"`{name}` must be one of {list(meta['choices'])} but {shown}")
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue  # bounds apply to numbers (None, text and flags have none)
            if not math.isfinite(item):  # nan passes every bound check below
                raise ValueError(f"`{name}` must be a finite number but {shown}")
            if low is not None and high is not None and not exclusive and not low <= item <= high:
                raise ValueError(f"`{name}` must be in [{low}, {high}] but {shown}")
            if low is not None and (item <= low if exclusive else item < low):
                raise ValueError(f"`{name}` must be {'>' if exclusive else '>='} {low} but {shown}")
            if high is not None and item > high:
                raise ValueError(f"`{name}` must be <= {high} but {shown}")
    if hasattr(settings, "check"):
        settings.check()
