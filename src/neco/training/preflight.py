"""Checks run before the first training step, so a bad setting fails at once and names its option.

The sort is the memory peak of a step: each of the G*(V-1) crop pairs sorts B*Q rows of K references
and keeps soft permutations P of shape (B*Q, K, K) with Q = K = roi_size**2, i.e. memory that grows
as roi_size**6. The estimate counts SORT_COPIES such tensors (student P, teacher P, the student's
gradient and the sorting network's working state): a step at roi_size 9, batch 8, 10 pairs peaked at
4.9 times one P on the CPU kernel.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from neco.training.config import TrainConfig

__all__ = ["SORT_COPIES", "available_memory", "check_crop_sizes", "check_sort_memory", "sort_memory_bytes"]

SORT_COPIES = 5


def check_crop_sizes(config: TrainConfig, patch_size: int) -> None:
    """Every crop must hold at least one patch of the backbone (else the token grid is empty)."""
    crops = config.data.crops
    for option, size in (("global_size", crops.global_size), ("local_size", crops.local_size)):
        if option == "local_size" and crops.num_local == 0:
            continue
        if size < patch_size:
            raise ValueError(
                f"`data.crops.{option}` must be at least one patch ({patch_size} px for "
                f"`model.backbone`={config.model.backbone!r}) but is {size}"
            )


def sort_memory_bytes(config: TrainConfig) -> int:
    """Estimated peak bytes of one step's sort at `loss.roi_size` and `data.batch_size` (per process)."""
    crops = config.data.crops
    views = crops.num_global + crops.num_local
    pairs = crops.num_global * (views - 1)
    k = config.loss.roi_size**2
    rows = pairs * config.data.batch_size * k
    return SORT_COPIES * rows * k * k * 4  # fp32


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device`: CUDA's free memory, or the host's MemAvailable; None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_sort_memory(config: TrainConfig, device: Any, available: int | None = None) -> int:
    """Refuse a `loss.roi_size` / `data.batch_size` whose sort cannot fit; return the estimate."""
    needed = sort_memory_bytes(config)
    free = available if available is not None else available_memory(torch.device(device))
    if free is not None and needed > free:
        fits = config.loss.roi_size
        while fits > 2 and sort_memory_bytes(_with_roi(config, fits)) > free:
            fits -= 1
        raise MemoryError(
            f"`loss.roi_size`={config.loss.roi_size} with `data.batch_size`={config.data.batch_size} needs "
            f"about {needed / 2**30:.1f} GiB for the sort (grows as roi_size**6) but {free / 2**30:.1f} GiB "
            f"are available; use loss.roi_size<={fits} or a smaller batch"
        )
    return needed


def _with_roi(config: TrainConfig, roi_size: int) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, loss=dataclasses.replace(config.loss, roi_size=roi_size))
