"""Linear segmentation probe on frozen patch features (the Leopart / NeCo recipe).

A 1x1 conv (D -> C) on patch tokens bilinearly upsampled to `target_size`^2, cross-entropy
against masks nearest-resized to `target_size`^2. The conv is applied before the upsampling: for
bilinear interpolation (weights summing to 1) and a 1x1 conv the two orders give identical logits,
and the conv on the small grid is (h*w / target_size^2) times cheaper.

Features are computed once and cached (when they fit in `cache_gb`) from un-augmented, square-
resized training images; `augment=True` recomputes them every epoch with the published joint
RandomResizedCrop(scale 0.8-1) + flip instead (much slower, exact to the published recipe).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from neco.evaluation.common import (
    EvalOutput,
    ExampleKeeper,
    check_divisible,
    iterate,
    make_loader,
    resize_masks,
    resolve_device,
)
from neco.evaluation.metrics import ConfusionMatrix
from neco.evaluation.transforms import EvalResize, LinearTrainTransform

__all__ = ["LinearConfig", "LinearProbe", "FeatureCache", "cache_features", "run_linear"]

_CACHE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class LinearConfig:
    """Settings of the protocol; defaults are the published ones."""

    input_size: int = 448
    target_size: int = 100
    epochs: int = 25
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    lr_step_epoch: int = 20
    lr_gamma: float = 0.1
    augment: bool = False
    cache_gb: float = 16.0
    cache_dtype: str = "fp16"
    feature_batch_size: int = 16
    train_fraction: float = 1.0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.cache_dtype not in _CACHE_DTYPES:
            raise ValueError(
                f"`cache_dtype` must be one of {sorted(_CACHE_DTYPES)} but is {self.cache_dtype!r}"
            )
        for name in ("input_size", "target_size", "epochs", "batch_size", "feature_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0 but is {self.lr}")


class LinearProbe(nn.Module):
    """1x1 conv D -> C, then bilinear upsampling of the logits to (target, target)."""

    def __init__(self, dim: int, num_classes: int, target_size: int = 100) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.target_size = target_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, target, target) from features (B, D, h, w)."""
        logits = self.conv(features)  # (B, C, h, w)
        return F.interpolate(
            logits, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False
        )


class FeatureCache:
    """Features (N, D, h, w) and target-size masks (N, T, T) of a whole split, held in CPU memory."""

    def __init__(self, features: torch.Tensor, masks: torch.Tensor) -> None:
        self.features, self.masks = features, masks

    def __len__(self) -> int:
        return self.features.shape[0]


@torch.no_grad()
def cache_features(
    features_fn: Any,
    loader: Any,
    num_images: int,
    target_size: int,
    dtype: torch.dtype,
    budget_bytes: float,
    progress: bool,
) -> FeatureCache | None:
    """Run `features_fn` over the loader once into a cache; None when it would exceed `budget_bytes`."""
    cache: FeatureCache | None = None
    row = 0
    for images, masks, _ in iterate(loader, progress, "linear: caching features"):
        features = features_fn(images)
        if cache is None:
            _, dim, h, w = features.shape
            need = num_images * dim * h * w * torch.finfo(dtype).bits // 8 + num_images * target_size**2
            if need > budget_bytes:
                return None
            cache = FeatureCache(
                torch.empty(num_images, dim, h, w, dtype=dtype),
                torch.empty(num_images, target_size, target_size, dtype=torch.uint8),
            )
        n = features.shape[0]
        cache.features[row : row + n] = features.cpu().to(dtype)
        # uint8 holds class ids and the ignore label (<= 255)
        cache.masks[row : row + n] = resize_masks(masks, target_size).clamp(0, 255).to(torch.uint8)
        row += n
    return cache


def _train_batches(
    config: LinearConfig, cache: FeatureCache | None, features_fn: Any, train: Any, epoch: int, progress: bool
):
    """Yield (features, masks at target size) minibatches for one epoch."""
    if cache is not None:
        order = torch.randperm(
            len(cache), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch)
        )
        for start in range(0, len(cache), config.batch_size):
            idx = order[start : start + config.batch_size]
            yield cache.features[idx].float(), cache.masks[idx].to(torch.int64)
        return
    transform = LinearTrainTransform(config.input_size) if config.augment else EvalResize(config.input_size)
    loader = make_loader(
        train,
        transform,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        seed=config.seed,
        epoch=epoch,
        shuffle=True,
    )
    for images, masks, _ in iterate(loader, progress, f"linear epoch {epoch + 1}"):
        yield features_fn(images).cpu(), resize_masks(masks, config.target_size)


