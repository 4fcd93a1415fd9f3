"""Hummingbird memory bank: soft patch labels, rare-class patch selection and bounded storage.

Shapes: B images, D feature dim, (h, w) patch grid, N = h*w patches, C classes, p patch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["patch_label_histograms", "select_rare_patches", "MemoryBank"]


def patch_label_histograms(
    masks: torch.Tensor, grid: tuple[int, int], num_classes: int, ignore_index: int | None
) -> torch.Tensor:
    """Class histogram of the pixels of every patch, ignore pixels excluded: (B, h*w, C) float32 counts.

    The mask is split into the (h, w) grid of `H // h` x `W // w` pixel patches (the remainder on the
    bottom/right is dropped, as the patch embedding drops it).
    """
    if masks.ndim != 3:
        raise ValueError(f"`masks` must be (B, H, W) but has shape {tuple(masks.shape)}")
    b, height, width = masks.shape
    h, w = grid
    ph, pw = height // h, width // w
    if ph < 1 or pw < 1:
        raise ValueError(f"mask size {height}x{width} is smaller than the patch grid {h}x{w}")
    masks = masks[:, : h * ph, : w * pw].to(torch.int64)
    invalid = (masks < 0) | (masks >= num_classes)
    unexpected = invalid if ignore_index is None else invalid & (masks != ignore_index)
    if bool(unexpected.any()):
        bad = int(masks[unexpected][0])
        raise ValueError(
            f"mask values must be in [0, {num_classes}) or the ignore index {ignore_index} but include {bad}"
        )
    labels = masks.masked_fill(invalid, num_classes)  # an extra bin that is dropped below
    # (B*h*w, ph*pw): the pixels of every patch, in row-major patch order
    patches = labels.reshape(b, h, ph, w, pw).transpose(2, 3).reshape(b * h * w, ph * pw)
    offsets = torch.arange(b * h * w, device=masks.device)[:, None] * (num_classes + 1)
    counts = torch.bincount((patches + offsets).reshape(-1), minlength=b * h * w * (num_classes + 1))
    return counts.reshape(b, h * w, num_classes + 1)[..., :num_classes].float()  # (B, N, C)


def select_rare_patches(
    histogram: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of at most `k` labelled patches of one image, preferring patches of rare classes.

    Score of a patch = sum over the classes present in it of the number of patches of the image
    containing that class, times U(0, 1) noise; the `k` lowest scores are kept. Patches with no
    labelled pixel (all ignore) are never kept.
    """
    if histogram.ndim != 2:
        raise ValueError(f"`histogram` must be (N, C) but has shape {tuple(histogram.shape)}")
    present = (histogram > 0).float()  # (N, C)
    patches_per_class = present.sum(dim=0)  # (C,)
    noise = torch.rand(histogram.shape[0], generator=generator, device="cpu").to(histogram.device)
    score = (present * patches_per_class).sum(dim=1) * noise
    labelled = histogram.sum(dim=1) > 0
    score = torch.where(labelled, score, torch.full_like(score, float("inf")))
    keep = min(int(k), int(labelled.sum()))
    return torch.topk(score, keep, largest=False).indices


class MemoryBank:
    """Preallocated (capacity, D) unit feature vectors and (capacity, C) soft labels (fractions, fp16).

    Features are stored in `dtype` (float32 or float16). Labels are the patch histograms divided by
    their sum; float16 keeps them small (10.24 M x 150 classes = 3 GB) and exact to ~1e-3.
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        num_classes: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"`capacity` must be >= 1 but is {capacity}")
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"`dtype` must be torch.float32 or torch.float16 but is {dtype}")
        self.features = torch.empty(capacity, dim, dtype=dtype, device=device)
        self.labels = torch.empty(capacity, num_classes, dtype=torch.float16, device=device)
        self.capacity = capacity  # rows allocated
        self.size = 0  # rows filled

    def add(self, features: torch.Tensor, histograms: torch.Tensor, normalised: bool = False) -> None:
        """Append (n, D) features (L2-normalised here unless `normalised`) and (n, C) label histograms."""
        n = features.shape[0]
        if self.size + n > self.capacity:
            raise ValueError(
                f"memory bank overflow: {self.size} + {n} rows exceed the capacity {self.capacity}"
            )
        rows = slice(self.size, self.size + n)  # slice assignment casts to the bank's dtype and device
        self.features[rows] = features if normalised else F.normalize(features.float(), dim=-1)
        self.labels[rows] = histograms / histograms.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        self.size += n

    def stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the filled rows: features (M, D) and labels (M, C)."""
        return self.features[: self.size], self.labels[: self.size]

    def nbytes(self) -> int:
        """Bytes allocated for features and labels."""
        return sum(t.element_size() * t.numel() for t in (self.features, self.labels))
