"""Joint transforms: crop boxes, image/mask alignment, determinism."""

from __future__ import annotations

import pytest
import torch
from toy import oracle_features, write_toy_dataset

from neco.evaluation.blocks.transforms import (
    EvalResize,
    HummingbirdTrainTransform,
    LinearTrainTransform,
    PairDataset,
    resize_ids,
)
from neco.method.crops import sample_crop_box


def test_crop_boxes_fit_and_large_scales_fall_back_to_the_whole_image():
    generator = torch.Generator().manual_seed(0)
    full = 0
    for _ in range(500):
        left, top, right, bottom = sample_crop_box(80, 60, (0.5, 2.0), (3 / 4, 4 / 3), generator)
        h, w = bottom - top, right - left
        assert 0 <= top and 0 <= left and top + h <= 60 and left + w <= 80 and h > 0 and w > 0
        assert h * w >= 0.45 * 60 * 80 or (h, w) == (60, 80)  # never below the scale floor
        full += (h, w) == (60, 80)
    # scale draws above ~1 do not fit; after 10 misses torchvision takes the whole image (4:3 fits the ratio)
    assert full > 0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), "train", 4, seed=3, size=(48, 56))


@pytest.mark.parametrize(
    "transform",
    [HummingbirdTrainTransform(64), LinearTrainTransform(64), EvalResize(64)],
    ids=["hb", "linear", "eval"],
)
def test_image_and_mask_stay_aligned(toy, transform):
    dataset = PairDataset(toy, transform, seed=0)
    agree = total = 0
    for i in range(len(dataset)):
        image, mask, index = dataset[i]
        assert (
            index == i and image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64
        )
        colour_class = oracle_features(image[None], 1, 4, noise=0.0)[0, :4].argmax(
            0
        )  # class read from colour
        keep = mask != 255
        agree += int((colour_class[keep] == mask[keep]).sum())
        total += int(keep.sum())
    assert agree / total > 0.97  # only resampled boundary pixels may disagree


def test_items_depend_only_on_seed_epoch_and_index(toy):
    a = PairDataset(toy, HummingbirdTrainTransform(32), seed=1, epoch=0)
    b = PairDataset(toy, HummingbirdTrainTransform(32), seed=1, epoch=0)
    c = PairDataset(toy, HummingbirdTrainTransform(32), seed=1, epoch=1)
    assert torch.equal(a[2][0], b[2][0])
    assert not torch.equal(a[2][0], c[2][0])


def test_transform_options_are_validated():
    with pytest.raises(ValueError, match="`scale` must be"):
        HummingbirdTrainTransform(32, scale=(2.0, 0.5))
    with pytest.raises(ValueError, match="`input_size` must be a positive integer"):
        EvalResize(0)


def test_resize_ids_is_nearest_and_keeps_dtype():
    ids = torch.tensor([[[0, 1], [2, 255]]])
    up = resize_ids(ids, 4)
    assert up.dtype == ids.dtype and up.shape == (1, 4, 4)
    assert torch.equal(up[0], ids[0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert torch.equal(resize_ids(up, 2), ids)  # a 2x downsampling lands on one source pixel per cell
    masks = torch.rand(2, 3, 5, 5) > 0.5
    assert resize_ids(masks, (10, 10)).dtype == torch.bool
