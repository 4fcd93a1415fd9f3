"""Data side of Segmenter's fine-tuning recipe: training crops, a step-indexed stream, sliding windows.

Training (Segmenter's mmsegmentation pipeline): resize to `scale * ratio` on the short side,
ratio ~ U(0.5, 2.0); a random `crop` x `crop` window, redrawn up to 10 times while one class
covers more than 75% of it (`cat_max_ratio`); horizontal flip with p 0.5; photometric distortion
(each with p 0.5: brightness +-32/255, contrast x U(0.5, 1.5), saturation x U(0.5, 1.5), hue
+-18/180 of the circle); normalisation; padding to the crop with image 0 and label `ignore`.

Inference: the image resized to `scale` on the short side, logits averaged over `window`-sized
windows `stride` apart, upsampled to the label's size; several scales and flips average softmax
probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from neco.evaluation.blocks.transforms import IMAGENET_MEAN, IMAGENET_STD
from neco.utils.precision import autocast

__all__ = [
    "SegmenterTrainTransform",
    "StepDataset",
    "predict_probabilities",
    "short_side_resize",
    "slide_scores",
]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def short_side_resize(image: Image.Image, short: int) -> Image.Image:
    """`image` resized (bilinear) so that its short side is `short` pixels, aspect ratio kept."""
    scale = short / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR)


class SegmenterTrainTransform:
    """(PIL image, mask (H, W), generator) -> (image (3, crop, crop), mask (crop, crop)); see the module docstring."""

    def __init__(
        self,
        crop: int,
        scale: int | None = None,
        *,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        photometric: bool = True,
        ignore_index: int = 255,
    ) -> None:
        if crop < 1:
            raise ValueError(f"`crop` must be >= 1 but is {crop}")
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"`ratio_range` must be 0 < low <= high but is {ratio_range}")
        self.crop, self.scale = int(crop), int(scale or crop)
        self.ratio_range, self.cat_max_ratio = tuple(ratio_range), float(cat_max_ratio)
        self.photometric, self.ignore_index = photometric, int(ignore_index)

    def describe(self) -> dict[str, Any]:
        """The augmentation's settings for a result file."""
        return {
            "crop": self.crop,
            "short_side": self.scale,
            "ratio_range": list(self.ratio_range),
            "cat_max_ratio": self.cat_max_ratio,
            "flip": 0.5,
            "photometric": self.photometric,
        }

    def __call__(
        self, image: Image.Image, mask: np.ndarray, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented, padded crop of the pair."""
        ratio = _uniform(generator, *self.ratio_range)
        image = short_side_resize(image, max(1, round(self.scale * ratio)))
        ids = Image.fromarray(mask.astype(np.int32)).resize(image.size, Image.NEAREST)
        labels = torch.from_numpy(np.asarray(ids, dtype=np.int64).copy())  # (H, W)
        pixels = TF.pil_to_tensor(image).float()  # (3, H, W), 0..255
        top, left = self._crop_origin(labels, generator)
        pixels = pixels[:, top : top + self.crop, left : left + self.crop]
        labels = labels[top : top + self.crop, left : left + self.crop]
        if float(torch.rand((), generator=generator)) < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        if self.photometric:
            pixels = self._distort(pixels, generator)
        pixels = TF.normalize(pixels / 255.0, IMAGENET_MEAN, IMAGENET_STD)
        pad_h, pad_w = self.crop - pixels.shape[1], self.crop - pixels.shape[2]
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h), value=0.0)
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return pixels, labels

    def _crop_origin(self, labels: torch.Tensor, generator: torch.Generator) -> tuple[int, int]:
        """A random crop origin; up to 10 draws while one class covers more than `cat_max_ratio` of it."""
        height, width = labels.shape
        origin = (0, 0)
        for _ in range(10):
            top = int(torch.randint(0, max(height - self.crop, 0) + 1, (), generator=generator))
            left = int(torch.randint(0, max(width - self.crop, 0) + 1, (), generator=generator))
            origin = (top, left)
            window = labels[top : top + self.crop, left : left + self.crop]
            counts = torch.bincount(window[window != self.ignore_index].flatten())
            counts = counts[counts > 0]
            if self.cat_max_ratio >= 1.0 or (
                len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio
            ):
                break
        return origin

    @staticmethod
    def _distort(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation, hue, each applied with p 0.5 (values 0..255)."""
        if float(torch.rand((), generator=generator)) < 0.5:
            pixels = (pixels + _uniform(generator, -32, 32)).clamp(0, 255)
        if float(torch.rand((), generator=generator)) < 0.5:
            pixels = (pixels * _uniform(generator, 0.5, 1.5)).clamp(0, 255)
        saturate = float(torch.rand((), generator=generator)) < 0.5
        saturation = _uniform(generator, 0.5, 1.5)
        shift = float(torch.rand((), generator=generator)) < 0.5
        hue = _uniform(generator, -0.1, 0.1)
        if not (saturate or shift):
            return pixels
        # saturation and hue on a uint8 PIL image: torchvision's tensor hue is ~40x slower at these sizes
        image = TF.to_pil_image(pixels.round().to(torch.uint8))
        if saturate:
            image = TF.adjust_saturation(image, saturation)
        if shift:
            image = TF.adjust_hue(image, hue)
        return TF.pil_to_tensor(image).float()


class StepDataset(Dataset):
    """Sample `k` of an endless stream: epoch k // N visits the images in a (seed, epoch)-seeded order.

    Each sample's augmentation has its own generator seeded by (seed, k), so a run resumed at any
    step sees exactly the samples it would have seen, whatever the number of loader workers.
    """

    def __init__(self, dataset: Any, transform: Any, seed: int, start: int, stop: int) -> None:
        if len(dataset) == 0:
            raise ValueError("the training split holds no images")
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        self.start, self.stop = int(start), int(stop)
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def image_index(self, sample: int) -> int:
        """The dataset index of stream sample `sample`."""
        epoch, position = divmod(sample, len(self.dataset))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))}
        return int(self._orders[epoch][position])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.start + int(index)
        image, mask = self.dataset.load(self.image_index(sample))
        state = np.random.SeedSequence([self.seed, sample]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state) & (2**63 - 1))
        pixels, labels = self.transform(image, mask, generator)
        return pixels, labels.to(torch.int64)


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