def run_linear(
    features_fn: Any,
    train_set: Any,
    val_set: Any,
    config: LinearConfig | None = None,
    *,
    patch_size: int,
    progress: bool = True,
    num_examples: int = 4,
) -> EvalOutput:
    """Train the probe on `train_set` features and report mIoU on the full `val_set`."""
    config = config or LinearConfig()
    config.validate()
    check_divisible(config.input_size, patch_size)
    device = resolve_device(config.device)
    train = train_set.fraction(config.train_fraction, seed=config.seed)
    num_classes, ignore = val_set.num_classes, val_set.ignore_index
    timings: dict[str, float] = {}
    start = time.perf_counter()
    cache = None
    if not config.augment:
        loader = make_loader(
            train,
            EvalResize(config.input_size),
            batch_size=config.feature_batch_size,
            num_workers=config.num_workers,
            seed=config.seed,
        )
        cache = cache_features(
            features_fn,
            loader,
            len(train),
            config.target_size,
            _CACHE_DTYPES[config.cache_dtype],
            config.cache_gb * 2**30,
            progress,
        )
    timings["cache_s"] = time.perf_counter() - start

    torch.manual_seed(config.seed)
    probe: LinearProbe | None = None
    optimizer = scheduler = None
    losses: list[float] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        total, count = 0.0, 0
        for features, masks in _train_batches(config, cache, features_fn, train, epoch, progress):
            if probe is None:
                probe = LinearProbe(features.shape[1], num_classes, config.target_size).to(device)
                optimizer = torch.optim.SGD(
                    probe.parameters(),
                    lr=config.lr,
                    momentum=config.momentum,
                    weight_decay=config.weight_decay,
                )
                scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_epoch, config.lr_gamma)
            logits = probe(features.to(device))
            loss = F.cross_entropy(
                logits, masks.to(device), ignore_index=ignore if ignore is not None else -100
            )
            if not torch.isfinite(loss):  # a batch with only ignore pixels has no loss to learn from
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * features.shape[0], count + features.shape[0]
        losses.append(total / max(count, 1))
        scheduler.step()
    timings["train_s"] = time.perf_counter() - start
    if probe is None:
        raise ValueError("the training set yielded no images for the linear probe")

    start = time.perf_counter()
    probe.eval()
    confusion = ConfusionMatrix(num_classes, ignore, device=device)
    keeper = ExampleKeeper(num_examples)
    val_loader = make_loader(
        val_set,
        EvalResize(config.input_size),
        batch_size=config.feature_batch_size,
        num_workers=config.num_workers,
        seed=config.seed,
    )
    with torch.no_grad():
        for images, masks, _ in iterate(val_loader, progress, "linear: validation"):
            features = features_fn(images)
            pred = probe(features.to(device)).argmax(dim=1)  # (B, T, T)
            target = resize_masks(masks, config.target_size).to(device)
            confusion.update(pred, target)
            keeper.offer(images=images, masks=target, predictions=pred, features=features)
    timings["eval_s"] = time.perf_counter() - start

    settings = asdict(config)
    settings.update(
        {
            "device": str(device),
            "feature_cache": "none (features recomputed every epoch)"
            if cache is None
            else f"cached once ({config.cache_dtype})",
            "train_augmentation": LinearTrainTransform(config.input_size).describe()
            if config.augment
            else "none (square resize)",
            "head": "1x1 conv D->C (conv before bilinear upsampling: identical logits)",
            "eval_resolution": f"{config.target_size}x{config.target_size} (masks nearest-resized)",
            "val_images": "full validation set, no dropped batch",
        }
    )
    result = {
        "protocol": "linear",
        "settings": settings,
        "dataset": {"train": train.describe(), "val": val_set.describe()},
        "metrics": confusion.summary(val_set.class_names),
        "train_loss_per_epoch": losses,
        "timings": timings,
    }
    return EvalOutput(result=result, examples=keeper.examples())
