"""Joint (image, mask) transforms of the evaluation protocols, seeded per item.

Every transform maps `(PIL RGB image, int64 mask (H, W), numpy Generator)` to
`(float image (3, S, S) ImageNet-normalised, int64 mask (S, S))`; images are resized bilinearly
(PIL, antialiased), masks with nearest neighbour. `PairDataset` draws one generator per
(seed, epoch, item), so results do not depend on the number of loader workers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "sample_resized_crop",
    "EvalResize",
    "HummingbirdTrainTransform",
    "LinearTrainTransform",
    "PairDataset",
]

# The public Hummingbird code has 0.255 as the last std (a typo); neco uses the standard 0.225.


def _normalise(image: Image.Image) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return TF.resize(mask[None], list(size), interpolation=InterpolationMode.NEAREST_EXACT)[0]


def sample_resized_crop(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """Crop box (top, left, h, w) drawn exactly like torchvision's `RandomResizedCrop.get_params`.

    Ten tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); a try is kept only if the box
    fits inside the image, else the fallback is the largest centred box with a clamped aspect. With
    the published Hummingbird scale (0.5, 2.0) the fractions above ~1 rarely fit, so the effective
    distribution is the fitting part of U(0.5, 2.0) plus the whole-image fallback (see
    docs/evaluation.md); reproducing this, rather than clipping the scale, keeps the numbers comparable.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _joint_resized_crop(
    image: Image.Image, mask: np.ndarray, box: tuple[int, int, int, int], size: int
) -> tuple[Image.Image, torch.Tensor]:
    """Crop `box` (top, left, h, w) from image and mask and resize both to size x size (mask: nearest-exact)."""
    top, left, h, w = box
    image = TF.resized_crop(image, top, left, h, w, [size, size], InterpolationMode.BILINEAR)
    mask_t = TF.resized_crop(
        torch.from_numpy(mask)[None], top, left, h, w, [size, size], InterpolationMode.NEAREST_EXACT
    )[0]  # (size, size)
    return image, mask_t


def _check_size(size: int) -> int:
    if int(size) < 1:
        raise ValueError(f"`input_size` must be a positive integer but is {size}")
    return int(size)


class EvalResize:
    """Resize image and mask to a square `size` (the validation transform of every protocol)."""

    def __init__(self, size: int) -> None:
        self.size = _check_size(size)

    def __call__(self, image: Image.Image, mask: np.ndarray, rng: np.random.Generator | None = None):
        image = image.resize((self.size, self.size), Image.BILINEAR)
        return _normalise(image), _resize_mask(torch.from_numpy(mask), (self.size, self.size))

    def describe(self) -> dict[str, Any]:
        """Settings for a result file."""
        return {"resize": [self.size, self.size], "image": "bilinear", "mask": "nearest"}


class HummingbirdTrainTransform:
    """Memory-bank augmentation: RandomResizedCrop(size, scale, ratio) + per-component colour jitter.

    Colour jitter: brightness, contrast, saturation factors ~ U(1 - j, 1 + j) and a hue shift
    ~ U(-j, j), each applied with probability `jitter_p`, in that fixed order.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.5, 2.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: float = 0.1,
        jitter_p: float = 0.5,
    ) -> None:
        self.size = _check_size(size)
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"`scale` must be 0 < low <= high but is {scale}")
        if not 0 <= jitter <= 0.5:
            raise ValueError(f"`jitter` must be in [0, 0.5] but is {jitter}")
        self.scale, self.ratio, self.jitter, self.jitter_p = tuple(scale), tuple(ratio), jitter, jitter_p

    def __call__(self, image: Image.Image, mask: np.ndarray, rng: np.random.Generator):
        box = sample_resized_crop(image.height, image.width, self.scale, self.ratio, rng)
        image, mask_t = _joint_resized_crop(image, mask, box, self.size)
        if self.jitter > 0:
            j = self.jitter
            if rng.random() < self.jitter_p:
                image = TF.adjust_brightness(image, rng.uniform(1 - j, 1 + j))
            if rng.random() < self.jitter_p:
                image = TF.adjust_contrast(image, rng.uniform(1 - j, 1 + j))
            if rng.random() < self.jitter_p:
                image = TF.adjust_saturation(image, rng.uniform(1 - j, 1 + j))
            if rng.random() < self.jitter_p:
                image = TF.adjust_hue(image, rng.uniform(-j, j))
        return _normalise(image), mask_t

    def describe(self) -> dict[str, Any]:
        """Settings for a result file."""
        return {
            "random_resized_crop": {"size": self.size, "scale": list(self.scale), "ratio": list(self.ratio)},
            "scale_semantics": "torchvision get_params: 10 tries that must fit the image, then centred fallback",
            "color_jitter": {"strength": self.jitter, "p_each": self.jitter_p},
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        }


class LinearTrainTransform:
    """Linear-probe augmentation: joint RandomResizedCrop(size, scale (0.8, 1)) and horizontal flip."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.8, 1.0), flip_p: float = 0.5) -> None:
        self.size = _check_size(size)
        self.scale, self.flip_p = tuple(scale), flip_p

    def __call__(self, image: Image.Image, mask: np.ndarray, rng: np.random.Generator):
        box = sample_resized_crop(image.height, image.width, self.scale, (3 / 4, 4 / 3), rng)
        image, mask_t = _joint_resized_crop(image, mask, box, self.size)
        if rng.random() < self.flip_p:
            image, mask_t = TF.hflip(image), mask_t.flip(-1)
        return _normalise(image), mask_t

    def describe(self) -> dict[str, Any]:
        """Settings for a result file."""
        return {"random_resized_crop": {"size": self.size, "scale": list(self.scale)}, "hflip_p": self.flip_p}


class PairDataset(Dataset):
    """Apply a joint transform to a `SegmentationDataset`'s raw items with a per-item seeded generator."""

    def __init__(self, dataset: Any, transform: Any, seed: int = 0, epoch: int = 0) -> None:
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, mask = self.dataset.load(index) if hasattr(self.dataset, "load") else self.dataset[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image_t, mask_t = self.transform(image, mask, rng)
        return image_t, mask_t.to(torch.int64), index