@torch.no_grad()
def slide_scores(model: Any, image: torch.Tensor, window: int, stride: int, patch: int) -> torch.Tensor:
    """Scores (C, H, W) of one normalised image (3, H, W) averaged over `window` windows `stride` apart.

    `model` maps a (1, 3, h, w) crop padded to whole `patch`es to (1, C, h, w) scores: the fine-tuned
    model's logits here, open-vocabulary cosines in `protocols/openvocab.py`.
    """
    _, height, width = image.shape
    total = count = None
    for top in _window_starts(height, window, stride):
        for left in _window_starts(width, window, stride):
            crop = image[:, top : top + window, left : left + window]
            h, w = crop.shape[1:]
            padded = F.pad(crop, (0, -w % patch, 0, -h % patch))  # to whole patches; the padding is cut off
            logits = model(padded[None]).float()[0, :, :h, :w]  # (C, h, w)
            if total is None:
                total = logits.new_zeros(logits.shape[0], height, width)
                count = logits.new_zeros(1, height, width)
            total[:, top : top + h, left : left + w] += logits
            count[:, top : top + h, left : left + w] += 1
    return total / count


@torch.no_grad()
def predict_probabilities(
    model: Any,
    image: Image.Image,
    out_size: tuple[int, int],
    *,
    scale: int,
    window: int,
    stride: int,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """Class probabilities (C, H, W) at `out_size` (H, W), averaged over `scales` (x `scale` short side) and flips."""
    total = None
    runs = 0
    patch = int(model.patch_size)
    for factor in scales:
        resized = short_side_resize(image, max(patch, round(scale * factor)))
        pixels = TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD).to(device)
        for flipped in (False, True) if flip else (False,):
            with autocast(device, precision):
                logits = slide_scores(model, pixels.flip(-1) if flipped else pixels, window, stride, patch)
            logits = logits.flip(-1) if flipped else logits
            logits = F.interpolate(logits[None].float(), size=out_size, mode="bilinear", align_corners=False)[
                0
            ]
            probabilities = logits.softmax(0)
            total = probabilities if total is None else total + probabilities
            runs += 1
    return total / runs
