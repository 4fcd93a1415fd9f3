"""Protocols by name: discovery of `neco/evaluation/protocols/` and lookup with did-you-mean."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from functools import cache

from neco.evaluation.protocol import Protocol, registered_protocols

__all__ = ["get_protocol", "protocol_names"]


@cache
def _discover() -> None:
    """Import every module of `neco.evaluation.protocols` once (each registers its protocol)."""
    import neco.evaluation.protocols as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


def protocol_names() -> list[str]:
    """Names of every registered protocol, sorted."""
    _discover()
    return sorted(registered_protocols())


def get_protocol(name: str) -> Protocol:
    """An instance of the protocol called `name`; ValueError listing the known names otherwise."""
    _discover()
    known = registered_protocols()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"protocol must be one of {sorted(known)} but is {name!r}{hint}")
    return known[name]()
