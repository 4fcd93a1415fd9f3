"""Cityscapes (fine annotations): the 34 label ids mapped to the 19 evaluation train ids, rest 255."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neco.data.base import JointTransform, SegmentationDataset
from neco.data.layout import LayoutSpec, check_layout, layout_error

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_SPLITS", "build_cityscapes", "cityscapes_label_map"]

# (label id, train id, name) of the 19 evaluated classes of the official cityscapesScripts table.
_EVALUATED: tuple[tuple[int, str], ...] = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"),
    (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"),
    (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"),
    (32, "motorcycle"), (33, "bicycle"),
)  # fmt: skip

CITYSCAPES_CLASSES: tuple[str, ...] = tuple(name for _, name in _EVALUATED)
CITYSCAPES_SPLITS: dict[str, str] = {"train": "2,975 images", "val": "500 images"}

_TREE = """
  <root>/
    leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
"""
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def cityscapes_label_map() -> np.ndarray:
    """Lookup table (256,) from Cityscapes label ids to the 19 train ids (others -> 255)."""
    table = np.full(256, 255, dtype=np.int64)
    for train_id, (label_id, _) in enumerate(_EVALUATED):
        table[label_id] = train_id
    return table


def build_cityscapes(
    root: str | Path, split: str = "val", *, transform: JointTransform | None = None
) -> SegmentationDataset:
    """Cityscapes `split` (train or val) with gtFine labels mapped to the 19 train ids.

    Raises:
        ValueError: unknown split.
        FileNotFoundError: wrong or partial layout, or an image without its gtFine labelIds file.
    """
    if split not in CITYSCAPES_SPLITS:
        raise ValueError(f"`split` must be one of {sorted(CITYSCAPES_SPLITS)} but is {split!r}")
    spec = LayoutSpec(f"Cityscapes (split {split})", _TREE, (f"leftImg8bit/{split}", f"gtFine/{split}"))
    root = check_layout(spec, root)
    pairs, problems = [], []
    for image in sorted((root / "leftImg8bit" / split).glob(f"*/*{_IMAGE_SUFFIX}")):
        stem = image.name[: -len(_IMAGE_SUFFIX)]
        label = root / "gtFine" / split / image.parent.name / f"{stem}{_LABEL_SUFFIX}"
        if label.is_file():
            pairs.append((image, label))
        else:
            problems.append(f"missing {label.relative_to(root)} for {image.relative_to(root)}")
    if problems or not pairs:
        raise layout_error(
            spec, root, problems or [f"no *{_IMAGE_SUFFIX} files under leftImg8bit/{split}/<city>/"]
        )
    return SegmentationDataset(
        pairs,
        name="cityscapes",
        split=split,
        class_names=CITYSCAPES_CLASSES,
        ignore_index=255,
        label_map=cityscapes_label_map(),
        transform=transform,
        info={"label_mapping": "gtFine labelIds -> 19 train ids, others -> 255"},
    )
