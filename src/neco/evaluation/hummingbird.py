"""Hummingbird dense nearest-neighbour retrieval (Balazevic et al., NeurIPS 2023), the NeCo headline.

Build: every augmented training image -> unit patch features + soft patch labels; keep
K = memory_size // (n_images * aug_epochs) patches per image (rare classes first). Query: every
validation patch takes its k nearest memory patches (cosine), weights softmax(cos / T), prediction
= weighted soft labels (B, C, h, w), bilinearly upsampled to the input size, argmax, mIoU.
Everything streams: only the bank (bounded by `memory_size`) and one batch are ever in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from neco.evaluation.common import (
    EvalOutput,
    ExampleKeeper,
    check_divisible,
    iterate,
    make_loader,
    resolve_device,
)
from neco.evaluation.memory_bank import MemoryBank, patch_label_histograms, select_rare_patches
from neco.evaluation.metrics import ConfusionMatrix
from neco.evaluation.search import SEARCH_BACKENDS, build_searcher
from neco.evaluation.transforms import EvalResize, HummingbirdTrainTransform

__all__ = [
    "HummingbirdConfig",
    "patches_per_image",
    "build_memory_bank",
    "predict_soft_labels",
    "evaluate_queries",
    "run_hummingbird",
]

_BANK_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class HummingbirdConfig:
    """Settings of the protocol; defaults are the published ones (input 504 for patch 14)."""

    input_size: int = 504
    memory_size: int = 10_240_000
    augmentation_epochs: int = 2
    k: int = 30
    temperature: float = 0.02
    train_fraction: float = 1.0
    seed: int = 0
    search: str = "auto"
    nlist: int | None = None
    nprobe: int = 16
    bank_dtype: str = "fp32"
    batch_size: int = 8
    num_workers: int = 0
    device: str = "auto"
    crop_scale: tuple[float, float] = (0.5, 2.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.1
    jitter_p: float = 0.5

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.search not in SEARCH_BACKENDS:
            raise ValueError(f"`search` must be one of {sorted(SEARCH_BACKENDS)} but is {self.search!r}")
        if self.bank_dtype not in _BANK_DTYPES:
            raise ValueError(f"`bank_dtype` must be one of {sorted(_BANK_DTYPES)} but is {self.bank_dtype!r}")
        for name in ("memory_size", "augmentation_epochs", "k", "batch_size", "input_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0 but is {self.temperature}")


def patches_per_image(memory_size: int, num_images: int, augmentation_epochs: int) -> int:
    """K = memory_size // (num_images * augmentation_epochs), the published per-image budget."""
    k = memory_size // (num_images * augmentation_epochs)
    if k < 1:
        raise ValueError(
            f"`memory_size` must be at least num_images * augmentation_epochs = "
            f"{num_images * augmentation_epochs} but is {memory_size}"
        )
    return k


@torch.no_grad()
def build_memory_bank(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_images: int,
    memory_size: int,
    augmentation_epochs: int,
    num_classes: int,
    ignore_index: int | None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> MemoryBank:
    """Fill a bank from a stream of (features (B, D, h, w), masks (B, H, W)) over all augmentation passes.

    `num_images` is the number of images per pass; the stream must yield num_images *
    augmentation_epochs items in total. The bank is allocated at the first batch with
    num_images * augmentation_epochs * min(K, h*w) rows.
    """
    k = patches_per_image(memory_size, num_images, augmentation_epochs)
    generator = torch.Generator().manual_seed(seed)
    bank: MemoryBank | None = None
    for features, masks in batches:
        b, dim, h, w = features.shape
        if bank is None:
            capacity = num_images * augmentation_epochs * min(k, h * w)
            bank = MemoryBank(capacity, dim, num_classes, dtype=dtype, device=device)
        hist = patch_label_histograms(
            masks.to(features.device), (h, w), num_classes, ignore_index
        )  # (B, N, C)
        # one contiguous, normalised copy per batch: per-image row gathers are then cheap
        tokens = F.normalize(features.flatten(2).transpose(1, 2).float(), dim=-1).contiguous()  # (B, N, D)
        for i in range(b):
            keep = select_rare_patches(hist[i], k, generator)
            bank.add(
                tokens[i, keep].to(bank.features.device),
                hist[i, keep].to(bank.features.device),
                normalised=True,
            )
    if bank is None:
        raise ValueError("the training set yielded no images for the memory bank")
    if bank.size == 0:
        raise ValueError("the memory bank is empty: every training patch holds only ignore pixels")
    return bank


@torch.no_grad()
def predict_soft_labels(
    features: torch.Tensor, bank: MemoryBank, searcher: Any, k: int = 30, temperature: float = 0.02
) -> torch.Tensor:
    """Class scores (B, C, h, w) of every query patch from its k nearest memory patches."""
    b, _, h, w = features.shape
    queries = F.normalize(
        features.flatten(2).transpose(1, 2).reshape(b * h * w, -1).float(), dim=-1
    )  # (Q, D)
    _, labels = bank.stored()
    sims, idx = searcher.search(queries, min(k, bank.size))  # (Q, k)
    sims, idx = sims.to(labels.device), idx.to(labels.device)
    missing = idx < 0  # approximate search may return fewer than k neighbours
    sims = sims.masked_fill(missing, float("-inf"))
    weights = torch.softmax(sims.float() / temperature, dim=1).nan_to_num(0.0)  # (Q, k)
    neighbour_labels = labels[idx.clamp_min(0)].float()  # (Q, k, C)
    scores = torch.einsum(
        "qk,qkc->qc", weights, neighbour_labels
    )  # q = query patch, k = neighbour, c = class
    return scores.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B, C, h, w)


