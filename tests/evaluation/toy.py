"""A tiny colour-coded segmentation dataset and an oracle feature function, for tests and benchmarks.

Each class has a distinct colour; an image is a background of class 0 with random rectangles of
other classes, a thin ignore band around some rectangles, and pixel noise. Because the colour
encodes the class, `oracle_features` can recover the label of every patch from the (augmented,
normalised) image alone, which tests the whole data path (joint transforms included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from neco.data.base import SegmentationDataset
from neco.evaluation import EvalData, Evaluation, Features, evaluate

__all__ = ["TOY_PALETTE", "write_toy_dataset", "oracle_features", "random_features", "run_protocol"]

TOY_PALETTE = np.array(
    [[20, 20, 20], [230, 30, 30], [30, 200, 30], [40, 40, 220], [230, 230, 40], [40, 220, 220]],
    dtype=np.float32,
)


def write_toy_dataset(
    root: str | Path,
    split: str,
    num_images: int,
    *,
    num_classes: int = 4,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    ignore_index: int = 255,
) -> SegmentationDataset:
    """Write `num_images` PNG pairs under root/split and return them as a SegmentationDataset."""
    if not 2 <= num_classes <= len(TOY_PALETTE):
        raise ValueError(f"`num_classes` must be in [2, {len(TOY_PALETTE)}] but is {num_classes}")
    rng = np.random.default_rng(seed)
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    pairs = []
    for i in range(num_images):
        mask = np.zeros((height, width), dtype=np.uint8)
        colour_ids = np.zeros((height, width), dtype=np.int64)
        for _ in range(int(rng.integers(2, 5))):
            cls = int(rng.integers(1, num_classes))
            h, w = (
                int(rng.integers(height // 4, height // 2 + 1)),
                int(rng.integers(width // 4, width // 2 + 1)),
            )
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            mask[y : y + h, x : x + w] = cls
            colour_ids[y : y + h, x : x + w] = cls
            if rng.random() < 0.5:  # a 1-pixel ignore band on the rectangle's border
                mask[y, x : x + w] = mask[y + h - 1, x : x + w] = ignore_index
                mask[y : y + h, x] = mask[y : y + h, x + w - 1] = ignore_index
        pixels = TOY_PALETTE[colour_ids] + rng.normal(0, 8, size=(height, width, 3))
        image_path, mask_path = folder / f"{i:04d}.png", folder / f"{i:04d}_label.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(image_path)
        Image.fromarray(mask, mode="L").save(mask_path)
        pairs.append((image_path, mask_path))
    return SegmentationDataset(
        pairs,
        name="toy",
        split=split,
        class_names=[f"class{c}" for c in range(num_classes)],
        ignore_index=ignore_index,
    )


def oracle_features(
    images: torch.Tensor,
    patch_size: int,
    num_classes: int,
    *,
    dim: int = 16,
    noise: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """Per-patch class fractions read from the colours, plus Gaussian noise: (B, dim, H/p, W/p)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (images.cpu() * std + mean) * 255.0  # (B, 3, H, W)
    palette = torch.from_numpy(TOY_PALETTE[:num_classes])  # (C, 3)
    dist = ((rgb[:, None] - palette.view(1, -1, 3, 1, 1)) ** 2).sum(dim=2)  # (B, C, H, W)
    one_hot = F.one_hot(dist.argmin(dim=1), num_classes).permute(0, 3, 1, 2).float()  # (B, C, H, W)
    fractions = F.avg_pool2d(one_hot, patch_size)  # (B, C, h, w)
    b, _, h, w = fractions.shape
    generator = torch.Generator().manual_seed(seed)
    features = noise * torch.randn(b, dim, h, w, generator=generator)
    features[:, :num_classes] += fractions
    return features


def random_features(images: torch.Tensor, patch_size: int, *, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Gaussian features that carry no information about the image: (B, dim, H/p, W/p)."""
    generator = torch.Generator().manual_seed(seed + int(images.shape[0]))
    b, _, height, width = images.shape
    return torch.randn(b, dim, height // patch_size, width // patch_size, generator=generator)


def run_protocol(
    name: str,
    grid_fn,
    patch_size: int,
    val,
    train=None,
    settings=None,
    *,
    attention_fn=None,
    num_register_tokens: int = 0,
    **run,
) -> Evaluation:
    """Run protocol `name` through `evaluate` on a feature function of images (quiet, no workers)."""
    run.setdefault("progress", False)
    run.setdefault("num_workers", 0)
    features = Features(
        grid_fn, patch_size, attention_fn=attention_fn, num_register_tokens=num_register_tokens
    )
    return evaluate(name, features, EvalData(val=val, train=train), settings, **run)
