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

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neco.evaluation.attention import foreground_masks, gt_foreground
from neco.evaluation.common import EvalOutput, Examples, check_divisible, iterate, make_loader, resize_masks
from neco.evaluation.community import CDConfig, hungarian_miou, search_cd, segment_communities
from neco.evaluation.foreground import CBFEConfig, fit_cbfe
from neco.evaluation.transforms import EvalResize

__all__ = ["UnsupervisedConfig", "UnsupervisedExamples", "run_unsupervised"]


@dataclass
class UnsupervisedConfig:
    """Settings of the unsupervised protocol; defaults are the published ones where there are some."""

    input_size: int = 448
    target_size: int = 100
    mass: float = 0.6
    sigma: float = 0.6
    min_component: int = 4
    cbfe: CBFEConfig = field(default_factory=CBFEConfig)
    cd: CDConfig = field(default_factory=CDConfig)
    fg_clusters: int = 0
    fg_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    pca_dim: int = 50
    niter: int = 50
    nredo: int = 1
    max_points_per_centroid: int = 256
    batch_size: int = 16
    num_workers: int = 0
    threads: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        for name in ("input_size", "target_size", "pca_dim", "niter", "nredo", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {getattr(self, name)}")
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"`mass` must be in (0, 1] but is {self.mass}")
        if self.sigma < 0 or self.min_component < 0:
            raise ValueError(
                f"`sigma` and `min_component` must be >= 0 but are {self.sigma}, {self.min_component}"
            )
        if self.fg_clusters < 0:
            raise ValueError(f"`fg_clusters` must be >= 0 (0 = #classes - 1) but is {self.fg_clusters}")
        if not self.fg_seeds:
            raise ValueError("`fg_seeds` must name at least one seed but is empty")
        self.cbfe.validate()
        self.cd.validate()


@dataclass
class UnsupervisedExamples(Examples):
    """Validation examples: `predictions` is the CD segmentation; the other maps are for more figures."""

    cbfe_predictions: torch.Tensor | None = None  # (n, T, T) matched foreground clustering
    foreground: torch.Tensor | None = None  # (n, T, T) GT foreground 0/1, 255 = ignore
    cbfe_foreground: torch.Tensor | None = None  # (n, T, T) CBFE foreground 0/1
    attention_foreground: torch.Tensor | None = None  # (n, T, T) attention foreground 0/1


@dataclass
class _Split:
    tokens: np.ndarray  # (N*h*w, D) float16
    noisy: torch.Tensor  # (N, h, w) bool
    gt: torch.Tensor  # (N, T, T) int64
    images: torch.Tensor  # (n, 3, S, S) kept for figures
    grid: tuple[int, int]


def _collect(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    attention_fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: Any,
    config: UnsupervisedConfig,
    num_register_tokens: int,
    progress: bool,
    desc: str,
    keep: int,
) -> _Split:
    loader = make_loader(
        dataset,
        EvalResize(config.input_size),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        seed=0,
    )
    tokens: np.ndarray | None = None
    noisy, gts, images_kept = [], [], []
    row, grid = 0, None
    for images, masks, _ in iterate(loader, progress, desc):
        features = features_fn(images).float().cpu()  # (B, D, h, w)
        grid = tuple(features.shape[-2:])
        attn = attention_fn(images).float().cpu()  # (B, heads, T, T)
        noisy.append(
            foreground_masks(
                attn,
                num_register_tokens,
                grid,
                mass=config.mass,
                sigma=config.sigma,
                min_component=config.min_component,
            )
        )
        if tokens is None:
            tokens = np.empty((len(dataset) * grid[0] * grid[1], features.shape[1]), dtype=np.float16)
        flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # (B*h*w, D)
        tokens[row : row + flat.shape[0]] = flat.numpy()
        row += flat.shape[0]
        gts.append(resize_masks(masks, config.target_size))
        if sum(x.shape[0] for x in images_kept) < keep:
            images_kept.append(images[:keep])
    if tokens is None:
        raise ValueError(f"`{desc}` split must hold at least one image but is empty")
    kept = torch.cat(images_kept)[:keep] if images_kept else torch.empty(0)
    return _Split(tokens, torch.cat(noisy), torch.cat(gts), kept, grid)


