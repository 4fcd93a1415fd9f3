"""Datasets: segmentation benchmarks (evaluation), image collections (training), synthetic scenes.

Names are loaded lazily so that `neco.data.synthetic` (numpy + Pillow only) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SegmentationDataset",
    "build_segmentation_dataset",
    "SEGMENTATION_DATASETS",
    "ImageSource",
    "build_image_source",
    "IMAGE_SOURCES",
    "generate_scene",
    "generate_scenes",
    "write_scenes",
    "SCENE_CLASSES",
    "build_spair",
    "write_spair_pairs",
]

_WHERE = {
    "SegmentationDataset": "neco.data.base",
    "build_segmentation_dataset": "neco.data.factory",
    "SEGMENTATION_DATASETS": "neco.data.factory",
    "ImageSource": "neco.data.images",
    "build_image_source": "neco.data.images",
    "IMAGE_SOURCES": "neco.data.images",
    "generate_scene": "neco.data.synthetic",
    "generate_scenes": "neco.data.synthetic",
    "write_scenes": "neco.data.synthetic",
    "SCENE_CLASSES": "neco.data.synthetic",
    "build_spair": "neco.data.spair",
    "write_spair_pairs": "neco.data.pairs",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'neco.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
