"""Result files: backbone identity (checksum of the weights) and the JSON every protocol writes."""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neco.utils.io import write_json

__all__ = ["state_dict_checksum", "backbone_identity", "write_result", "jsonable"]


def state_dict_checksum(model: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted (name, dtype, shape, bytes) of every tensor in the state dict."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        # view as bytes so every dtype (bf16 included) hashes its exact bit pattern
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def backbone_identity(model: torch.nn.Module, name: str, weights: str | Path | None) -> dict[str, Any]:
    """Name, weights file, checksum and shape attributes of a backbone, for a result file."""
    return {
        "name": name,
        "weights": None if weights is None else str(weights),
        "sha256": state_dict_checksum(model),
        "patch_size": int(getattr(model, "patch_size", 0)) or None,
        "embed_dim": int(getattr(model, "embed_dim", 0)) or None,
        "num_register_tokens": int(getattr(model, "num_register_tokens", 0)),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }


def jsonable(value: Any) -> Any:
    """Convert numpy / torch scalars and arrays, tuples and paths to plain JSON types; NaN -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    """Write a protocol result as JSON (atomically), adding the neco version, host and time."""
    from neco import __version__

    payload = {
        "neco_version": __version__,
        "torch_version": torch.__version__,
        "host": platform.node(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **result,
    }
    return write_json(jsonable(payload), path)
