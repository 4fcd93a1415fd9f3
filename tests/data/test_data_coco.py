"""COCO-Stuff loaders: the 171 classes of COCO-Stuff-164k and the coarse label sets from stuffthingmaps values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data import build_segmentation_dataset
from neco.data.coco_labels import COCO_STUFF_164K_CLASSES, coco_label_map, coco_supercategory

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


# Published facts of COCO-Stuff-164k (Segmenter / mmsegmentation): 171 classes, 80 things (person ..
# toothbrush) then 91 stuff (banner .. wood); the 11 thing ids without annotations are ignored.
UNUSED_THING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)


def test_stuff164k_maps_raw_values_to_171_contiguous_ids(tmp_path):
    dataset = build_segmentation_dataset("coco-stuff-164k", make_coco(tmp_path), "val")
    assert dataset.num_classes == 171 and dataset.ignore_index == 255 and len(dataset) == 2
    # every raw value lands on the class of its own name: things and stuff, no shift across the gaps
    assert _names(dataset, dataset[0][1]) == [name for name in PIXELS if name != "unlabeled"] + ["ignore"]
    assert "171 classes" in dataset.describe()["label_set_description"]


def test_stuff164k_table_matches_the_published_facts():
    table, names = coco_label_map("coco-stuff-164k")
    assert names == COCO_STUFF_164K_CLASSES and len(names) == len(set(names)) == 171
    assert (names[0], names[79], names[80], names[-1]) == ("person", "toothbrush", "banner", "wood")
    assert sorted(table[table != 255].tolist()) == list(range(171))  # contiguous, each id once
    assert all(table[i - 1] == 255 for i in UNUSED_THING_IDS)
    assert table[182:].tolist() == [255] * 74  # no category above 182; 255 stays unlabeled
    # mmsegmentation's converter: raw 10 -> 10, 12 -> 11 (after the gap at 11), 26 -> 24, 30 -> 26, 181 -> 170
    assert [table[v] for v in (10, 12, 26, 30, 90, 91, 181)] == [10, 11, 24, 26, 255, 80, 170]
    # the 171 names agree with the super-category hierarchy at the ids they come from
    category_of = {int(train_id): raw + 1 for raw, train_id in enumerate(table) if train_id != 255}
    assert coco_supercategory(category_of[names.index("tv")]) == ("electronic", True)
    assert coco_supercategory(category_of[names.index("hair drier")]) == ("indoor", True)
    assert coco_supercategory(category_of[names.index("wall-concrete")]) == ("wall", False)


def test_mmsegmentation_layout_skips_converted_maps(tmp_path):
    root = make_coco(tmp_path / "src")
    mmseg = tmp_path / "coco_stuff164k"
    (mmseg / "images").mkdir(parents=True)
    (root / "images" / "val2017").rename(mmseg / "images" / "val2017")
    (mmseg / "annotations").mkdir()
    (root / "stuffthingmaps" / "val2017").rename(mmseg / "annotations" / "val2017")
    for raw in list((mmseg / "annotations" / "val2017").glob("*.png")):
        Image.new("L", (4, 2)).save(raw.with_name(f"{raw.stem}_labelTrainIds.png"))  # wrong size on purpose
    dataset = build_segmentation_dataset("coco-stuff-164k", mmseg, "val")
    assert len(dataset) == 2 and all(not label.stem.endswith("_labelTrainIds") for _, label in dataset.pairs)
    assert _names(dataset, dataset[1][1])[:2] == ["person", "car"]
    for raw in (mmseg / "annotations" / "val2017").glob("*[0-9].png"):
        raw.unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations/val2017 holds only mmsegmentation's converted"):
        build_segmentation_dataset("coco-stuff-164k", mmseg, "val")


def test_stuff164k_missing_images_folder_is_named(tmp_path):
    (tmp_path / "stuffthingmaps" / "train2017").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)COCO \(coco-stuff-164k, split train\).*missing images/train2017/"
    ):
        build_segmentation_dataset("coco-stuff-164k", tmp_path, "train")
