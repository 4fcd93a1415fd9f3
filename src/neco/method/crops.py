"""Multi-crop views of one image and the overlap boxes between every global crop and every other crop.

Geometry conventions (continuous pixel coordinates, pixel `i` covers `[i, i + 1)`):
- a crop is a box `[x1, y1, x2, y2]` in image pixels, resized to its output size `(H_v, W_v)`;
- a point `x` in crop v's resized frame lies at image pixel `x1_v + x * (x2_v - x1_v) / W_v`;
- `boxes[g, v, 0]` is `crop_g ∩ crop_v` in g's resized frame and `boxes[g, v, 1]` the same region in
  v's resized frame, so both boxes show the same image content. Divided by the patch size they are
  token-grid coordinates for `roi_align(aligned=True)`.

Shape legend: G = global crops, V = all crops (globals first), B = batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision.transforms import functional as TF

from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from neco.utils.logging import get_logger

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCropSampler",
    "collate_multicrop",
    "overlap_boxes",
    "sample_crop_box",
]


def _pair(size: int | Sequence[int], option: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`{option}` must be a positive int or an (height, width) pair but is {size}")
    return size  # type: ignore[return-value]


def _range(value: Sequence[float], option: str, low: float = 0.0) -> tuple[float, float]:
    value = tuple(float(v) for v in value)
    if len(value) != 2 or not low < value[0] <= value[1]:
        raise ValueError(f"`{option}` must be a (min, max) pair with {low} < min <= max but is {value}")
    return value  # type: ignore[return-value]


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator))


def _bernoulli(p: float, generator: torch.Generator | None) -> bool:
    return float(torch.rand(1, generator=generator)) < p


def sample_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """One RandomResizedCrop box `(x1, y1, x2, y2)` in image pixels, with torchvision's distribution.

    Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`, 10 tries, then a centre crop.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def _intersection_area(box: Tensor, others: Tensor) -> Tensor:
    """Area of `box (4,)` ∩ each of `others (K, 4)` -> (K,)."""
    left_top = torch.maximum(box[:2], others[:, :2])
    right_bottom = torch.minimum(box[2:], others[:, 2:])
    wh = (right_bottom - left_top).clamp_min(0)
    return wh[:, 0] * wh[:, 1]


def overlap_boxes(crops: Tensor, sizes: Sequence[tuple[int, int]], num_global: int) -> tuple[Tensor, Tensor]:
    """Overlap boxes of every global crop g with every crop v in both resized frames.

    Args:
        crops: (V, 4) crop boxes `[x1, y1, x2, y2]` in image pixels, globals first.
        sizes: V output sizes `(height, width)`.
        num_global: G, the number of global crops at the front of `crops`.

    Returns:
        boxes (G, V, 2, 4) float: `[g, v, 0]` in g's frame, `[g, v, 1]` in v's frame (zeros where invalid);
        valid (G, V) bool: False for v == g and for empty overlaps.
    """
    crops = crops.to(torch.float64)
    num_views = crops.shape[0]
    if len(sizes) != num_views:
        raise ValueError(f"`sizes` must have one entry per crop ({num_views}) but has {len(sizes)}")
    out_wh = torch.tensor([[w, h] for h, w in sizes], dtype=torch.float64)  # (V, 2)
    origin = crops[:, :2]  # (V, 2)
    scale = out_wh / (crops[:, 2:] - crops[:, :2])  # (V, 2) resized pixels per image pixel
    left_top = torch.maximum(crops[:num_global, None, :2], crops[None, :, :2])  # (G, V, 2)
    right_bottom = torch.minimum(crops[:num_global, None, 2:], crops[None, :, 2:])  # (G, V, 2)
    valid = ((right_bottom - left_top) > 0).all(dim=-1)  # (G, V)
    valid &= ~torch.eye(num_global, num_views, dtype=torch.bool)
    in_g = torch.cat(
        [
            (left_top - origin[:num_global, None]) * scale[:num_global, None],
            (right_bottom - origin[:num_global, None]) * scale[:num_global, None],
        ],
        dim=-1,
    )  # (G, V, 4)
    in_v = torch.cat(
        [(left_top - origin[None]) * scale[None], (right_bottom - origin[None]) * scale[None]], dim=-1
    )  # (G, V, 4)
    boxes = torch.stack([in_g, in_v], dim=2)  # (G, V, 2, 4)
    boxes = torch.where(valid[..., None, None], boxes, torch.zeros_like(boxes))
    return boxes.to(torch.float32), valid


class MultiCropSampler:
    """Sample `num_global` + `num_local` RandomResizedCrop views of an image, with their overlap boxes.

    Every crop after the first must overlap every already-sampled global crop by more than
    `min_overlap` of the image area (`min_overlap_second_global` for the later global crops). At most
    `max_tries` candidates are drawn per crop; when none satisfies the constraint the best candidate is
    kept, `fallback_count` grows by one, a warning is logged once, and empty overlaps are marked
    invalid. Photometric augmentation per crop: ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2,
    Gaussian blur radius U[0.1, 2.0] p=0.5; then ImageNet normalisation. No flip.

    Example:
        >>> sampler = MultiCropSampler(global_size=224, local_size=98)
        >>> sample = sampler(image)  # {"views": [...6 tensors], "boxes": (2, 6, 2, 4), "valid": (2, 6)}
    """

    def __init__(
        self,
        global_size: int | tuple[int, int] = 224,
        local_size: int | tuple[int, int] = 98,
        num_global: int = 2,
        num_local: int = 4,
        global_scale: Sequence[float] = (0.25, 1.0),
        local_scale: Sequence[float] = (0.05, 0.25),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        min_overlap: float = 0.01,
        min_overlap_second_global: float = 0.02,
        max_tries: int = 100,
        photometric: bool = True,
    ) -> None:
        self.global_size = _pair(global_size, "global_size")
        self.local_size = _pair(local_size, "local_size")
        if num_global < 1:
            raise ValueError(f"`num_global` must be >= 1 but is {num_global}")
        if num_local < 0:
            raise ValueError(f"`num_local` must be >= 0 but is {num_local}")
        self.num_global = int(num_global)
        self.num_local = int(num_local)
        self.global_scale = _range(global_scale, "global_scale")
        self.local_scale = _range(local_scale, "local_scale")
        self.ratio = _range(ratio, "ratio")
        for name, value in (
            ("min_overlap", min_overlap),
            ("min_overlap_second_global", min_overlap_second_global),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1) but is {value}")
        self.min_overlap = float(min_overlap)
        self.min_overlap_second_global = float(min_overlap_second_global)
        if max_tries < 1:
            raise ValueError(f"`max_tries` must be >= 1 but is {max_tries}")
        self.max_tries = int(max_tries)
        self.photometric = bool(photometric)
        self.fallback_count = 0
        self._warned = False

    @property
    def num_views(self) -> int:
        """V, the number of crops per image (globals first)."""
        return self.num_global + self.num_local

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Output size `(height, width)` of each of the V crops."""
        return [self.global_size] * self.num_global + [self.local_size] * self.num_local

    def sample_boxes(
        self, width: int, height: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, int]:
        """Crop boxes (V, 4) in image pixels satisfying the overlap constraint, and the number of fallbacks."""
        image_area = float(width * height)
        crops: list[tuple[int, int, int, int]] = []
        fallbacks = 0
        for index in range(self.num_views):
            is_global = index < self.num_global
            scale = self.global_scale if is_global else self.local_scale
            num_previous_globals = min(index, self.num_global)
            threshold = (self.min_overlap_second_global if is_global else self.min_overlap) * image_area
            best, best_score = None, -math.inf
            for _ in range(self.max_tries if num_previous_globals else 1):
                candidate = sample_crop_box(width, height, scale, self.ratio, generator)
                if num_previous_globals == 0:
                    best, best_score = candidate, math.inf
                    break
                areas = _intersection_area(
                    torch.tensor(candidate, dtype=torch.float64),
                    torch.tensor(crops[:num_previous_globals], dtype=torch.float64),
                )
                # The worst overlap decides; the margin over the threshold ranks fallback candidates.
                score = float(areas.min()) - threshold
                if score > best_score:
                    best, best_score = candidate, score
                if score > 0:
                    break
            if best_score <= 0:
                fallbacks += 1
            crops.append(best)  # type: ignore[arg-type]
        return torch.tensor(crops, dtype=torch.float32), fallbacks

    def _photometric(self, image: Image.Image, generator: torch.Generator | None) -> Image.Image:
        if _bernoulli(0.8, generator):
            # ColorJitter(0.8, 0.8, 0.8, 0.2): factors and a random order, as torchvision samples them.
            order = torch.randperm(4, generator=generator).tolist()
            brightness = _uniform(0.2, 1.8, generator)
            contrast = _uniform(0.2, 1.8, generator)
            saturation = _uniform(0.2, 1.8, generator)
            hue = _uniform(-0.2, 0.2, generator)
            for op in order:
                if op == 0:
                    image = TF.adjust_brightness(image, brightness)
                elif op == 1:
                    image = TF.adjust_contrast(image, contrast)
                elif op == 2:
                    image = TF.adjust_saturation(image, saturation)
                else:
                    image = TF.adjust_hue(image, hue)
        if _bernoulli(0.2, generator):
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if _bernoulli(0.5, generator):
            image = image.filter(ImageFilter.GaussianBlur(radius=_uniform(0.1, 2.0, generator)))
        return image

    def __call__(self, image: Image.Image, rng: torch.Generator | None = None) -> dict[str, Any]:
        """Views, overlap boxes and validity for one image; `rng` makes the draw reproducible.

        Returns:
            dict with `views` (list of V tensors (3, H_v, W_v), ImageNet-normalised), `boxes` (G, V, 2, 4),
            `valid` (G, V) bool, `crops` (V, 4) crop boxes in image pixels and `fallbacks` (int).
        """
        if not isinstance(image, Image.Image):
            raise TypeError(f"`image` must be a PIL.Image but is {type(image).__name__}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        crops, fallbacks = self.sample_boxes(width, height, rng)
        if fallbacks:
            self.fallback_count += fallbacks
            if not self._warned:
                self._warned = True
                get_logger("neco.method.crops").warning(
                    f"MultiCropSampler: no crop satisfying the overlap constraint within max_tries={self.max_tries} "
                    f"for a {width}x{height} image; kept the best candidate (counted in `fallback_count`, "
                    "empty overlaps are marked invalid). Shown once."
                )
        views = []
        for box, (out_h, out_w) in zip(crops.tolist(), self.sizes):
            view = image.resize((out_w, out_h), resample=Image.BILINEAR, box=tuple(box))
            if self.photometric:
                view = self._photometric(view, rng)
            tensor = TF.normalize(TF.to_tensor(view), IMAGENET_MEAN, IMAGENET_STD)
            views.append(tensor)
        boxes, valid = overlap_boxes(crops, self.sizes, self.num_global)
        return {"views": views, "boxes": boxes, "valid": valid, "crops": crops, "fallbacks": fallbacks}


def collate_multicrop(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples of `MultiCropSampler`: views (list of V tensors (B, 3, H_v, W_v)), boxes (B, G, V, 2, 4), valid (B, G, V)."""
    if len(samples) == 0:
        raise ValueError("`samples` must hold at least one sample but is empty")
    num_views = len(samples[0]["views"])
    batch: dict[str, Any] = {
        "views": [torch.stack([s["views"][v] for s in samples]) for v in range(num_views)],
        "boxes": torch.stack([s["boxes"] for s in samples]),
        "valid": torch.stack([s["valid"] for s in samples]),
    }
    if all("crops" in s for s in samples):
        batch["crops"] = torch.stack([s["crops"] for s in samples])
    if all("fallbacks" in s for s in samples):
        batch["fallbacks"] = torch.tensor([int(s["fallbacks"]) for s in samples], dtype=torch.int64)
    return batch
