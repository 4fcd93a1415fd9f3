"""Linear segmentation probe on frozen patch features (the Leopart / NeCo recipe).

A 1x1 conv (D -> C) on patch tokens bilinearly upsampled to `target_size`^2, cross-entropy
against masks nearest-resized to `target_size`^2. The conv is applied before the upsampling: for
bilinear interpolation (weights summing to 1) and a 1x1 conv the two orders give identical logits,
and the conv on the small grid is (h*w / target_size^2) times cheaper.

By default (`train_features="augmented"`, the published recipe) the probe trains on joint
RandomResizedCrop(scale 0.8-1) + flip crops whose features are recomputed every epoch.
`train_features="cached"` is the fast shortcut: features of un-augmented, square-resized training
images computed once and held in memory (when they fit in `cache_gb`; else recomputed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from neco.evaluation.blocks.file_sets import select_subset
from neco.evaluation.blocks.metrics import ConfusionMatrix
from neco.evaluation.blocks.transforms import EvalResize, LinearTrainTransform, resize_ids
from neco.evaluation.features import Features
from neco.evaluation.options import option, parse_fraction
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol

__all__ = ["LinearSettings", "Linear", "LinearProbe", "cache_features"]

_CACHE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class LinearSettings:
    """Settings of the protocol; defaults are the published ones."""

    epochs: int = option(25, "probe training epochs", minimum=1)
    lr: float = option(0.01, "SGD learning rate", minimum=0, exclusive_minimum=True)
    momentum: float = option(0.9, "SGD momentum", minimum=0)
    weight_decay: float = option(1e-4, "SGD weight decay", minimum=0)
    probe_batch_size: int = option(128, "probe minibatch size", minimum=1)
    lr_step_epoch: int = option(20, "epoch of the x0.1 learning-rate step", minimum=1)
    lr_gamma: float = option(0.1, "learning-rate factor at the step", minimum=0)
    target_size: int = option(100, "logit and mask resolution", minimum=1)
    train_features: str = option(
        "augmented",
        "published augmented crops (recomputed every epoch) or features cached once",
        choices=("augmented", "cached"),
    )
    cache_gb: float = option(16.0, "feature-cache budget in GiB for --train-features cached", minimum=0)
    cache_dtype: str = option("fp16", "feature-cache storage", choices=tuple(_CACHE_DTYPES))
    fraction: str = option("1", "seeded random fraction of the training set (1/128 ... 1)")
    split_seed: int = option(42, "seed of the training subset")

    def check(self) -> None:
        """Cross-field checks (the fraction's format)."""
        parse_fraction(self.fraction)


class LinearProbe(nn.Module):
    """1x1 conv D -> C, then bilinear upsampling of the logits to (target, target)."""

    def __init__(self, dim: int, num_classes: int, target_size: int = 100) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.target_size = target_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, target, target) from features (B, D, h, w)."""
        return F.interpolate(self.conv(features), size=self.target_size, mode="bilinear", align_corners=False)


@torch.no_grad()
def cache_features(
    features_fn: Any, batches: Any, num_images: int, settings: LinearSettings
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Features (N, D, h, w) and target-size uint8 masks (N, T, T) of a whole split, held in CPU memory.

    One pass of `features_fn` over (images, masks, dataset indices) batches, stored as
    `settings.cache_dtype`; None when the cache would exceed `settings.cache_gb`.
    """
    dtype, target_size = _CACHE_DTYPES[settings.cache_dtype], settings.target_size
    cache: tuple[torch.Tensor, torch.Tensor] | None = None
    for images, masks, indices in batches:
        features = features_fn(images)
        if cache is None:
            _, dim, h, w = features.shape
            need = num_images * dim * h * w * torch.finfo(dtype).bits // 8 + num_images * target_size**2
            if need > settings.cache_gb * 2**30:
                return None
            cache = (
                torch.empty(num_images, dim, h, w, dtype=dtype),
                torch.empty(num_images, target_size, target_size, dtype=torch.uint8),
            )
        cache[0][indices] = features.cpu().to(dtype)
        # uint8 holds class ids and the ignore label (<= 255)
        cache[1][indices] = resize_ids(masks, target_size).clamp(0, 255).to(torch.uint8)
    return cache


