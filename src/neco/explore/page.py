"""Interactive nearest-patch explorer: one self-contained HTML page of images and their patch features.

The page shows a grid of images; picking a patch (hover, click, tap or arrow keys) draws, in every image,
the cosine similarity of each patch to the picked one and marks its top-k nearest patches, for one or
two backbones side by side. Nothing is fetched: images (JPEG), features and the script are inlined.

To keep the file small the features are reduced before they are written: every patch feature is
L2-normalised, projected on the top-`dims` eigenvectors of the (uncentred) patch Gram matrix, which
best preserves the dot products, i.e. the cosines, and stored as int8 with one scale per reduced
dimension. The page computes cosines on these reduced, dequantised vectors, exactly as
`page_vectors` and `nearest_patches` do here (same operations in the same order, so the same
numbers), which is what the tests compare against.

Shape legend: N images, D feature dims, (h, w) patch grid, P = h * w patches per image, d reduced dims.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neco.utils.io import atomic_write
from neco.viz.pca import pca_rgb

__all__ = [
    "ExploreBackbone",
    "ReducedFeatures",
    "reduce_features",
    "page_vectors",
    "nearest_patches",
    "patch_labels",
    "retrieval_precision",
    "write_explore_html",
]


@dataclass(frozen=True)
class ReducedFeatures:
    """Patch features as the page stores them: int8 codes (N*P, d) times per-dimension `scales` (d,)."""

    codes: np.ndarray
    scales: np.ndarray
    energy: float  # fraction of the normalised features' energy the d dimensions keep (1 = all)


@dataclass(frozen=True)
class ExploreBackbone:
    """One backbone's column of the page: a display name and its patch features (N, D, h, w)."""

    name: str
    features: torch.Tensor | np.ndarray


def _as_array(features: torch.Tensor | np.ndarray) -> np.ndarray:
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if array.ndim != 4:
        raise ValueError(f"`features` must be (N, D, h, w) but has shape {tuple(array.shape)}")
    return array


def reduce_features(features: torch.Tensor | np.ndarray, dims: int = 64) -> ReducedFeatures:
    """L2-normalise (N, D, h, w) patch features, project them on `dims` principal axes, quantise to int8."""
    if dims < 1:
        raise ValueError(f"`dims` must be >= 1 but is {dims}")
    array = _as_array(features)
    n, d_in, h, w = array.shape
    x = torch.from_numpy(array.transpose(0, 2, 3, 1).reshape(n * h * w, d_in)).double()  # (N*P, D)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # Uncentred: the top eigenvectors of X^T X give the best rank-d approximation of all pairwise dots.
    eigenvalues, eigenvectors = torch.linalg.eigh(x.T @ x)  # ascending
    keep = min(dims, d_in)
    axes = eigenvectors.flip(1)[:, :keep]  # (D, d)
    energy = float(eigenvalues.flip(0)[:keep].sum() / eigenvalues.sum().clamp_min(1e-12))
    reduced = (x @ axes).numpy()  # (N*P, d)
    scales = np.abs(reduced).max(axis=0) / 127.0
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(reduced / scales), -127, 127).astype(np.int8)
    return ReducedFeatures(codes=codes, scales=scales.astype(np.float64), energy=min(energy, 1.0))


def page_vectors(reduced: ReducedFeatures) -> np.ndarray:
    """The unit float32 vectors (N*P, d) the page builds from the codes (same operations, same order)."""
    values = reduced.codes.astype(np.float64) * reduced.scales  # (N*P, d)
    squared = np.zeros(values.shape[0])
    for j in range(values.shape[1]):  # sequential sum over dims, as the page's loop
        squared = squared + values[:, j] * values[:, j]
    norms = np.sqrt(squared)
    norms[norms == 0] = np.inf  # a zero vector stays zero, as in the page
    return (values / norms[:, None]).astype(np.float32)


