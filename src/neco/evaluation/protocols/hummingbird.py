"""Hummingbird dense nearest-neighbour retrieval (Balazevic et al., NeurIPS 2023), the NeCo headline.

Build: every augmented training image -> unit patch features + soft patch labels; keep
K = memory_size // (n_images * aug_epochs) patches per image (rare classes first). Query: every
validation patch takes its k nearest memory patches (cosine), weights softmax(cos / T), prediction
= weighted soft labels (B, C, h, w), bilinearly upsampled to the input size, argmax, mIoU.
Everything streams: only the bank (bounded by `memory_size`) and one batch are ever in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neco.evaluation.blocks.file_sets import SUBSET_MODES, select_subset
from neco.evaluation.blocks.loading import ExampleKeeper
from neco.evaluation.blocks.matching import apply_mapping, hungarian_match
from neco.evaluation.blocks.memory_bank import MemoryBank, patch_label_histograms, select_rare_patches
from neco.evaluation.blocks.metrics import ConfusionMatrix, iou_from_confusion, percent_per_class
from neco.evaluation.blocks.search import SEARCH_BACKENDS, build_searcher
from neco.evaluation.blocks.transforms import HummingbirdTrainTransform
from neco.evaluation.features import Features
from neco.evaluation.options import option, parse_fraction
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol

__all__ = [
    "HummingbirdSettings",
    "Hummingbird",
    "patches_per_image",
    "build_memory_bank",
    "predict_soft_labels",
    "evaluate_queries",
]

_BANK_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class HummingbirdSettings:
    """Settings of the protocol; defaults are the published ones."""

    memory_size: int = option(10_240_000, "memory-bank patches (published: 1024*10^2, 10^3, 10^4)", minimum=1)
    augmentation_epochs: int = option(
        2, "augmented passes over the training images", minimum=1, flag="--aug-epochs"
    )
    k: int = option(30, "nearest neighbours per query patch", minimum=1)
    temperature: float = option(
        0.02, "softmax temperature on cosine similarities", minimum=0, exclusive_minimum=True
    )
    fraction: str = option("1", "fraction of the training set: 1/128, 1/64, 1/8 or any number in (0, 1]")
    split_seed: int = option(42, "seed of the training subset (published lists: 42, 400, 783, 1293, 4019)")
    subset: str = option(
        "auto", "published id list (auto: when one exists) or a seeded random subset", choices=SUBSET_MODES
    )
    matching: str = option(
        "hungarian",
        "match predicted to true classes before scoring (published: hungarian)",
        choices=("hungarian", "none"),
    )
    miou_average: str = option(
        "all",
        "average IoU over all classes, absent ones 0 (published), or present ones only",
        choices=("all", "present"),
    )
    search: str = option("auto", "neighbour search", choices=tuple(SEARCH_BACKENDS))
    nlist: int | None = option(None, "IVF lists of --search ivf (none: about sqrt(memory))", minimum=1)
    nprobe: int = option(16, "IVF lists probed per query", minimum=1)
    bank_dtype: str = option("fp32", "memory-bank feature storage", choices=tuple(_BANK_DTYPES))
    crop_scale: tuple[float, float] = option((0.5, 2.0), "RandomResizedCrop scale", cli=False)
    crop_ratio: tuple[float, float] = option((3 / 4, 4 / 3), "RandomResizedCrop aspect ratio", cli=False)
    jitter: float = option(0.1, "colour-jitter strength", cli=False)
    jitter_p: float = option(0.5, "probability of each jitter component", cli=False)

    def check(self) -> None:
        """Cross-field checks (the fraction's format)."""
        parse_fraction(self.fraction)


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
        # (B, N, C) label histograms and (B, N, D) unit tokens, one contiguous, normalised copy per
        # batch: per-image row gathers are then cheap
        hist = patch_label_histograms(masks.to(features.device), (h, w), num_classes, ignore_index)
        tokens = F.normalize(features.flatten(2).transpose(1, 2).float(), dim=-1).contiguous()
        on_bank = bank.features.device
        for i in range(b):
            keep = select_rare_patches(hist[i], k, generator)
            bank.add(tokens[i, keep].to(on_bank), hist[i, keep].to(on_bank), normalised=True)
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
    # q = query patch (Q = B*h*w), k = neighbour, c = class
    queries = F.normalize(features.flatten(2).transpose(1, 2).reshape(b * h * w, -1).float(), dim=-1)
    _, labels = bank.stored()
    sims, idx = searcher.search(queries, min(k, bank.size))  # (Q, k)
    sims, idx = sims.to(labels.device), idx.to(labels.device)
    sims = sims.masked_fill(idx < 0, float("-inf"))  # approximate search may return fewer than k
    weights = torch.softmax(sims.float() / temperature, dim=1).nan_to_num(0.0)  # (Q, k)
    neighbour_labels = labels[idx.clamp_min(0)].float()  # (Q, k, C)
    scores = torch.einsum("qk,qkc->qc", weights, neighbour_labels)  # (Q, C)
    return scores.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B, C, h, w)


