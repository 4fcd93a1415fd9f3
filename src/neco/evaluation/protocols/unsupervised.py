"""Fully unsupervised segmentation: attention masks -> CBFE -> foreground clustering and community detection.

1. Train and validation splits at `input_size`: patch tokens, and noisy foreground masks from the
   CLS attention (head mean, blur, mass threshold, components smaller than `min_component` patches
   removed; register columns excluded). GT resized (nearest) to `target_size`.
2. CBFE (`neco.evaluation.foreground`) fitted on train (the cut is chosen against GT foreground),
   applied to validation.
3. "CBFE" number: validation foreground tokens (standardised, PCA) clustered by k-means into
   #classes - 1 clusters, background = a further id; Hungarian mIoU against all classes, mean and
   std over `fg_seeds`.
4. "CD" number: foreground tokens overclustered and merged by Infomap over the cluster
   co-occurrence graph (`neco.evaluation.community`); K, threshold and Markov time searched on the
   train split (its CBFE foreground, its GT for the score); on validation mean and std over `cd.seeds`
   (each seed re-runs k-means and Infomap).
Predictions are patch-level maps nearest-upsampled to `target_size`; matching is Hungarian on IoU,
so the background id is matched like any other segment.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from neco.evaluation.blocks.clustering import kmeans_assign, standardise_pca
from neco.evaluation.blocks.community import search_cd, segment_communities
from neco.evaluation.blocks.foreground import fit_cbfe
from neco.evaluation.blocks.loading import Examples, TokenSplit, collect_tokens
from neco.evaluation.blocks.masks import foreground_masks, gt_foreground, jaccard_counts, jaccard_summary
from neco.evaluation.blocks.matching import map_ids, matched_miou
from neco.evaluation.blocks.metrics import seed_summary
from neco.evaluation.blocks.transforms import resize_ids
from neco.evaluation.features import Features
from neco.evaluation.options import option
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol
from neco.evaluation.protocols.attention import VOC_FORMAT, MaskSettings

__all__ = ["UnsupervisedSettings", "UnsupervisedExamples", "Unsupervised"]


@dataclass
class UnsupervisedSettings(MaskSettings):
    """Settings of the unsupervised protocol; defaults are the published ones where there are some."""

    min_component: int = option(4, "drop foreground components smaller than this many patches", minimum=0)
    target_size: int = option(100, "prediction and mask resolution", minimum=1)
    cbfe_k: int = option(200, "spherical k-means clusters of CBFE", minimum=2)
    cut_range: tuple[float, float] = option(
        (0.55, 0.75), "foreground-cluster cut, fractions of K", minimum=0, maximum=1
    )
    fg_clusters: int = option(0, "foreground clusters (0 = #classes - 1)", minimum=0)
    fg_seeds: int = option(5, "k-means seeds of the foreground clustering", minimum=1)
    cd_ks: tuple[int, ...] = option((50, 100, 200), "overcluster counts searched for CD", minimum=2)
    threshold_range: tuple[float, float] = option(
        (0.0, 0.3), "CD edge-weight threshold range", minimum=0, maximum=1
    )
    markov_range: tuple[float, float] = option(
        (0.5, 2.0), "Infomap Markov time range", minimum=0, exclusive_minimum=True
    )
    trials: int = option(30, "optuna trials of the CD search (train split)", minimum=1)
    cd_seeds: int = option(10, "validation seeds of CD", minimum=1)
    infomap_trials: int = option(5, "Infomap restarts per run", minimum=1)
    pca_dim: int = option(50, "PCA dimensions of the foreground tokens", minimum=1)
    niter: int = option(50, "k-means iterations", minimum=1)
    nredo: int = option(1, "k-means restarts", minimum=1)
    max_points_per_centroid: int = option(256, "faiss k-means sample cap per centroid", minimum=1, cli=False)

    def check(self) -> None:
        """Ranges must be ordered."""
        for name in ("cut_range", "threshold_range", "markov_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(
                    f"`--{name.replace('_', '-')}` must be LOW HIGH with LOW <= HIGH but is {lo} {hi}"
                )


@dataclass
class UnsupervisedExamples(Examples):
    """Validation examples: `predictions` is the CD segmentation; the other maps are for more figures."""

    cbfe_predictions: torch.Tensor | None = None  # (n, T, T) matched foreground clustering
    foreground: torch.Tensor | None = None  # (n, T, T) GT foreground 0/1, 255 = ignore
    cbfe_foreground: torch.Tensor | None = None  # (n, T, T) CBFE foreground 0/1
    attention_foreground: torch.Tensor | None = None  # (n, T, T) attention foreground 0/1


def _jaccard(pred: torch.Tensor, gt: torch.Tensor, ignore: int | None, size: int) -> dict[str, float]:
    fg, valid = gt_foreground(gt, ignore)
    inter, union = jaccard_counts(resize_ids(pred, size), fg, valid)
    return jaccard_summary(inter.numpy(), union.numpy())


def _fg_points(
    split: TokenSplit, fg: torch.Tensor, pca_dim: int, name: str
) -> tuple[np.ndarray, dict[str, Any]]:
    selected = split.tokens[fg.reshape(-1).numpy()]
    if selected.shape[0] < 2:
        raise ValueError(
            f"the CBFE foreground of the {name} split must hold at least 2 patches but holds {selected.shape[0]}"
        )
    return standardise_pca(selected, pca_dim)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("infomap", "optuna", "faiss-cpu"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not found"
    return out


@register_protocol
class Unsupervised(Protocol):
    """Fully unsupervised segmentation: CBFE foreground clustering and community detection."""

    name = "unsupervised"
    summary = "fully unsupervised segmentation: CBFE foreground + clustering, community detection"
    settings_class = UnsupervisedSettings
    datasets = VOC_FORMAT
    needs_train = True
    needs_attention = True
    input_size = 448

    def default_train_split(self, dataset: str) -> str:
        """The CBFE cut and the CD search use the train split."""
        return "train"

    def headline(self, metrics: dict[str, Any]) -> tuple[str, float]:
        """Community-detection mIoU (mean over seeds)."""
        return "cd miou_mean", float(metrics["cd"]["miou_mean"])

    def run(
        self, features: Features, data: EvalData, settings: UnsupervisedSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """CBFE fitted on train, applied to val; foreground clustering and CD mIoU on val."""
        train_set, val_set = data.train, data.val
        num_classes, ignore, size = val_set.num_classes, val_set.ignore_index, settings.target_size
        num_examples = ctx.run.num_figures
        kmeans = {name: getattr(settings, name) for name in ("niter", "nredo", "max_points_per_centroid")}

        masks = {f.name: getattr(settings, f.name) for f in fields(MaskSettings)}  # foreground_masks keywords

        def noisy(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
            return foreground_masks(features.attention(images), features.num_register_tokens, grid, **masks)

        def collect(dataset: Any, desc: str, keep: int) -> TokenSplit:
            return collect_tokens(ctx.batches(dataset, desc), features, len(dataset), size, keep, noisy)

        with ctx.timer("features"):
            train = collect(train_set, "unsupervised: train", 0)
            val = collect(val_set, "unsupervised: val", num_examples)
        grid = val.grid

        with ctx.timer("cbfe"):
            cbfe = fit_cbfe(
                train.tokens,
                grid,
                train.noisy,
                *gt_foreground(train.gt, train_set.ignore_index),
                k=settings.cbfe_k,
                cut_range=settings.cut_range,
                seed=ctx.seed,
                niter=settings.niter,
            )
            train_fg, _ = cbfe.predict(train.tokens, grid)
            val_fg, _ = cbfe.predict(val.tokens, grid)
        foreground = {
            "attention_val": _jaccard(val.noisy, val.gt, ignore, size),
            "cbfe_val": _jaccard(val_fg, val.gt, ignore, size),
            "attention_train": _jaccard(train.noisy, train.gt, train_set.ignore_index, size),
            "cbfe_train": _jaccard(train_fg, train.gt, train_set.ignore_index, size),
        }

        def kmeans_maps(points: np.ndarray, fg: torch.Tensor, k: int, seed: int) -> np.ndarray:
            """(N, h, w) maps: k-means cluster of each foreground token, -1 on background."""
            maps = np.full(fg.shape, -1, dtype=np.int64)
            maps[fg.numpy()] = kmeans_assign(points, k, seed=seed, **kmeans)
            return maps

        def scored(num_seeds: int, desc: str, segment: Any) -> tuple[dict[str, Any], list[int], torch.Tensor]:
            """Per seed `segment(seed) -> (maps (N, h, w), -1 background; #segments)` matched to val GT."""
            seeds = range(ctx.seed, ctx.seed + num_seeds)
            scores, ious, counts, example = [], [], [], None
            for seed in ctx.iterate(seeds, desc):
                maps, num = segment(seed)
                pred = resize_ids(np.where(maps >= 0, maps, num), size)
                miou, mapping, iou = matched_miou(pred, val.gt, num + 1, num_classes, ignore)
                scores.append(miou)
                ious.append(iou)
                counts.append(num)
                if example is None:
                    example = map_ids(pred[:num_examples], mapping)
            return {**seed_summary(scores, ious, val_set.class_names), "seeds": list(seeds)}, counts, example

        val_points, pca_info = _fg_points(val, val_fg, settings.pca_dim, "val")
        k_fg = settings.fg_clusters or num_classes - 1
        if k_fg > val_points.shape[0]:
            ctx.warn(f"foreground clusters {k_fg} capped to the {val_points.shape[0]} foreground patches")
            k_fg = val_points.shape[0]
        cbfe_metrics, _, cbfe_example = scored(
            settings.fg_seeds,
            "foreground clustering",
            lambda seed: (kmeans_maps(val_points, val_fg, k_fg, seed), k_fg),
        )

        train_points, _ = _fg_points(train, train_fg, settings.pca_dim, "train")
        cd_ks = [int(k) for k in settings.cd_ks]
        ks = sorted({min(k, train_points.shape[0], val_points.shape[0]) for k in cd_ks})
        if ks != sorted(cd_ks):
            ctx.warn(f"CD cluster counts {cd_ks} capped to {ks} by the foreground patch counts")
        best = search_cd(
            {k: kmeans_maps(train_points, train_fg, k, ctx.seed) for k in ks},
            train.gt,
            num_classes,
            train_set.ignore_index,
            threshold_range=settings.threshold_range,
            markov_range=settings.markov_range,
            trials=settings.trials,
            infomap_trials=settings.infomap_trials,
            seed=ctx.seed,
            progress=ctx.progress,
        )

        def communities(seed: int) -> tuple[np.ndarray, int]:
            return segment_communities(
                kmeans_maps(val_points, val_fg, best["k"], seed),
                best["k"],
                threshold=best["threshold"],
                markov_time=best["markov_time"],
                seed=seed,
                infomap_trials=settings.infomap_trials,
            )

        cd_metrics, cd_counts, cd_example = scored(settings.cd_seeds, "community detection", communities)
        resolved = {
            "grid": list(grid),
            "num_register_tokens": features.num_register_tokens,
            "cbfe_fit": cbfe.info,
            "fg_clusters_resolved": int(k_fg),
            "cd_ks_resolved": ks,
            **pca_info,
            "libraries": _library_versions(),
        }
        metrics = {
            "cbfe": {**cbfe_metrics, "k": int(k_fg)},
            "cd": {**cd_metrics, "num_communities_per_seed": cd_counts, "hyper_parameters": best},
            "foreground": foreground,
        }
        examples = None
        if n := val.images.shape[0]:  # the first n validation items; the example maps hold n already
            fg_val, valid_val = gt_foreground(val.gt[:n], ignore)
            examples = UnsupervisedExamples(
                images=val.images,
                masks=val.gt[:n],
                predictions=cd_example,
                cbfe_predictions=cbfe_example,
                foreground=torch.where(valid_val, fg_val.long(), 255),
                cbfe_foreground=resize_ids(val_fg[:n].long(), size),
                attention_foreground=resize_ids(val.noisy[:n].long(), size),
            )
        return ProtocolOutput(metrics=metrics, settings=resolved, examples=examples)

    def figures(self, output: ProtocolOutput, features: Features, data: EvalData, out_dir: Any) -> list[Any]:
        """image | GT | prediction panels: foreground masks, CBFE clustering and CD segmentation."""
        from neco.viz import save_overlay_figure

        ex = output.examples
        if ex is None:
            return []
        panels = [
            ("unsupervised_attention_fg.png", ex.foreground, ex.attention_foreground, 2),
            ("unsupervised_cbfe_fg.png", ex.foreground, ex.cbfe_foreground, 2),
            ("unsupervised_cbfe.png", ex.masks, ex.cbfe_predictions, data.val.num_classes),
            ("unsupervised_cd.png", ex.masks, ex.predictions, data.val.num_classes),
        ]
        return [
            save_overlay_figure(ex.images, gt, pred, out_dir / name, num_classes=classes, ignore_index=255)
            for name, gt, pred, classes in panels
        ]