def nearest_patches(
    vectors: np.ndarray, query: int, k: int, patches_per_image: int, *, include_query_image: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosines of the `k` patches most similar to patch `query`, as the page marks them.

    Candidates are the patches of the other images (also the query's own image, without the query
    itself, when `include_query_image`); ties go to the lower index.
    """
    if not 0 <= query < vectors.shape[0]:
        raise ValueError(f"`query` must be in [0, {vectors.shape[0]}) but is {query}")
    q = vectors[query].astype(np.float64)
    sims = np.zeros(vectors.shape[0])
    for j in range(vectors.shape[1]):  # sequential sum over dims, as the page's loop
        sims = sims + vectors[:, j].astype(np.float64) * q[j]
    candidate = np.ones(vectors.shape[0], dtype=bool)
    image = query // patches_per_image
    if include_query_image:
        candidate[query] = False
    else:
        candidate[image * patches_per_image : (image + 1) * patches_per_image] = False
    index = np.flatnonzero(candidate)
    order = np.lexsort((index, -sims[index]))[:k]
    return index[order], sims[index[order]]


def patch_labels(masks: np.ndarray | torch.Tensor, patch_size: int, ignore_index: int = 255) -> np.ndarray:
    """Majority label of each patch of masks (N, H, W) -> (N, P) int64; -1 where the majority is ignored."""
    masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1] % patch_size or masks.shape[2] % patch_size:
        raise ValueError(
            f"`masks` must be (N, H, W) with H, W multiples of {patch_size} but has shape {tuple(masks.shape)}"
        )
    if masks.size and masks.min() < 0:
        raise ValueError(f"`masks` must hold labels >= 0 but holds {int(masks.min())}")
    n, height, width = masks.shape
    h, w = height // patch_size, width // patch_size
    cells = masks.reshape(n, h, patch_size, w, patch_size).transpose(0, 1, 3, 2, 4).reshape(n * h * w, -1)
    bins = int(masks.max()) + 1
    counts = np.bincount((cells + bins * np.arange(n * h * w)[:, None]).ravel(), minlength=n * h * w * bins)
    labels = counts.reshape(n * h * w, bins).argmax(axis=1).astype(np.int64)  # ties: the lower label
    labels[labels == ignore_index] = -1
    return labels.reshape(n, h * w)


def retrieval_precision(labels: np.ndarray, query: int, retrieved: Sequence[int]) -> float | None:
    """Share of the labelled retrieved patches whose label equals the query's (None: nothing to compare)."""
    flat = np.asarray(labels).reshape(-1)
    if flat[query] < 0:
        return None
    valid = [int(flat[i]) for i in retrieved if flat[i] >= 0]
    return sum(v == flat[query] for v in valid) / len(valid) if valid else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _jpeg_data_uri(image: np.ndarray, quality: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + _b64(buffer.getvalue())


def _asset(name: str) -> str:
    return resources.files("neco.explore").joinpath("assets", name).read_text(encoding="utf-8")


def write_explore_html(
    path: str | Path,
    images: np.ndarray,
    backbones: Sequence[ExploreBackbone],
    *,
    patch_size: int,
    k: int = 10,
    dims: int = 64,
    image_names: Sequence[str] | None = None,
    masks: np.ndarray | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str = "neco explore",
    jpeg_quality: int = 85,
) -> Path:
    """Write the explorer page for `images` (N, S, S, 3) uint8 and one or two backbones' features.

    Args:
        path: the HTML file to write (atomically).
        images: the images as the backbones saw them (resized, not normalised), uint8 (N, S, S, 3).
        backbones: one or two `ExploreBackbone`s with features (N, D, S / patch_size, S / patch_size).
        patch_size: pixels per patch side.
        k: nearest patches marked initially (the page can change it).
        dims: reduced dimensions stored per patch (see the module docstring).
        image_names: captions (default: image 0, 1, ...).
        masks: optional ground truth (N, S, S); the page then colours retrieved patches by label agreement
            and shows the retrieval precision of the picked patch.
        class_names: names of the labels in `masks`.
        ignore_index: the label of unlabelled pixels in `masks`.
        title: page title.
        jpeg_quality: quality of the inlined JPEG images.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"`images` must be uint8 (N, S, S, 3) but is {images.dtype} {tuple(images.shape)}")
    n, height, width = images.shape[:3]
    if not 1 <= len(backbones) <= 2:
        raise ValueError(f"`backbones` must hold one or two backbones but holds {len(backbones)}")
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} must be a multiple of `patch_size` {patch_size}")
    if k < 1:
        raise ValueError(f"`k` must be >= 1 but is {k}")
    grid = (height // patch_size, width // patch_size)
    names = list(image_names) if image_names is not None else [f"image {i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"`image_names` must name the {n} images but names {len(names)}")
    columns = []
    for backbone in backbones:
        features = _as_array(backbone.features)
        if features.shape[0] != n or tuple(features.shape[2:]) != grid:
            raise ValueError(
                f"features of {backbone.name!r} must be ({n}, D, {grid[0]}, {grid[1]}) "
                f"but have shape {tuple(features.shape)}"
            )
        reduced = reduce_features(features, dims)
        colours = pca_rgb(torch.from_numpy(features.astype(np.float32)))  # (N, h, w, 3)
        columns.append(
            {
                "name": backbone.name,
                "dim": int(features.shape[1]),
                "energy": reduced.energy,
                "scales": [float(s) for s in reduced.scales],
                "codes": _b64(reduced.codes.tobytes()),
                "pca": _b64(np.ascontiguousarray(colours).tobytes()),
            }
        )
    labels = None
    if masks is not None:
        mask_array = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        if mask_array.shape != (n, height, width):
            raise ValueError(f"`masks` must be ({n}, {height}, {width}) but has shape {mask_array.shape}")
        per_patch = patch_labels(mask_array, patch_size, ignore_index)
        top = int(per_patch.max()) if per_patch.size else -1
        label_names = list(class_names) if class_names is not None else []
        label_names += [f"class {c}" for c in range(len(label_names), top + 1)]
        labels = {"values": per_patch.reshape(-1).tolist(), "names": label_names}
    data = {
        "title": title,
        "input_size": [height, width],
        "patch": patch_size,
        "grid": list(grid),
        "k": k,
        "images": [
            {"name": name, "src": _jpeg_data_uri(image, jpeg_quality)} for name, image in zip(names, images)
        ],
        "backbones": columns,
        "labels": labels,
    }
    # "</" inside a script element would end it early; JSON allows the escaped form.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    parts = {
        "TITLE": html.escape(title),
        "CSS": _asset("explore.css"),
        "DATA": payload,
        "JS": _asset("explore.js"),
    }
    # One pass, so a placeholder-like text inside the data is never substituted.
    page = re.sub(r"\{\{(TITLE|CSS|DATA|JS)\}\}", lambda m: parts[m.group(1)], _asset("explore.html"))
    return atomic_write(path, lambda handle: handle.write(page), mode="w")