def _upsample(ids: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    return F.interpolate(ids[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].long()


def _jaccard(pred: torch.Tensor, gt: torch.Tensor, ignore: int | None, size: int) -> dict[str, float]:
    fg, valid = gt_foreground(gt, ignore)
    up = _upsample(pred.long(), size).bool() & valid
    inter = (up & fg).flatten(1).sum(1).double()
    union = (up | fg).flatten(1).sum(1).double()
    per_image = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return {
        "jaccard": 100.0 * float(per_image.mean()),
        "jaccard_global": 100.0 * float(inter.sum() / union.sum().clamp_min(1)),
    }


def _kmeans_maps(
    points: np.ndarray, fg: torch.Tensor, k: int, seed: int, config: UnsupervisedConfig
) -> np.ndarray:
    """(N, h, w) maps: k-means cluster of each foreground token, -1 on background."""
    from neco.evaluation.overcluster import kmeans_assign

    assign = kmeans_assign(
        points,
        k,
        seed=seed,
        niter=config.niter,
        nredo=config.nredo,
        max_points_per_centroid=config.max_points_per_centroid,
    )
    maps = np.full(fg.numel(), -1, dtype=np.int64)
    maps[fg.reshape(-1).numpy()] = assign
    return maps.reshape(fg.shape)


def _matched(pred: torch.Tensor, mapping: np.ndarray) -> torch.Tensor:
    mapped = torch.from_numpy(mapping)[pred]
    return torch.where(mapped < 0, torch.full_like(mapped, 255), mapped)


def _fg_points(split: _Split, fg: torch.Tensor, pca_dim: int, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    from neco.evaluation.overcluster import standardise_pca

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


def run_unsupervised(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    attention_fn: Callable[[torch.Tensor], torch.Tensor],
    train_set: Any,
    val_set: Any,
    config: UnsupervisedConfig | None = None,
    *,
    patch_size: int,
    num_register_tokens: int,
    progress: bool = True,
    num_examples: int = 4,
) -> EvalOutput:
    """CBFE foreground clustering mIoU and community-detection mIoU on `val_set` (settings from `train_set`)."""
    config = config or UnsupervisedConfig()
    config.validate()
    check_divisible(config.input_size, patch_size)
    if num_register_tokens < 0:
        raise ValueError(f"`num_register_tokens` must be >= 0 but is {num_register_tokens}")
    if config.threads > 0:
        import faiss

        faiss.omp_set_num_threads(config.threads)
    num_classes, ignore = val_set.num_classes, val_set.ignore_index
    size = config.target_size
    timings: dict[str, float] = {}
    warnings: list[str] = []

    start = time.perf_counter()
    args = (features_fn, attention_fn)
    train = _collect(*args, train_set, config, num_register_tokens, progress, "unsupervised: train", 0)
    val = _collect(*args, val_set, config, num_register_tokens, progress, "unsupervised: val", num_examples)
    grid = val.grid
    timings["features_s"] = time.perf_counter() - start

    start = time.perf_counter()
    fg_train, valid_train = gt_foreground(train.gt, train_set.ignore_index)
    cbfe = fit_cbfe(train.tokens, grid, train.noisy, fg_train, valid_train, config.cbfe)
    train_fg, _ = cbfe.predict(train.tokens, grid)
    val_fg, _ = cbfe.predict(val.tokens, grid)
    foreground = {
        "attention_val": _jaccard(val.noisy, val.gt, ignore, size),
        "cbfe_val": _jaccard(val_fg, val.gt, ignore, size),
        "attention_train": _jaccard(train.noisy, train.gt, train_set.ignore_index, size),
        "cbfe_train": _jaccard(train_fg, train.gt, train_set.ignore_index, size),
    }
    timings["cbfe_s"] = time.perf_counter() - start

    start = time.perf_counter()
    val_points, pca_info = _fg_points(val, val_fg, config.pca_dim, "val")
    k_fg = config.fg_clusters or num_classes - 1
    if k_fg > val_points.shape[0]:
        warnings.append(f"foreground clusters {k_fg} capped to the {val_points.shape[0]} foreground patches")
        k_fg = val_points.shape[0]
    cbfe_scores, cbfe_iou, cbfe_example = [], [], None
    for seed in config.fg_seeds:
        maps = _kmeans_maps(val_points, val_fg, k_fg, int(seed), config)
        pred = _upsample(np.where(maps >= 0, maps, k_fg), size)
        miou, mapping, iou = hungarian_miou(pred, val.gt, k_fg + 1, num_classes, ignore)
        cbfe_scores.append(miou)
        cbfe_iou.append(iou)
        if cbfe_example is None:
            cbfe_example = _matched(pred[:num_examples], mapping)
    timings["fg_clustering_s"] = time.perf_counter() - start

    start = time.perf_counter()
    train_points, _ = _fg_points(train, train_fg, config.pca_dim, "train")
    ks = sorted({min(int(k), train_points.shape[0], val_points.shape[0]) for k in config.cd.ks})
    if ks != sorted(int(k) for k in config.cd.ks):
        warnings.append(
            f"CD cluster counts {list(config.cd.ks)} capped to {ks} by the foreground patch counts"
        )
    maps_by_k = {k: _kmeans_maps(train_points, train_fg, k, config.cd.search_seed, config) for k in ks}
    best = search_cd(
        maps_by_k, train.gt, num_classes, train_set.ignore_index, config.cd, lambda m: _upsample(m, size)
    )
    timings["cd_search_s"] = time.perf_counter() - start
    start = time.perf_counter()
    cd_scores, cd_iou, cd_counts, cd_example = [], [], [], None
    for seed in config.cd.seeds:
        maps = _kmeans_maps(val_points, val_fg, best["k"], int(seed), config)
        communities, num = segment_communities(
            maps,
            best["k"],
            threshold=best["threshold"],
            markov_time=best["markov_time"],
            seed=int(seed),
            distances=config.cd.distances,
            num_angles=config.cd.num_angles,
            infomap_trials=config.cd.infomap_trials,
        )
        pred = _upsample(np.where(communities >= 0, communities, num), size)
        miou, mapping, iou = hungarian_miou(pred, val.gt, num + 1, num_classes, ignore)
        cd_scores.append(miou)
        cd_iou.append(iou)
        cd_counts.append(num)
        if cd_example is None:
            cd_example = _matched(pred[:num_examples], mapping)
    timings["cd_val_s"] = time.perf_counter() - start

    def per_class(ious: list[np.ndarray]) -> dict[str, float | None]:
        mean = np.nanmean(np.stack(ious), 0)
        return {n: (None if np.isnan(v) else 100.0 * float(v)) for n, v in zip(val_set.class_names, mean)}

    settings = asdict(config)
    settings.update(
        {
            "grid": list(grid),
            "num_register_tokens": int(num_register_tokens),
            "cbfe_fit": cbfe.info,
            "fg_clusters_resolved": int(k_fg),
            "cd_ks_resolved": ks,
            **pca_info,
            "attention_mask": "CLS row of the last block, registers excluded, head mean, blur, mass threshold",
            "matching": "hungarian (1 - IoU), background id matched like any segment",
            "libraries": _library_versions(),
        }
    )
    result = {
        "protocol": "unsupervised",
        "settings": settings,
        "dataset": {"train": train_set.describe(), "val": val_set.describe()},
        "metrics": {
            "cbfe": {
                "miou_mean": float(np.mean(cbfe_scores)),
                "miou_std": float(np.std(cbfe_scores)),
                "miou_per_seed": cbfe_scores,
                "seeds": list(config.fg_seeds),
                "k": int(k_fg),
                "per_class_iou_mean": per_class(cbfe_iou),
            },
            "cd": {
                "miou_mean": float(np.mean(cd_scores)),
                "miou_std": float(np.std(cd_scores)),
                "miou_per_seed": cd_scores,
                "num_communities_per_seed": cd_counts,
                "seeds": list(config.cd.seeds),
                "hyper_parameters": best,
                "per_class_iou_mean": per_class(cd_iou),
            },
            "foreground": foreground,
        },
        "warnings": warnings,
        "timings": timings,
    }
    examples = None
    n = val.images.shape[0]
    if n:
        fg_val, valid_val = gt_foreground(val.gt[:n], ignore)
        examples = UnsupervisedExamples(
            images=val.images,
            masks=val.gt[:n],
            predictions=cd_example[:n],
            cbfe_predictions=cbfe_example[:n],
            foreground=torch.where(valid_val, fg_val.long(), 255),
            cbfe_foreground=_upsample(val_fg[:n].long(), size),
            attention_foreground=_upsample(val.noisy[:n].long(), size),
        )
    return EvalOutput(result=result, examples=examples, warnings=warnings)