@torch.no_grad()
def evaluate_queries(
    batches: Iterable[tuple[torch.Tensor, ...]],
    bank: MemoryBank,
    searcher: Any,
    confusion: ConfusionMatrix,
    k: int = 30,
    temperature: float = 0.02,
    keeper: ExampleKeeper | None = None,
) -> ConfusionMatrix:
    """Predict every (features, masks[, images]) batch at the mask size, count it and offer it to `keeper`.

    A prediction takes the soft labels of the k nearest memory patches, bilinearly upsampled, argmax.
    """
    for features, masks, *images in batches:
        scores = predict_soft_labels(features, bank, searcher, k, temperature)  # (B, C, h, w)
        pred = F.interpolate(scores, masks.shape[-2:], mode="bilinear", align_corners=False).argmax(dim=1)
        confusion.update(pred, masks)
        if keeper is not None:
            keeper.offer(images=images[0], masks=masks, predictions=pred, features=features)
    return confusion


@register_protocol
class Hummingbird(Protocol):
    """Dense nearest-neighbour retrieval (Hummingbird): the NeCo headline."""

    name = "hummingbird"
    summary = "dense nearest-neighbour retrieval (Hummingbird), the NeCo headline"
    settings_class = HummingbirdSettings
    needs_train = True
    input_size = 512

    def default_input_size(self, patch_size: int) -> int:
        """504 for patch 14 (36x36 tokens), 512 for patch 16, else 512 rounded to whole patches."""
        return 504 if patch_size == 14 else super().default_input_size(patch_size)

    def run(
        self, features: Features, data: EvalData, settings: HummingbirdSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Build the memory bank from the augmented training set, label every validation patch, score."""
        train, subset = select_subset(
            data.train, parse_fraction(settings.fraction), settings.split_seed, settings.subset, ctx.warn
        )
        val = data.val
        train_tf = HummingbirdTrainTransform(
            ctx.input_size, settings.crop_scale, settings.crop_ratio, settings.jitter, settings.jitter_p
        )

        def train_stream():
            for epoch in range(settings.augmentation_epochs):
                batches = ctx.batches(train, f"memory bank pass {epoch + 1}", train_tf, epoch=epoch)
                for images, masks, _ in batches:
                    yield features(images), masks

        with ctx.timer("build"):
            bank = build_memory_bank(
                train_stream(),
                num_images=len(train),
                memory_size=settings.memory_size,
                augmentation_epochs=settings.augmentation_epochs,
                num_classes=val.num_classes,
                ignore_index=train.ignore_index,
                dtype=_BANK_DTYPES[settings.bank_dtype],
                device=ctx.device,
                seed=ctx.seed,
            )
        with ctx.timer("index"):
            searcher = build_searcher(
                bank.stored()[0], settings.search, nlist=settings.nlist, nprobe=settings.nprobe
            )

        keeper = ctx.keeper()
        confusion = ConfusionMatrix(val.num_classes, val.ignore_index, device=ctx.device)
        with ctx.timer("query"):
            batches = ctx.batches(val, "hummingbird queries")
            queries = ((features(images), masks, images) for images, masks, _ in batches)
            evaluate_queries(queries, bank, searcher, confusion, settings.k, settings.temperature, keeper)
        # Hungarian matching of predicted to true classes; `miou_average` "all" counts classes absent
        # from both prediction and GT as 0 (the public evaluator's mean), "present" leaves them out (NaN)
        counts = confusion.numpy()
        mapping = hungarian_match(counts) if settings.matching == "hungarian" else None
        iou = iou_from_confusion(counts if mapping is None else apply_mapping(counts, mapping))
        if settings.miou_average == "all":
            iou = np.nan_to_num(iou, nan=0.0)
        changed = None if mapping is None else int((mapping != np.arange(len(mapping))).sum())
        metrics = {
            "miou": 100.0 * float(np.nanmean(iou)) if np.isfinite(iou).any() else None,
            "miou_unmatched_present": 100.0 * confusion.miou(),
            "pixel_accuracy": 100.0 * confusion.pixel_accuracy(),
            "per_class_iou": percent_per_class(iou, val.class_names),
            "num_pixels": int(counts.sum()),
            "matched_classes_changed": changed,
        }
        resolved = {
            "subset": subset,
            "search_backend": getattr(searcher, "name", settings.search),
            "nlist": getattr(searcher, "nlist", None),
            "patches_per_image": patches_per_image(
                settings.memory_size, len(train), settings.augmentation_epochs
            ),
            "memory_rows_filled": bank.size,
            "memory_rows_allocated": bank.capacity,
            "memory_bytes": bank.nbytes(),
            "ignore_in_memory": "excluded",
            "train_augmentation": train_tf.describe(),
        }
        return ProtocolOutput(metrics=metrics, settings=resolved, examples=keeper.examples())
