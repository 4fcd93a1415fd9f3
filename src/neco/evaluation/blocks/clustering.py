"""Clustering blocks: per-dimension standardisation + PCA, and faiss k-means assignments."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["standardise_pca", "faiss_kmeans", "kmeans_assign"]


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


def faiss_kmeans(
    points: np.ndarray,
    k: int,
    *,
    seed: int,
    niter: int,
    nredo: int,
    max_points_per_centroid: int,
    spherical: bool = False,
) -> Any:
    """A trained `faiss.Kmeans` over (N, d) float32 points (clusters may hold a single point)."""
    import faiss

    kmeans = faiss.Kmeans(
        points.shape[1],
        int(k),
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=spherical,
        verbose=False,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,
    )
    kmeans.train(points)
    return kmeans


def kmeans_assign(points: np.ndarray, k: int, **options: Any) -> np.ndarray:
    """Cluster id (N,) int64 of every one of (N, d) float32 points after `faiss_kmeans(points, k, **options)`."""
    _, assign = faiss_kmeans(points, k, **options).index.search(points, 1)
    return assign[:, 0].astype(np.int64)
