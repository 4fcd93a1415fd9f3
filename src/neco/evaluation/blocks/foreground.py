"""Cluster-based foreground extraction (CBFE).

1. Spherical k-means (K = 200; tokens and centroids on the unit sphere, cosine assignment) over all
   patch tokens of the train split.
2. Clusters ranked by their precision against the noisy attention foreground: the fraction of a
   cluster's tokens that the (thresholded CLS-attention) mask calls foreground; ties broken by the
   larger cluster first.
3. The top `cut` clusters are foreground. `cut` is chosen on the train split among the integers in
   [ceil(lo * K), floor(hi * K)] (published range 55% to 75% of K) as the one with the largest pooled
   Jaccard against GT foreground (labels not 0 and not ignore; cluster maps nearest-upsampled to the
   mask resolution).
4. Validation tokens are assigned to the nearest train centroid and keep the train ranking and cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neco.evaluation.blocks.clustering import faiss_kmeans
from neco.evaluation.blocks.transforms import resize_ids

__all__ = [
    "CBFEModel",
    "assign_spherical",
    "rank_clusters",
    "cut_candidates",
    "cut_jaccards",
    "fit_cbfe",
]


def _unit(points: np.ndarray) -> np.ndarray:
    points = np.ascontiguousarray(points, dtype=np.float32)
    return points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)


def assign_spherical(points: np.ndarray, centroids: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Index (N,) int64 of the centroid with the largest cosine similarity to each point."""
    cent = torch.from_numpy(_unit(centroids))
    out = np.empty(points.shape[0], dtype=np.int64)
    for s in range(0, points.shape[0], chunk):
        block = torch.from_numpy(_unit(points[s : s + chunk]))
        out[s : s + chunk] = (block @ cent.T).argmax(1).numpy()  # (n, k) similarities
    return out


def rank_clusters(assign: np.ndarray, noisy_fg: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rank (k,), precision (k,)): rank 0 = the cluster most often inside the noisy foreground.

    Empty clusters have precision 0 and go last.
    """
    counts = np.bincount(assign, minlength=k).astype(np.float64)
    hits = np.bincount(assign, weights=noisy_fg.astype(np.float64), minlength=k)
    precision = np.divide(hits, counts, out=np.zeros(k), where=counts > 0)
    order = np.lexsort((-counts, -precision))  # by precision, then size, both descending
    return np.argsort(order), precision  # the inverse permutation: each cluster's place in `order`


def cut_candidates(k: int, cut_range: tuple[float, float]) -> list[int]:
    """The cluster counts tried as foreground: integers in [ceil(lo*k), floor(hi*k)], at least one."""
    lo = max(1, math.ceil(cut_range[0] * k - 1e-9))
    hi = min(k, math.floor(cut_range[1] * k + 1e-9))
    return list(range(lo, max(lo, hi) + 1))


def cut_jaccards(
    cluster_maps: torch.Tensor, rank: np.ndarray, fg: torch.Tensor, valid: torch.Tensor
) -> np.ndarray:
    """Pooled Jaccard (k + 1,) of "top-c ranked clusters are foreground" for every c = 0..k.

    `cluster_maps` (N, h, w) cluster ids, upsampled to the (N, T, T) GT maps `fg` / `valid`.
    """
    k = len(rank)
    up = resize_ids(cluster_maps, fg.shape[-1]).long()[valid]  # valid pixels' cluster ids
    fg_valid = fg[valid]
    total = np.bincount(up.numpy(), minlength=k).astype(np.float64)
    inside = np.bincount(up.numpy(), weights=fg_valid.numpy().astype(np.float64), minlength=k)
    order = np.argsort(rank)  # clusters from rank 0 up
    tp = np.concatenate([[0.0], np.cumsum(inside[order])])
    fp = np.concatenate([[0.0], np.cumsum(total[order] - inside[order])])
    union = float(fg_valid.sum()) + fp
    return np.divide(tp, union, out=np.ones_like(tp), where=union > 0)


@dataclass
class CBFEModel:
    """Fitted CBFE: unit centroids, cluster ranking, chosen cut, and what was measured when fitting."""

    centroids: np.ndarray
    rank: np.ndarray
    cut: int
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, tokens: np.ndarray, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(foreground bool (N, h, w), cluster ids (N, h, w)) of (N*h*w, D) tokens."""
        assign = assign_spherical(tokens, self.centroids)
        ids = torch.from_numpy(assign).reshape(-1, *grid)  # (N, h, w)
        return torch.from_numpy(self.rank)[ids] < self.cut, ids


def fit_cbfe(
    tokens: np.ndarray,
    grid: tuple[int, int],
    noisy_fg: torch.Tensor,
    fg: torch.Tensor,
    valid: torch.Tensor,
    *,
    k: int = 200,
    cut_range: tuple[float, float] = (0.55, 0.75),
    niter: int = 50,
    nredo: int = 1,
    seed: int = 0,
    max_points_per_centroid: int = 256,
) -> CBFEModel:
    """Fit CBFE on one split: (N*h*w, D) tokens, (N, h, w) noisy attention masks, (N, T, T) GT fg/valid.

    Defaults are the published settings; the unsupervised protocol's settings validate them.
    """
    n_points = tokens.shape[0]
    if noisy_fg.numel() != n_points:
        raise ValueError(
            f"`noisy_fg` must hold one value per token ({n_points}) but holds {noisy_fg.numel()}"
        )
    k = min(int(k), n_points)
    kmeans = faiss_kmeans(
        _unit(tokens),
        k,
        seed=seed,
        niter=niter,
        nredo=nredo,
        max_points_per_centroid=max_points_per_centroid,
        spherical=True,
    )
    centroids = _unit(kmeans.centroids)  # spherical k-means: unit centroids, cosine assignment
    assign = assign_spherical(tokens, centroids)
    rank, precision = rank_clusters(assign, noisy_fg.reshape(-1).numpy(), k)
    jaccards = cut_jaccards(torch.from_numpy(assign).reshape(-1, *grid), rank, fg, valid)
    candidates = cut_candidates(k, cut_range)
    cut = max(candidates, key=lambda c: (jaccards[c], -c))
    info = {
        "k": k,
        "cut_range": list(cut_range),
        "cut_candidates": [candidates[0], candidates[-1]],
        "cut": int(cut),
        "cut_fraction": cut / k,
        "train_jaccard_at_cut": 100.0 * float(jaccards[cut]),
        "train_jaccard_best_any_cut": 100.0 * float(jaccards.max()),
        "train_best_any_cut": int(jaccards.argmax()),
        "precision_at_cut": float(precision[np.argsort(rank)][cut - 1]),
        "seed": seed,
        "niter": niter,
        "nredo": nredo,
        "kmeans": "spherical-faiss",
    }
    return CBFEModel(centroids=centroids, rank=rank, cut=int(cut), info=info)
