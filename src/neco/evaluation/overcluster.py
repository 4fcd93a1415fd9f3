"""Overclustering of validation patch features (standardise, PCA 50, faiss k-means, matching).

Tokens of the whole validation split -> per-dimension standardisation -> PCA to 50 dims (exact,
from the correlation matrix accumulated in float64) -> faiss k-means (niter 100, nredo 5) for each
seed -> cluster maps nearest-upsampled to `target_size`^2, GT nearest-resized to the same size
with ignore pixels removed -> K = C: Hungarian, K > C: many-to-one (precision) -> mIoU; mean and
standard deviation over seeds. Raw tokens are kept once in float16 (1.1 GB for VOC val at 448 px,
ViT-S); the projected points in float32 (0.3 GB).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neco.evaluation.common import EvalOutput, Examples, check_divisible, iterate, make_loader, resize_masks
from neco.evaluation.matching import apply_mapping, hungarian_match, many_to_one_match
from neco.evaluation.metrics import ConfusionMatrix, iou_from_confusion
from neco.evaluation.transforms import EvalResize

__all__ = ["OverclusterConfig", "standardise_pca", "kmeans_assign", "cluster_miou", "run_overcluster"]


@dataclass
class OverclusterConfig:
    """Settings of the protocol; defaults are the published ones. K = 0 in `ks` stands for #classes."""

    input_size: int = 448
    target_size: int = 100
    pca_dim: int = 50
    ks: tuple[int, ...] = (0, 100, 300, 500)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    niter: int = 100
    nredo: int = 5
    max_points_per_centroid: int = 256
    batch_size: int = 16
    num_workers: int = 0
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        for name in ("input_size", "target_size", "pca_dim", "niter", "nredo", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {getattr(self, name)}")
        if not self.ks or any(int(k) < 0 for k in self.ks):
            raise ValueError(f"`ks` must be non-empty cluster counts >= 0 (0 = #classes) but is {self.ks}")
        if not self.seeds:
            raise ValueError("`seeds` must name at least one seed but is empty")


def standardise_pca(tokens: np.ndarray, dim: int, chunk: int = 1 << 16) -> tuple[np.ndarray, dict[str, Any]]:
    """Standardise each dimension of (N, D) tokens and project on the top `dim` principal axes -> (N, dim) f32."""
    n, d = tokens.shape
    mean = np.zeros(d)
    sq = np.zeros(d)
    for s in range(0, n, chunk):
        block = tokens[s : s + chunk].astype(np.float64)
        mean += block.sum(0)
        sq += (block**2).sum(0)
    mean /= n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0)) + 1e-6
    gram = np.zeros((d, d))
    for s in range(0, n, chunk):
        block = (tokens[s : s + chunk].astype(np.float64) - mean) / std
        gram += block.T @ block
    eigvals, eigvecs = np.linalg.eigh(gram / max(n - 1, 1))
    dim = min(dim, d)
    order = np.argsort(eigvals)[::-1][:dim]
    axes = eigvecs[:, order]  # (D, dim)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        out[s : s + chunk] = ((tokens[s : s + chunk].astype(np.float64) - mean) / std) @ axes
    explained = float(eigvals[order].sum() / max(eigvals.sum(), 1e-12))
    return out, {"pca_dim": dim, "explained_variance": explained}


def kmeans_assign(
    points: np.ndarray, k: int, *, seed: int, niter: int, nredo: int, max_points_per_centroid: int
) -> np.ndarray:
    """faiss k-means on (N, d) float32 points; the cluster id of every point (N,) int64."""
    import faiss

    kmeans = faiss.Kmeans(
        points.shape[1],
        k,
        niter=niter,
        nredo=nredo,
        seed=seed,
        verbose=False,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,
    )
    kmeans.train(points)
    _, assign = kmeans.index.search(points, 1)
    return assign[:, 0].astype(np.int64)


def cluster_miou(
    cluster_maps: torch.Tensor, masks: torch.Tensor, k: int, num_classes: int, ignore_index: int | None
):
    """mIoU (percent), mapping and per-class IoU of (N, T, T) cluster maps against (N, T, T) masks."""
    confusion = ConfusionMatrix(num_classes, ignore_index, num_predictions=k)
    confusion.update(cluster_maps, masks)
    counts = confusion.numpy()
    mapping = hungarian_match(counts) if k <= num_classes else many_to_one_match(counts)
    iou = iou_from_confusion(apply_mapping(counts, mapping))
    return 100.0 * float(np.nanmean(iou)), mapping, iou


