"""Joint (image, mask) transforms of the evaluation protocols, seeded per item.

Every transform maps `(PIL RGB image, int64 mask (H, W), torch.Generator)` to
`(float image (3, S, S) ImageNet-normalised, int64 mask (S, S))`; images are resized bilinearly
(PIL, antialiased), masks with nearest neighbour. `PairDataset` draws one generator per
(seed, epoch, item), so results do not depend on the number of loader workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from neco.method.crops import sample_crop_box

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalResize",
    "HummingbirdTrainTransform",
    "LinearTrainTransform",
    "PairDataset",
    "resize_ids",
    "to_input",
]

# The public Hummingbird code has 0.255 as the last std (a typo); neco uses the standard 0.225.


# colour-jitter components in their fixed order, each with its "no change" factor
_JITTER = ((TF.adjust_brightness, 1), (TF.adjust_contrast, 1), (TF.adjust_saturation, 1), (TF.adjust_hue, 0))


def to_input(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """ImageNet-normalised float tensor (3, H, W) of an RGB image, first resized to a square `size` (bilinear)."""
    if size is not None:
        image = image.resize((size, size), Image.BILINEAR)
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def resize_ids(ids: torch.Tensor | np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of id maps (..., H, W) (int or bool) to (..., *size), same dtype.

    `nearest-exact` picks the source pixel whose centre is nearest (PIL's NEAREST), so a 2x
    upsampling repeats every id twice and a downsampling never shifts the map by half a pixel.
    """
    ids = torch.as_tensor(ids)
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(ids.shape[-2:]) == size:
        return ids
    out = F.interpolate(ids.reshape(-1, 1, *ids.shape[-2:]).float(), size=size, mode="nearest-exact")
    return out.round().to(ids.dtype).reshape(*ids.shape[:-2], *size)  # (N, 1, *size) -> (..., *size)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _check_size(size: int) -> int:
    if int(size) < 1:
        raise ValueError(f"`input_size` must be a positive integer but is {size}")
    return int(size)


class _JointRandomResizedCrop:
    """Base of the training transforms: joint RandomResizedCrop(size, scale, ratio) of image and mask."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        self.size = _check_size(size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def crop(self, image: Image.Image, mask: np.ndarray, generator: torch.Generator):
        """(PIL image, int64 mask): a `sample_crop_box` box of both resized to size x size (mask: nearest-exact)."""
        x1, y1, x2, y2 = sample_crop_box(image.width, image.height, self.scale, self.ratio, generator)
        box = (y1, x1, y2 - y1, x2 - x1, [self.size, self.size])  # top, left, height, width, size
        mask_t = TF.resized_crop(torch.from_numpy(mask)[None], *box, InterpolationMode.NEAREST_EXACT)[0]
        return TF.resized_crop(image, *box, InterpolationMode.BILINEAR), mask_t  # mask (size, size)


class EvalResize:
    """Resize image and mask to a square `size` (the validation transform of every protocol)."""

    def __init__(self, size: int) -> None:
        self.size = _check_size(size)

    def __call__(self, image: Image.Image, mask: np.ndarray, generator: torch.Generator | None = None):
        return to_input(image, self.size), resize_ids(torch.from_numpy(mask), self.size)

    def describe(self) -> dict[str, Any]:
        """Settings for a result file."""
        return {"resize": [self.size, self.size], "image": "bilinear", "mask": "nearest"}


class HummingbirdTrainTransform(_JointRandomResizedCrop):
    """Memory-bank augmentation: RandomResizedCrop(size, scale, ratio) + per-component colour jitter.

    The crop box is drawn like torchvision's `RandomResizedCrop.get_params` (`sample_crop_box`): ten
    tries that must fit the image, then a centred fallback. With the published scale (0.5, 2.0) the
    fractions above ~1 rarely fit, so the effective distribution is the fitting part of U(0.5, 2.0)
    plus the whole-image fallback; reproducing this, rather than clipping the scale, keeps the
    numbers comparable (docs/evaluation.md).

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
        super().__init__(size, scale, ratio)
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"`scale` must be 0 < low <= high but is {scale}")
        if not 0 <= jitter <= 0.5:
            raise ValueError(f"`jitter` must be in [0, 0.5] but is {jitter}")
        self.jitter, self.jitter_p = jitter, jitter_p

    def __call__(self, image: Image.Image, mask: np.ndarray, generator: torch.Generator):
        image, mask_t = self.crop(image, mask, generator)
        j = self.jitter
        for apply, centre in _JITTER if j > 0 else []:  # fixed order; each drawn only when applied
            if float(torch.rand(1, generator=generator)) < self.jitter_p:
                image = apply(image, _uniform(centre - j, centre + j, generator))
        return to_input(image), mask_t

    def describe(self) -> dict[str, Any]:
        """Settings for a result file."""
        return {
            "random_resized_crop": {"size": self.size, "scale": list(self.scale), "ratio": list(self.ratio)},
            "color_jitter": {"strength": self.jitter, "p_each": self.jitter_p},
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        }


class LinearTrainTransform(_JointRandomResizedCrop):
    """Linear-probe augmentation: joint RandomResizedCrop(size, scale (0.8, 1)) and horizontal flip."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.8, 1.0), flip_p: float = 0.5) -> None:
        super().__init__(size, scale, (3 / 4, 4 / 3))
        self.flip_p = flip_p

    def __call__(self, image: Image.Image, mask: np.ndarray, generator: torch.Generator):
        image, mask_t = self.crop(image, mask, generator)
        if float(torch.rand(1, generator=generator)) < self.flip_p:
            image, mask_t = TF.hflip(image), mask_t.flip(-1)
        return to_input(image), mask_t

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
        from neco.data.base import BadImageError

        try:
            image, mask = self.dataset.load(index) if hasattr(self.dataset, "load") else self.dataset[index]
        except BadImageError as err:
            # A plain ValueError: a DataLoader worker re-raises it by its message (a subclass would not rebuild).
            raise ValueError(
                f"{err}; an evaluation image is never skipped silently: fix or remove the file, or pass "
                "--skip-bad-images to leave unreadable images out (they are listed in the result)"
            ) from None
        # one generator per (seed, epoch, item): results do not depend on the number of workers
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state) & (2**63 - 1))
        image_t, mask_t = self.transform(image, mask, generator)
        return image_t, mask_t.to(torch.int64), index
