"""Multi-crop sampler: crop distribution, overlap boxes in both frames, constraint and fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from neco.method.crops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropSampler,
    collate_multicrop,
    overlap_boxes,
    sample_crop_box,
)


def _gradient_image(width: int, height: int) -> Image.Image:
    """R encodes x, G encodes y, linearly: a pixel's colour says where it came from."""
    xs = (np.arange(width) + 0.5) / width * 255.0
    ys = (np.arange(height) + 0.5) / height * 255.0
    array = np.zeros((height, width, 3), dtype=np.float64)
    array[..., 0] = xs[None, :]
    array[..., 1] = ys[:, None]
    array[..., 2] = 128
    return Image.fromarray(array.round().astype(np.uint8))


def _to_image_pixels(point: torch.Tensor, crop: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Map (x, y) in a crop's resized frame to image pixels: independent of the sampler's code."""
    height, width = size
    x = crop[0] + point[0] * (crop[2] - crop[0]) / width
    y = crop[1] + point[1] * (crop[3] - crop[1]) / height
    return torch.stack([x, y])


@pytest.mark.parametrize("seed", range(12))
def test_overlap_point_maps_to_same_image_pixel(seed: int) -> None:
    sampler = MultiCropSampler(
        global_size=(48, 64), local_size=24, num_global=2, num_local=3, photometric=False
    )
    generator = torch.Generator().manual_seed(seed)
    width, height = (
        int(torch.randint(60, 300, (1,), generator=generator)),
        int(torch.randint(60, 300, (1,), generator=generator)),
    )
    sample = sampler(_gradient_image(width, height), rng=generator)
    boxes, valid, crops = sample["boxes"], sample["valid"], sample["crops"]
    sizes = sampler.sizes
    assert boxes.shape == (2, 5, 2, 4) and valid.shape == (2, 5)
    assert not valid[0, 0] and not valid[1, 1]
    for g in range(2):
        for v in range(5):
            if not valid[g, v]:
                continue
            for u, t in (
                (0.0, 0.0),
                (1.0, 1.0),
                (0.3, 0.8),
                (float(torch.rand(1, generator=generator)), 0.5),
            ):
                in_g = boxes[g, v, 0, :2] + torch.tensor([u, t]) * (boxes[g, v, 0, 2:] - boxes[g, v, 0, :2])
                in_v = boxes[g, v, 1, :2] + torch.tensor([u, t]) * (boxes[g, v, 1, 2:] - boxes[g, v, 1, :2])
                image_g = _to_image_pixels(in_g, crops[g], sizes[g])
                image_v = _to_image_pixels(in_v, crops[v], sizes[v])
                torch.testing.assert_close(image_g, image_v, atol=1e-3, rtol=0)
                # ... and the point lies inside both crops.
                for c in (crops[g], crops[v]):
                    assert (
                        c[0] - 1e-3 <= image_g[0] <= c[2] + 1e-3 and c[1] - 1e-3 <= image_g[1] <= c[3] + 1e-3
                    )


def test_views_show_same_content_at_matching_box_points() -> None:
    # End to end: the pixel colours of the two resized views agree at corresponding box points.
    sampler = MultiCropSampler(global_size=64, local_size=32, num_global=2, num_local=2, photometric=False)
    image = _gradient_image(200, 150)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for seed in range(5):
        sample = sampler(image, rng=torch.Generator().manual_seed(seed))
        views = [(view * std + mean) * 255.0 for view in sample["views"]]
        for g in range(2):
            for v in range(4):
                if not sample["valid"][g, v]:
                    continue
                box_g, box_v = sample["boxes"][g, v]
                centre_g = ((box_g[:2] + box_g[2:]) / 2).long().clamp(max=views[g].shape[-1] - 1)
                centre_v_float = box_v[:2] + (centre_g + 0.5 - box_g[:2]) * (box_v[2:] - box_v[:2]) / (
                    box_g[2:] - box_g[:2]
                )
                centre_v = centre_v_float.floor().long()
                colour_g = views[g][:2, centre_g[1], centre_g[0]]
                colour_v = views[v][:2, centre_v[1], centre_v[0]]
                # One resized pixel of the coarsest view spans up to ~4 image pixels = ~7 colour levels.
                assert torch.allclose(colour_g, colour_v, atol=10.0), (seed, g, v, colour_g, colour_v)


def test_overlap_constraint_holds() -> None:
    sampler = MultiCropSampler(global_size=32, local_size=16, num_global=3, num_local=4, photometric=False)
    for seed in range(20):
        crops, fallbacks = sampler.sample_boxes(320, 200, torch.Generator().manual_seed(seed))
        assert fallbacks == 0
        area = 320 * 200
        for index in range(1, 7):
            threshold = (0.02 if index < 3 else 0.01) * area
            for g in range(min(index, 3)):
                lt = torch.maximum(crops[index, :2], crops[g, :2])
                rb = torch.minimum(crops[index, 2:], crops[g, 2:])
                inter = (rb - lt).clamp_min(0).prod()
                assert inter > threshold


def test_crop_box_distribution_matches_torchvision() -> None:
    # Same sampling procedure as torchvision's RandomResizedCrop.get_params, with the same random stream.
    from torchvision.transforms import RandomResizedCrop

    image = Image.new("RGB", (300, 200))
    for seed in range(10):
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(image, scale=[0.05, 0.25], ratio=[3 / 4, 4 / 3])
        torch.manual_seed(seed)
        assert sample_crop_box(300, 200, (0.05, 0.25), (3 / 4, 4 / 3)) == (left, top, left + w, top + h)


def test_fallback_is_capped_counted_and_marks_empty_overlaps_invalid() -> None:
    # Impossible constraint: more overlap than any crop pair can have -> every later crop falls back.
    sampler = MultiCropSampler(
        global_size=16,
        local_size=8,
        num_global=2,
        num_local=2,
        global_scale=(0.05, 0.06),
        local_scale=(0.05, 0.06),
        min_overlap=0.5,
        min_overlap_second_global=0.5,
        max_tries=3,
        photometric=False,
    )
    sample = sampler(Image.new("RGB", (100, 100)), rng=torch.Generator().manual_seed(0))
    assert sample["fallbacks"] == 3 and sampler.fallback_count == 3
    sampler(Image.new("RGB", (100, 100)), rng=torch.Generator().manual_seed(1))
    assert sampler.fallback_count == 6
    crops = sample["crops"]
    for v in range(4):
        lt = torch.maximum(crops[0, :2], crops[v, :2])
        rb = torch.minimum(crops[0, 2:], crops[v, 2:])
        empty = bool(((rb - lt) <= 0).any())
        assert bool(sample["valid"][0, v]) == (v != 0 and not empty)


def test_small_non_square_image_and_single_global_no_local() -> None:
    sampler = MultiCropSampler(global_size=(40, 56), local_size=24, num_global=1, num_local=0)
    sample = sampler(Image.new("L", (20, 9), color=100), rng=torch.Generator().manual_seed(0))
    assert len(sample["views"]) == 1 and sample["views"][0].shape == (3, 40, 56)
    assert sample["boxes"].shape == (1, 1, 2, 4) and not sample["valid"].any()


def test_overlap_boxes_simple_case() -> None:
    # Crop 0 = left half of a 100x100 image at 50x50, crop 1 = the middle 50x50 at 25x25: overlap x in [25, 50).
    crops = torch.tensor([[0.0, 0.0, 50.0, 100.0], [25.0, 25.0, 75.0, 75.0]])
    boxes, valid = overlap_boxes(crops, [(50, 25), (25, 25)], num_global=1)
    assert valid.tolist() == [[False, True]]
    torch.testing.assert_close(boxes[0, 1, 0], torch.tensor([12.5, 12.5, 25.0, 37.5]))
    torch.testing.assert_close(boxes[0, 1, 1], torch.tensor([0.0, 0.0, 12.5, 25.0]))


def test_photometric_changes_views_and_normalises() -> None:
    image = _gradient_image(80, 80)
    plain = MultiCropSampler(32, 16, 2, 1, photometric=False)(image, rng=torch.Generator().manual_seed(3))
    jittered = MultiCropSampler(32, 16, 2, 1, photometric=True)(image, rng=torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain["boxes"], jittered["boxes"])
    assert any(not torch.allclose(a, b) for a, b in zip(plain["views"], jittered["views"]))
    # ImageNet normalisation: the blue channel (constant 128) maps to (128/255 - mean) / std.
    expected_blue = (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    torch.testing.assert_close(plain["views"][0][2].mean(), torch.tensor(expected_blue), atol=1e-2, rtol=0)


def test_collate_and_validation_errors() -> None:
    sampler = MultiCropSampler(32, 16, 2, 2)
    samples = [sampler(_gradient_image(64, 48)) for _ in range(3)]
    batch = collate_multicrop(samples)
    assert [tuple(v.shape) for v in batch["views"]] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 2
    assert batch["boxes"].shape == (3, 2, 4, 2, 4) and batch["valid"].shape == (3, 2, 4)
    with pytest.raises(ValueError, match="num_global"):
        MultiCropSampler(num_global=0)
    with pytest.raises(ValueError, match="global_scale"):
        MultiCropSampler(global_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="samples"):
        collate_multicrop([])
