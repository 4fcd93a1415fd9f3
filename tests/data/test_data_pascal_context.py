"""Pascal Context (59 classes) loader: mmsegmentation layout, 0 ignored, 1..59 shifted, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data import build_segmentation_dataset
from neco.data.pascal_context import PASCAL_CONTEXT_CLASSES, pascal_context_label_map

# id -> raw class value of its right half (the left half is 0, "outside the 59 classes")
IDS = {"2008_000002": 59, "2008_000010": 1, "2010_000001": 17}


def make_context(root: Path, split: str = "val", ids: dict[str, int] = IDS) -> Path:
    """A tiny VOCdevkit/VOC2010 with the Pascal Context label folder and id lists."""
    base = root / "VOCdevkit" / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, value in ids.items():
        # the red channel encodes the label so a test can check the pairing
        Image.new("RGB", (12, 6), (value * 4, 0, 0)).save(
            base / "JPEGImages" / f"{image_id}.jpg", quality=100
        )
        label = np.full((6, 12), value, dtype=np.uint8)
        label[:, :6] = 0
        Image.fromarray(label).save(base / "SegmentationClassContext" / f"{image_id}.png")
    (base / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_labels_shift_zero_ignored_and_pairing(tmp_path):
    dataset = build_segmentation_dataset("pascal-context", make_context(tmp_path), "val")
    assert len(dataset) == 3 and dataset.num_classes == 59 == len(PASCAL_CONTEXT_CLASSES)
    for index in range(len(dataset)):
        image, mask = dataset[index]
        value = round(int(np.asarray(image)[0, 9, 0]) / 4)
        assert set(np.unique(mask[:, :6])) == {255} and set(np.unique(mask[:, 6:])) == {value - 1}
    assert PASCAL_CONTEXT_CLASSES[58] == "wood" and "ignore" in dataset.describe()["label_mapping"]


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2010"])
def test_root_may_be_any_level(tmp_path, sub):
    make_context(tmp_path, "train")
    assert len(build_segmentation_dataset("pascal-context", tmp_path / sub, "train")) == 3


def test_label_map_and_out_of_range_value_refused(tmp_path):
    table = pascal_context_label_map()
    assert (table[0], table[1], table[59], table[255]) == (255, 0, 58, 255) and table[60] == 59
    make_context(tmp_path, ids={"a": 60})
    dataset = build_segmentation_dataset("pascal-context", tmp_path, "val")
    with pytest.raises(ValueError, match=r"a\.png: values \[59\].*outside the 59 classes"):
        dataset[0]


def test_missing_label_and_partial_layout(tmp_path):
    root = make_context(tmp_path)
    (root / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000010.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing SegmentationClassContext/2008_000010.png"):
        build_segmentation_dataset("pascal-context", root, "val")
    with pytest.raises(
        FileNotFoundError, match=r"(?s)missing ImageSets/SegmentationContext/train.txt.*Expected"
    ):
        build_segmentation_dataset("pascal-context", root, "train")
    with pytest.raises(ValueError, match="`split` must be one of"):
        build_segmentation_dataset("pascal-context", root, "trainaug")
