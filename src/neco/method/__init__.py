"""The NeCo method, framework-free: sorting networks, multi-crop views, alignment, references, head, loss, EMA.

Public names are imported lazily, so `import neco.method.sorting` (which imports this package first) stays
light and free of import cycles.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CosineSchedule",
    "MultiCropSampler",
    "NeCoLoss",
    "NeCoOutput",
    "ProjectionHead",
    "ReferenceQueue",
    "apply_trainable_blocks",
    "attention_foreground",
    "build_param_groups",
    "collate_multicrop",
    "cosine_schedule",
    "effective_rank",
    "ema_update_",
    "make_teacher",
    "mean_pairwise_cosine",
    "pair_loss",
    "roi_align_grid",
]

_WHERE = {
    "CosineSchedule": "schedules",
    "cosine_schedule": "schedules",
    "MultiCropSampler": "crops",
    "collate_multicrop": "crops",
    "NeCoLoss": "loss",
    "NeCoOutput": "loss",
    "pair_loss": "loss",
    "ProjectionHead": "head",
    "ReferenceQueue": "references",
    "apply_trainable_blocks": "optim",
    "build_param_groups": "optim",
    "attention_foreground": "masks",
    "effective_rank": "diagnostics",
    "mean_pairwise_cosine": "diagnostics",
    "ema_update_": "ema",
    "make_teacher": "ema",
    "roi_align_grid": "align",
}

if TYPE_CHECKING:  # pragma: no cover
    from neco.method.align import roi_align_grid
    from neco.method.crops import MultiCropSampler, collate_multicrop
    from neco.method.diagnostics import effective_rank, mean_pairwise_cosine
    from neco.method.ema import ema_update_, make_teacher
    from neco.method.head import ProjectionHead
    from neco.method.loss import NeCoLoss, NeCoOutput, pair_loss
    from neco.method.masks import attention_foreground
    from neco.method.optim import apply_trainable_blocks, build_param_groups
    from neco.method.references import ReferenceQueue
    from neco.method.schedules import CosineSchedule, cosine_schedule


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"neco.method.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'neco.method' has no attribute {name!r}")
