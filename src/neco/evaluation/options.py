"""Typed settings dataclasses that also declare their `neco eval` options.

A settings class is a dataclass whose fields are made with `option(default, help, ...)`
(`neco.utils.settings`, shared with the training config). The same declaration gives the `neco eval` options (`add_options`), builds the settings from parsed
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
import types
import typing
from pathlib import Path
from typing import Any

from neco.utils.settings import flag_of, flags_of, option, parse_fraction, validate

__all__ = ["option", "add_options", "add_command", "from_args", "validate", "flag_of", "parse_fraction"]

_MISSING = dataclasses.MISSING


def _base(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type of `annotation`, whether None is allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


def _shown(default: Any) -> str:
    if default is None or (isinstance(default, tuple | list) and not default):
        return "none"
    return " ".join(map(str, default)) if isinstance(default, tuple | list) else str(default)


def _argparse_kwargs(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    base, optional = _base(annotation)
    meta = field.metadata
    default = field.default if field.default_factory is _MISSING else field.default_factory()
    required = default is _MISSING
    text = meta.get("help", "")
    # the one place "(default: X)" joins a help; a help that words its default keeps its words
    if not required and "default" not in text.lower():
        text = f"{text} (default: {_shown(default)})".strip()
    kwargs: dict[str, Any] = {"help": text, **({"required": True} if required else {"default": default})}
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    elif meta.get("choices"):
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
        return {**kwargs, "type": args[0], "nargs": meta.get("nargs") or ("+" if variadic else len(args))}
    kind = base if base in (int, float, str, Path) else str
    if optional and base in (int, float):
        return {**kwargs, "type": lambda text: None if text.lower() in ("none", "null") else kind(text)}
    return {**kwargs, "type": kind}


def add_options(group: Any, cls: type) -> None:
    """Add one option per CLI field of the settings dataclass `cls` to an argparse parser or group.

    A field whose `flag` has no leading dash is a positional argument (`nargs` from its list type).
    """
    hints, sections = typing.get_type_hints(cls), {}
    for field in dataclasses.fields(cls):
        if not field.metadata.get("cli", True):
            continue
        kwargs, spellings = _argparse_kwargs(field, hints[field.name]), flags_of(field)
        section = field.metadata.get("group")
        if section is not None and section not in sections:
            sections[section] = group.add_argument_group(section)
        container = group if section is None else sections[section]
        if spellings[0].startswith("-"):
            container.add_argument(*spellings, dest=field.name, **kwargs)
        else:  # argparse takes a positional's name as its dest; the flag names it in --help
            kwargs.pop("required", None)
            kwargs["metavar"] = field.metadata.get("metavar") or spellings[0]
            group.add_argument(field.name, **kwargs)


def add_command(subparsers: Any, name: str, cls: type, handler: Any, **parser_kwargs: Any) -> Any:
    """Add the subcommand `name` whose options are the fields of `cls`; it calls `handler(settings)`."""
    parser = subparsers.add_parser(name, **parser_kwargs)
    add_options(parser, cls)
    parser.set_defaults(func=lambda args: handler(from_args(cls, args)))
    return parser


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The validated settings `cls` of parsed arguments (fields absent from `args` keep their defaults)."""
    hints = typing.get_type_hints(cls)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for name, value in values.items():
        if typing.get_origin(_base(hints[name])[0]) is tuple and isinstance(value, list):
            values[name] = tuple(value)  # argparse's nargs gives lists
    settings = cls(**values)
    validate(settings)
    return settings
