"""ADE20k loader: pairing by stem, label 0 ignored, 1..150 shifted, clear layout errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data import build_segmentation_dataset
from neco.data.ade20k import ADE20K_CLASSES, ade20k_label_map

# Annotation stems listed in another order than the images sort in: pairing must use stems.
STEMS = {"ADE_val_00000002": 150, "ADE_val_00000010": 1, "ADE_val_00000001": 7}


def make_ade(root: Path, split_dir: str = "validation") -> Path:
    base = root / "ADEChallengeData2016"
    (base / "images" / split_dir).mkdir(parents=True)
    (base / "annotations" / split_dir).mkdir(parents=True)
    for stem, value in STEMS.items():
        # the image's red channel encodes the raw label so a test can check the pairing
        Image.new("RGB", (16, 8), (value, 0, 0)).save(
            base / "images" / split_dir / f"{stem}.jpg", quality=100
        )
        array = np.full((8, 16), value, dtype=np.uint8)
        array[:, :4] = 0  # "other"
        Image.fromarray(array).save(base / "annotations" / split_dir / f"{stem}.png")
    return root


def test_labels_shift_and_zero_is_ignored(tmp_path):
    dataset = build_segmentation_dataset("ade20k", make_ade(tmp_path), "val")
    assert len(dataset) == 3 and dataset.num_classes == 150 == len(ADE20K_CLASSES)
    for index in range(len(dataset)):
        image, mask = dataset[index]
        raw = int(np.asarray(image)[0, 8, 0])  # from the image itself: paired by stem
        raw = min(STEMS.values(), key=lambda v: abs(v - raw))
        assert set(np.unique(mask)) == {255, raw - 1}
    assert "ignore" in dataset.describe()["label_mapping"]


def test_label_map_table():
    table = ade20k_label_map()
    assert table[0] == 255 and table[1] == 0 and table[150] == 149 and table[151] == 255


def test_training_alias_and_missing_annotation(tmp_path):
    root = make_ade(tmp_path, "training")
    assert len(build_segmentation_dataset("ade20k", root, "training")) == 3
    (root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_val_00000010.png").unlink()
    with pytest.raises(FileNotFoundError, match="missing annotations/training/ADE_val_00000010.png"):
        build_segmentation_dataset("ade20k", root, "train")


def test_partial_layout_shows_tree(tmp_path):
    (tmp_path / "images" / "validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"(?s)missing annotations/validation.*Expected layout"):
        build_segmentation_dataset("ade20k", tmp_path, "val")