@torch.no_grad()
def evaluate_queries(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    bank: MemoryBank,
    searcher: Any,
    confusion: ConfusionMatrix,
    *,
    k: int = 30,
    temperature: float = 0.02,
    keeper: ExampleKeeper | None = None,
    images: Iterable[torch.Tensor] | None = None,
) -> ConfusionMatrix:
    """Predict every (features, masks) batch, upsample bilinearly to the mask size, argmax, count."""
    image_iter = iter(images) if images is not None else None
    for features, masks in batches:
        scores = predict_soft_labels(features, bank, searcher, k, temperature)
        scores = F.interpolate(scores, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        pred = scores.argmax(dim=1)  # (B, H, W)
        confusion.update(pred, masks)
        if keeper is not None and image_iter is not None:
            keeper.offer(images=next(image_iter), masks=masks, predictions=pred, features=features)
    return confusion


def run_hummingbird(
    features_fn: Any,
    train_set: Any,
    val_set: Any,
    config: HummingbirdConfig | None = None,
    *,
    patch_size: int,
    progress: bool = True,
    num_examples: int = 4,
) -> EvalOutput:
    """Run the full protocol with `features_fn(images (B,3,S,S)) -> (B, D, S/p, S/p)` on two datasets."""
    config = config or HummingbirdConfig()
    config.validate()
    check_divisible(config.input_size, patch_size)
    device = resolve_device(config.device)
    train = train_set.fraction(config.train_fraction, seed=config.seed)
    num_classes, ignore = val_set.num_classes, val_set.ignore_index
    train_tf = HummingbirdTrainTransform(
        config.input_size, config.crop_scale, config.crop_ratio, config.jitter, config.jitter_p
    )
    timings: dict[str, float] = {}

    def train_stream():
        for epoch in range(config.augmentation_epochs):
            loader = make_loader(
                train,
                train_tf,
                batch_size=config.batch_size,
                num_workers=config.num_workers,
                seed=config.seed,
                epoch=epoch,
            )
            for images, masks, _ in iterate(loader, progress, f"memory bank pass {epoch + 1}"):
                yield features_fn(images), masks

    start = time.perf_counter()
    bank = build_memory_bank(
        train_stream(),
        num_images=len(train),
        memory_size=config.memory_size,
        augmentation_epochs=config.augmentation_epochs,
        num_classes=num_classes,
        ignore_index=train.ignore_index,
        dtype=_BANK_DTYPES[config.bank_dtype],
        device=device,
        seed=config.seed,
    )
    timings["build_s"] = time.perf_counter() - start
    bank_features, _ = bank.stored()
    searcher = build_searcher(bank_features, config.search, nlist=config.nlist, nprobe=config.nprobe)
    timings["index_s"] = time.perf_counter() - start - timings["build_s"]

    val_loader = make_loader(
        val_set,
        EvalResize(config.input_size),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        seed=config.seed,
    )
    keeper = ExampleKeeper(num_examples)
    confusion = ConfusionMatrix(num_classes, ignore, device=device)
    kept_images: list[torch.Tensor] = []

    def val_stream():
        for images, masks, _ in iterate(val_loader, progress, "hummingbird queries"):
            kept_images.append(images)
            yield features_fn(images), masks.to(device)

    def image_stream():
        while kept_images:
            yield kept_images.pop(0)

    start = time.perf_counter()
    evaluate_queries(
        val_stream(),
        bank,
        searcher,
        confusion,
        k=config.k,
        temperature=config.temperature,
        keeper=keeper,
        images=image_stream(),
    )
    timings["query_s"] = time.perf_counter() - start

    k_per_image = patches_per_image(config.memory_size, len(train), config.augmentation_epochs)
    settings = asdict(config)
    settings.update(
        {
            "device": str(device),
            "search_backend": getattr(searcher, "name", config.search),
            "nlist": getattr(searcher, "nlist", None),
            "patches_per_image": k_per_image,
            "memory_rows_filled": bank.size,
            "memory_rows_allocated": bank.capacity,
            "memory_bytes": bank.nbytes(),
            "ignore_in_memory": "excluded",
            "patch_label": "class histogram of the patch's labelled pixels, normalised to sum 1",
            "patch_selection": "rare-class score (sum of per-class patch counts of the classes present) x U(0,1), lowest K",
            "similarity": "cosine (unit vectors, inner product)",
            "upsampling": "bilinear to the input size, then argmax",
            "eval_resolution": "input size (val images and masks resized to a square input; masks nearest)",
            "train_augmentation": train_tf.describe(),
            "val_transform": EvalResize(config.input_size).describe(),
        }
    )
    result = {
        "protocol": "hummingbird",
        "settings": settings,
        "dataset": {"train": train.describe(), "val": val_set.describe()},
        "metrics": confusion.summary(val_set.class_names),
        "timings": timings,
    }
    return EvalOutput(result=result, examples=keeper.examples())
