"""The one result schema of every protocol: assembly, validation against `result.schema.json`, writing.

Version 1 fields: schema_version, protocol, settings (values only), dataset (name, root, splits),
backbone (name, weights, sha256, ...), metrics, headline (name, value), timings (seconds),
figures (file names beside the JSON), warnings, environment (versions, device, host, time) and
command (argv of the CLI, or null). docs/evaluation.md describes each field.
"""

from __future__ import annotations

import json
import platform
import time
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neco.utils.io import write_json

__all__ = ["SCHEMA_VERSION", "result_schema", "validate_result", "jsonable", "write_result", "environment"]

SCHEMA_VERSION = 1


@cache
def result_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every result file satisfies."""
    return json.loads(resources.files("neco.evaluation").joinpath("result.schema.json").read_text())


def validate_result(result: dict[str, Any]) -> None:
    """Raise ValueError naming the first field of `result` that breaks the schema."""
    import jsonschema

    errors = jsonschema.Draft202012Validator(result_schema()).iter_errors(result)
    error = min(errors, key=lambda e: list(e.absolute_path), default=None)  # the first field in order
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"result field {where}: {error.message}")


def jsonable(value: Any) -> Any:
    """Convert numpy / torch scalars and arrays, tuples and paths to plain JSON types; NaN -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor | np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def environment(device: torch.device | str) -> dict[str, Any]:
    """Versions, device, host and time of writing."""
    from neco import __version__

    return {
        "neco_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "host": platform.node(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    """Validate a result against the schema and write it as JSON atomically."""
    result = jsonable(result)
    validate_result(result)
    return write_json(result, path)
