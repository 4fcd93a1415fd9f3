"""Dataset factory names and seeded fractions."""

from __future__ import annotations

from pathlib import Path

import pytest

from neco.data import SEGMENTATION_DATASETS, SegmentationDataset, build_segmentation_dataset


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match=r"must be one of \['ade20k', 'cityscapes', 'coco-stuff'"):
        build_segmentation_dataset("pascal", tmp_path, "val")
    assert set(SEGMENTATION_DATASETS) == {
        "voc", "ade20k", "coco-stuff-164k", "coco-stuff", "coco-things", "coco-stuff27", "cityscapes",
        "pascal-context", "scenes"
    }  # fmt: skip


@pytest.mark.parametrize(("fraction", "expected"), [(1 / 128, 10), (1 / 64, 20), (1 / 8, 160), (1.0, 1280)])
def test_fractions_are_seeded_and_sized(fraction, expected):
    pairs = [(Path(f"img{i}.jpg"), Path(f"img{i}.png")) for i in range(1280)]
    dataset = SegmentationDataset(pairs, name="toy", split="train", class_names=["a", "b"])
    part = dataset.fraction(fraction, seed=1)
    assert len(part) == expected
    assert part.pairs == dataset.fraction(fraction, seed=1).pairs
    assert set(part.pairs) <= set(dataset.pairs)
    if fraction < 1:
        assert part.pairs != dataset.fraction(fraction, seed=2).pairs
        assert part.describe()["fraction"] == fraction and part.describe()["fraction_seed"] == 1
