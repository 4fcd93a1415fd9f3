"""Cityscapes loader: labelIds -> 19 train ids, layout errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data import build_segmentation_dataset
from neco.data.cityscapes import CITYSCAPES_CLASSES, cityscapes_label_map


def make_cityscapes(root: Path) -> Path:
    # label ids of the official table: 0 unlabeled, 7 road, 26 car, 33 bicycle, 6 ground (not evaluated)
    values = np.array([[0, 7, 26, 33, 6]], dtype=np.uint8)
    for city, stem in (("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")):
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (5, 1)).save(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
        Image.fromarray(values).save(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png")
    return root


def test_label_ids_become_train_ids(tmp_path):
    dataset = build_segmentation_dataset("cityscapes", make_cityscapes(tmp_path), "val")
    assert len(dataset) == 2 and dataset.num_classes == 19 == len(CITYSCAPES_CLASSES)
    _, mask = dataset[0]
    names = [CITYSCAPES_CLASSES[v] if v != 255 else "ignore" for v in mask[0]]
    assert names == ["ignore", "road", "car", "bicycle", "ignore"]
    assert (cityscapes_label_map() != 255).sum() == 19


def test_missing_gt_file_is_named(tmp_path):
    root = make_cityscapes(tmp_path)
    (root / "gtFine" / "val" / "bochum" / "bochum_000000_000313_gtFine_labelIds.png").unlink()
    with pytest.raises(
        FileNotFoundError, match="missing gtFine/val/bochum/bochum_000000_000313_gtFine_labelIds.png"
    ):
        build_segmentation_dataset("cityscapes", root, "val")


def test_missing_gtfine_folder_shows_tree(tmp_path):
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"(?s)missing gtFine/train.*_gtFine_labelIds.png"):
        build_segmentation_dataset("cityscapes", tmp_path, "train")
