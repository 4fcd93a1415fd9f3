"""The one table of autocast precisions shared by evaluation, feature extraction and training."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AUTOCAST_DTYPES", "autocast"]

# fp32 means no autocast at all (not autocast to float32), so CPU runs stay bit-exact.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for `precision` (fp32, bf16, fp16) on `device`; fp32 disables autocast."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"`precision` must be one of {sorted(AUTOCAST_DTYPES)} but is {precision!r}")
    dtype = AUTOCAST_DTYPES[precision]
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)