@register_protocol
class Linear(Protocol):
    """Linear segmentation probe on frozen patch features."""

    name = "linear"
    summary = "linear segmentation probe on frozen features"
    settings_class = LinearSettings
    needs_train = True
    input_size = 448

    def run(
        self, features: Features, data: EvalData, settings: LinearSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Train the probe on the training split and report mIoU on the full validation split."""
        train, subset = select_subset(
            data.train, parse_fraction(settings.fraction), settings.split_seed, "random"
        )
        val = data.val
        num_classes, ignore = val.num_classes, val.ignore_index
        augmented = settings.train_features == "augmented"
        transform = LinearTrainTransform(ctx.input_size) if augmented else EvalResize(ctx.input_size)
        cache = None
        if not augmented:
            with ctx.timer("cache"):
                batches = ctx.batches(train, "linear: caching features", transform)
                cache = cache_features(features, batches, len(train), settings)
            if cache is None:
                ctx.warn(
                    f"the feature cache would exceed --cache-gb {settings.cache_gb}: features recomputed every epoch"
                )

        def train_batches(epoch: int):
            """(features, masks at target size) minibatches of one epoch: from the cache, else computed."""
            if cache is not None:
                seed = torch.Generator().manual_seed(ctx.seed * 1000 + epoch)
                for idx in torch.randperm(len(cache[0]), generator=seed).split(settings.probe_batch_size):
                    yield cache[0][idx].float(), cache[1][idx].to(torch.int64)
                return
            desc, size = f"linear epoch {epoch + 1}", settings.probe_batch_size
            for images, masks, _ in ctx.batches(
                train, desc, transform, epoch=epoch, shuffle=True, batch_size=size
            ):
                yield features(images).cpu(), resize_ids(masks, settings.target_size)

        torch.manual_seed(ctx.seed)
        probe: LinearProbe | None = None
        optimizer = scheduler = None
        losses: list[float] = []
        with ctx.timer("train"):
            # without a cache every epoch has its own per-batch bar; with one, a bar over the epochs
            epochs = range(settings.epochs)
            for epoch in ctx.iterate(epochs, "linear probe epochs") if cache is not None else epochs:
                total, count = 0.0, 0
                for grids, masks in train_batches(epoch):
                    if probe is None:
                        probe = LinearProbe(grids.shape[1], num_classes, settings.target_size).to(ctx.device)
                        optimizer = torch.optim.SGD(
                            probe.parameters(),
                            lr=settings.lr,
                            momentum=settings.momentum,
                            weight_decay=settings.weight_decay,
                        )
                        scheduler = torch.optim.lr_scheduler.StepLR(
                            optimizer, settings.lr_step_epoch, settings.lr_gamma
                        )
                    logits = probe(grids.to(ctx.device))
                    loss = F.cross_entropy(
                        logits, masks.to(ctx.device), ignore_index=ignore if ignore is not None else -100
                    )
                    if not torch.isfinite(loss):  # a batch with only ignore pixels has no loss to learn from
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, count = total + loss.item() * grids.shape[0], count + grids.shape[0]
                losses.append(total / max(count, 1))
                scheduler.step()
        if probe is None:
            raise ValueError("the training set yielded no images for the linear probe")

        probe.eval()
        confusion = ConfusionMatrix(num_classes, ignore, device=ctx.device)
        keeper = ctx.keeper()
        with ctx.timer("eval"), torch.no_grad():
            for images, masks, _ in ctx.batches(val, "linear: validation"):
                grids = features(images)
                pred = probe(grids.to(ctx.device)).argmax(dim=1)  # (B, T, T)
                target = resize_ids(masks, settings.target_size).to(ctx.device)
                confusion.update(pred, target)
                keeper.offer(images=images, masks=target, predictions=pred, features=grids)
        resolved = {
            "subset": subset,
            "feature_cache": None if cache is None else settings.cache_dtype,
            "train_augmentation": transform.describe(),
        }
        metrics = {**confusion.summary(val.class_names), "train_loss_per_epoch": losses}
        return ProtocolOutput(metrics=metrics, settings=resolved, examples=keeper.examples())