def run_overcluster(
    features_fn: Any,
    val_set: Any,
    config: OverclusterConfig | None = None,
    *,
    patch_size: int,
    progress: bool = True,
    num_examples: int = 4,
) -> EvalOutput:
    """Cluster the validation split's patch features for each K and seed and report matched mIoU."""
    import faiss

    config = config or OverclusterConfig()
    config.validate()
    check_divisible(config.input_size, patch_size)
    if config.threads > 0:
        faiss.omp_set_num_threads(config.threads)
    num_classes, ignore = val_set.num_classes, val_set.ignore_index
    timings: dict[str, float] = {}
    warnings: list[str] = []
    start = time.perf_counter()
    loader = make_loader(
        val_set,
        EvalResize(config.input_size),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        seed=0,
    )
    tokens: np.ndarray | None = None  # (N*h*w, D) float16, allocated once at the first batch
    mask_parts: list[torch.Tensor] = []
    example_images: list[torch.Tensor] = []
    grid = None
    row = 0
    for images, masks, _ in iterate(loader, progress, "overcluster: features"):
        features = features_fn(images).cpu()  # (B, D, h, w)
        grid = features.shape[-2:]
        if tokens is None:
            tokens = np.empty((len(val_set) * grid[0] * grid[1], features.shape[1]), dtype=np.float16)
        batch_tokens = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # (B*h*w, D)
        tokens[row : row + batch_tokens.shape[0]] = batch_tokens.numpy()
        row += batch_tokens.shape[0]
        mask_parts.append(resize_masks(masks, config.target_size).to(torch.uint8))
        if sum(x.shape[0] for x in example_images) < num_examples:
            example_images.append(images[:num_examples])
    gt = torch.cat(mask_parts).to(torch.int64)  # (N, T, T)
    h, w = grid
    timings["features_s"] = time.perf_counter() - start

    start = time.perf_counter()
    points, pca_info = standardise_pca(tokens, config.pca_dim)
    del tokens
    timings["pca_s"] = time.perf_counter() - start

    results: dict[str, Any] = {}
    example_pred = None
    start = time.perf_counter()
    for k_option in config.ks:
        k = num_classes if int(k_option) == 0 else int(k_option)
        if k > points.shape[0]:
            warnings.append(
                f"K={k} exceeds the {points.shape[0]} points of the validation set: capped to {points.shape[0]}"
            )
            k = points.shape[0]
        scores, per_class = [], []
        for seed in config.seeds:
            assign = kmeans_assign(
                points,
                k,
                seed=int(seed),
                niter=config.niter,
                nredo=config.nredo,
                max_points_per_centroid=config.max_points_per_centroid,
            )
            maps = torch.from_numpy(assign).reshape(-1, 1, h, w).float()
            maps = F.interpolate(maps, size=(config.target_size,) * 2, mode="nearest-exact")[:, 0].to(
                torch.int64
            )  # (N, T, T)
            miou, mapping, iou = cluster_miou(maps, gt, k, num_classes, ignore)
            scores.append(miou)
            per_class.append(iou)
            if example_pred is None:
                example_pred = torch.from_numpy(
                    np.where(mapping[maps[:num_examples]] < 0, 255, mapping[maps[:num_examples]])
                )
        key = f"K={k}" + (" (#classes)" if int(k_option) == 0 else "")
        results[key] = {
            "k": k,
            "matching": "hungarian (1 - IoU)" if k <= num_classes else "many-to-one (precision)",
            "miou_mean": float(np.mean(scores)),
            "miou_std": float(np.std(scores)),
            "miou_per_seed": scores,
            "per_class_iou_mean": {
                n: (None if np.isnan(v) else 100.0 * float(v))
                for n, v in zip(val_set.class_names, np.nanmean(np.stack(per_class), 0))
            },
        }
    timings["kmeans_s"] = time.perf_counter() - start
    settings = asdict(config)
    settings.pop("extra")
    settings.update(
        {
            **pca_info,
            "standardisation": "per dimension (mean 0, std 1) over all validation tokens",
            "cluster_upsampling": "nearest to target_size",
            "gt_resize": "nearest to target_size, ignore removed",
            "ks_resolved": [num_classes if int(k) == 0 else int(k) for k in config.ks],
            **config.extra,
        }
    )
    result = {
        "protocol": "overcluster",
        "settings": settings,
        "dataset": {"val": val_set.describe()},
        "metrics": results,
        "num_points": int(points.shape[0]),
        "warnings": warnings,
        "timings": timings,
    }
    examples = None
    if example_pred is not None and example_images:
        images = torch.cat(example_images)[:num_examples]
        examples = Examples(
            images=images, masks=gt[: images.shape[0]], predictions=example_pred[: images.shape[0]]
        )
    return EvalOutput(result=result, examples=examples, warnings=warnings)
