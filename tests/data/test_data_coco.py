"""COCO-Stuff loaders: the three coarse label sets from stuffthingmaps values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data import build_segmentation_dataset
from neco.data.coco_labels import coco_label_map, coco_supercategory

# stuffthingmaps store category_id - 1. Known COCO facts: 1 person, 3 car, 18 dog, 62 chair,
# 106 clouds, 124 grass, 149 road, 157 sky-other, 172 wall-concrete; 255 unlabeled.
PIXELS = {"person": 0, "car": 2, "dog": 17, "chair": 61, "clouds": 105, "grass": 123, "road": 148,
          "sky-other": 156, "wall-concrete": 171, "unlabeled": 255}  # fmt: skip


def make_coco(root: Path, split: str = "val2017") -> Path:
    (root / "images" / split).mkdir(parents=True)
    (root / "stuffthingmaps" / split).mkdir(parents=True)
    values = np.array(list(PIXELS.values()), dtype=np.uint8)
    for stem in ("000000000139", "000000000285"):
        Image.new("RGB", (len(values), 2)).save(root / "images" / split / f"{stem}.jpg")
        Image.fromarray(np.tile(values, (2, 1))).save(root / "stuffthingmaps" / split / f"{stem}.png")
    return root


def _names(dataset, mask) -> list[str]:
    return [dataset.class_names[v] if v != 255 else "ignore" for v in mask[0]]


def test_stuff15_ignores_things(tmp_path):
    dataset = build_segmentation_dataset("coco-stuff", make_coco(tmp_path), "val")
    assert dataset.num_classes == 15 and len(dataset) == 2
    names = _names(dataset, dataset[0][1])
    assert names == ["ignore"] * 4 + ["sky", "plant", "ground", "sky", "wall", "ignore"]
    assert "15 stuff" in dataset.describe()["label_set_description"]


def test_things12_ignores_stuff(tmp_path):
    dataset = build_segmentation_dataset("coco-things", make_coco(tmp_path), "val")
    assert dataset.num_classes == 12
    names = _names(dataset, dataset[1][1])
    assert names == ["person", "vehicle", "animal", "furniture"] + ["ignore"] * 6


def test_stuff27_keeps_both(tmp_path):
    dataset = build_segmentation_dataset("coco-stuff27", make_coco(tmp_path), "val")
    assert dataset.num_classes == 27
    names = _names(dataset, dataset[0][1])
    assert names == ["person", "vehicle", "animal", "furniture-things", "sky", "plant", "ground", "sky", "wall",
                     "ignore"]  # fmt: skip
    # things come first in the 27-class order, stuff after
    assert dataset.class_names.index("vehicle") < 12 <= dataset.class_names.index("ceiling")


def test_every_category_id_has_one_supercategory():
    for label_set, size in (("coco-stuff", 15), ("coco-things", 12), ("coco-stuff27", 27)):
        table, names = coco_label_map(label_set)
        used = set(table[table != 255].tolist())
        assert used == set(range(size)), label_set  # every class reachable
    # 80 thing + 91 stuff labels exist; unused thing ids map too but never occur
    assert coco_supercategory(1) == ("person", True) and coco_supercategory(182) == ("solid", False)
    with pytest.raises(ValueError, match="category_id"):
        coco_supercategory(183)


def test_file_list_and_missing_label(tmp_path):
    root = make_coco(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("000000000285.jpg\n")
    assert len(build_segmentation_dataset("coco-stuff", root, "val", file_list=listing)) == 1
    listing.write_text("000000000999\n")
    with pytest.raises(FileNotFoundError, match="missing label map stuffthingmaps/val2017/000000000999.png"):
        build_segmentation_dataset("coco-stuff", root, "val", file_list=listing)


def test_missing_stuffthingmaps_shows_tree(tmp_path):
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"(?s)missing stuffthingmaps/val2017/.*Expected layout"):
        build_segmentation_dataset("coco-things", tmp_path, "val")
