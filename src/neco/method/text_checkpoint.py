"""Reading `neco text-align` checkpoints: the mapping, its text encoder and the run's identity.

Below evaluation and training both: `neco eval openvocab` reads what `neco text-align` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neco.method.text_align import TextToPatchMapping
from neco.method.text_encoder import TextEncoder

__all__ = ["FORMAT", "read_text_align", "load_text_align"]

FORMAT = "neco-text-align"


def _non_finite(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, torch.Tensor):
        return [prefix] if value.is_floating_point() and not bool(torch.isfinite(value).all()) else []
    if isinstance(value, dict):
        return [name for k, v in value.items() for name in _non_finite(v, f"{prefix}{k}.")]
    if isinstance(value, list | tuple):
        return [name for i, v in enumerate(value) for name in _non_finite(v, f"{prefix}{i}.")]
    return []


def read_text_align(path: str | Path, option: str = "--mapping") -> dict[str, Any]:
    """Load a text-align checkpoint; check its format and that every tensor is finite (messages name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: file not found (a `neco text-align` checkpoint)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any load failure means an unusable file
        raise ValueError(f"{option} {path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{option} {path}: not a `neco text-align` checkpoint (no `format: {FORMAT}`)")
    bad = _non_finite(checkpoint.get("state_dict", {}))
    if bad:
        raise ValueError(f"{option} {path}: non-finite values in {bad[:3]}")
    return checkpoint


def load_text_align(
    path: str | Path, *, download: bool = True
) -> tuple[TextToPatchMapping, TextEncoder, dict[str, Any]]:
    """(mapping, text encoder, run identity) of a `neco text-align` checkpoint, in eval mode on the CPU."""
    checkpoint = read_text_align(path)
    meta = checkpoint["text_align"]
    mapping = TextToPatchMapping(meta["text_dim"], meta["patch_dim"], meta["hidden_dim"])
    prefix = "mapping."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    mapping.load_state_dict(state)
    encoder = TextEncoder.from_spec(meta["text"], state_dict=checkpoint.get("text_tower"), download=download)
    if encoder.checksum() != meta["text_sha256"]:
        raise ValueError(
            f"--mapping {path}: the text encoder built from {meta['text']} differs from the one the mapping "
            f"was trained with (sha256 {encoder.checksum()[:12]} vs {meta['text_sha256'][:12]})"
        )
    return mapping.eval(), encoder.eval(), meta
