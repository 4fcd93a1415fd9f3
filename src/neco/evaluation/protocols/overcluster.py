"""Overclustering of validation patch features (standardise, PCA 50, faiss k-means, matching).

Tokens of the whole validation split -> per-dimension standardisation -> PCA to 50 dims (exact,
from the correlation matrix accumulated in float64) -> faiss k-means (niter 100, nredo 5) for each
seed -> cluster maps nearest-upsampled to `target_size`^2, GT nearest-resized to the same size
with ignore pixels removed -> K = C: Hungarian, K > C: many-to-one (precision) -> mIoU; mean and
standard deviation over seeds. Raw tokens are kept once in float16 (1.1 GB for VOC val at 448 px,
ViT-S); the projected points in float32 (0.3 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from neco.evaluation.blocks.clustering import kmeans_assign, standardise_pca
from neco.evaluation.blocks.loading import Examples, collect_tokens
from neco.evaluation.blocks.matching import map_ids, matched_miou
from neco.evaluation.blocks.metrics import seed_summary
from neco.evaluation.blocks.transforms import resize_ids
from neco.evaluation.features import Features
from neco.evaluation.options import option
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol

__all__ = ["OverclusterSettings", "Overcluster"]


@dataclass
class OverclusterSettings:
    """Settings of the protocol; defaults are the published ones. K = 0 in `ks` stands for #classes."""

    ks: tuple[int, ...] = option(
        (0, 100, 300, 500), "cluster counts (0 = #classes: Hungarian; more: many-to-one)", minimum=0
    )
    num_seeds: int = option(5, "k-means seeds (seed .. seed + n - 1)", minimum=1)
    pca_dim: int = option(50, "PCA dimensions after standardisation", minimum=1)
    niter: int = option(100, "k-means iterations", minimum=1)
    nredo: int = option(5, "k-means restarts (best kept)", minimum=1)
    max_points_per_centroid: int = option(256, "faiss k-means sample cap per centroid", minimum=1)
    target_size: int = option(100, "cluster-map and mask resolution", minimum=1)


@register_protocol
class Overcluster(Protocol):
    """k-means overclustering of validation patch features, matched to the classes."""

    name = "overcluster"
    summary = "k-means overclustering of validation patch features"
    settings_class = OverclusterSettings
    input_size = 448

    def headline(self, metrics: dict[str, Any]) -> tuple[str, float]:
        """The largest K's mean mIoU (published: K=500)."""
        key = max(metrics, key=lambda k: metrics[k]["k"])
        return f"{key} miou_mean", float(metrics[key]["miou_mean"])

    def run(
        self, features: Features, data: EvalData, settings: OverclusterSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Cluster the validation split's tokens for each K and seed; matched mIoU mean and spread."""
        val = data.val
        num_classes, ignore, size = val.num_classes, val.ignore_index, settings.target_size
        with ctx.timer("features"):
            batches = ctx.batches(val, "overcluster: features")
            split = collect_tokens(batches, features, len(val), size, ctx.run.num_figures)
        gt, (h, w), images = split.gt, split.grid, split.images
        with ctx.timer("pca"):
            points, pca_info = standardise_pca(split.tokens, settings.pca_dim)
        del split
        metrics: dict[str, Any] = {}
        example, n, num_points = None, images.shape[0], int(points.shape[0])
        seeds = range(ctx.seed, ctx.seed + settings.num_seeds)
        kmeans = {name: getattr(settings, name) for name in ("niter", "nredo", "max_points_per_centroid")}
        with ctx.timer("kmeans"):
            for k_option in settings.ks:
                k = int(k_option) or num_classes
                if k > num_points:
                    ctx.warn(f"K={k} exceeds the {num_points} validation points: capped to {num_points}")
                    k = num_points
                mode = "hungarian" if k <= num_classes else "many_to_one"
                scores, ious = [], []
                for seed in ctx.iterate(seeds, f"overcluster K={k}"):
                    assign = kmeans_assign(points, k, seed=int(seed), **kmeans)
                    maps = resize_ids(torch.from_numpy(assign).reshape(-1, h, w), size)  # (N, T, T)
                    miou, mapping, iou = matched_miou(maps, gt, k, num_classes, ignore, mode)
                    scores.append(miou)
                    ious.append(iou)
                    if example is None:  # the first n validation items, first K and seed
                        example = map_ids(maps[:n], mapping)
                metrics[f"K={k}"] = {"k": k, "matching": mode, **seed_summary(scores, ious, val.class_names)}
        resolved = {
            **pca_info,
            "ks_resolved": [m["k"] for m in metrics.values()],
            "seeds": list(seeds),
            "num_points": num_points,
        }
        examples = Examples(images=images, masks=gt[:n], predictions=example) if n else None
        return ProtocolOutput(metrics=metrics, settings=resolved, examples=examples)
