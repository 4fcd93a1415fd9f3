"""Keypoint-transfer blocks of the correspondence protocol: feature matching, PCK, chance PCK.

Coordinates are continuous pixel positions with the image spanning [0, W] x [0, H]; see
`neco/evaluation/protocols/correspondence.py` for the conventions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "REFINEMENTS",
    "resize_keypoints",
    "transfer_keypoints",
    "pck_correct",
    "summarise_pck",
    "chance_pck",
    "breakdown",
]

REFINEMENTS = ("argmax", "softargmax")


def resize_keypoints(
    kps: np.ndarray | torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
) -> np.ndarray | torch.Tensor:
    """Scale (..., 2) keypoints (x, y) from an image of (W, H) `from_size` to one of (W, H) `to_size`."""
    scale = [to_size[0] / from_size[0], to_size[1] / from_size[1]]
    if isinstance(kps, torch.Tensor):
        return kps * kps.new_tensor(scale)
    return np.asarray(kps, dtype=np.float64) * np.asarray(scale)


def _cell_centres(height: int, width: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(height * width, 2) centres (x, y) of the grid cells in pixels of an image of (W, H) `size`."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * (size[1] / height)
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * (size[0] / width)
    return torch.cartesian_prod(ys, xs).flip(1)  # (h*w, 2), rows in row-major cell order


def transfer_keypoints(
    src_features: torch.Tensor,
    trg_features: torch.Tensor,
    src_kps: torch.Tensor,
    image_size: tuple[int, int],
    *,
    refine: str = "argmax",
    window: int = 2,
    temperature: float = 0.02,
    upsample: int = 1,
) -> torch.Tensor:
    """Predict target keypoints (B, K, 2) in input pixels from source keypoints (B, K, 2) in input pixels.

    Args:
        src_features: (B, D, h, w) source patch features.
        trg_features: (B, D, h', w') target patch features.
        src_kps: (B, K, 2) source keypoints (x, y) in pixels of the (W, H) `image_size` input; NaN rows
            give NaN predictions.
        image_size: (W, H) of the network input of both images.
        refine: one of REFINEMENTS.
        window: soft-argmax half-width in grid cells.
        temperature: soft-argmax temperature.
        upsample: bilinear upsampling factor of the target grid before matching.
    """
    if refine not in REFINEMENTS:
        raise ValueError(f"`refine` must be one of {sorted(REFINEMENTS)} but is {refine!r}")
    if src_features.ndim != 4 or trg_features.ndim != 4 or src_kps.ndim != 3:
        raise ValueError(
            "`src_features`, `trg_features` must be (B, D, h, w) and `src_kps` (B, K, 2) but are "
            f"{tuple(src_features.shape)}, {tuple(trg_features.shape)}, {tuple(src_kps.shape)}"
        )
    if src_kps.shape[1] == 0:
        return src_kps.new_zeros(src_kps.shape, dtype=torch.float32)  # (B, 0, 2)
    src_features = F.normalize(src_features.float(), dim=1)
    trg_features = trg_features.float()
    if upsample > 1:
        trg_features = F.interpolate(
            trg_features, scale_factor=upsample, mode="bilinear", align_corners=False
        )
    trg_features = F.normalize(trg_features, dim=1)
    batch, dim, height, width = trg_features.shape
    kps = src_kps.to(src_features.device, torch.float32)
    absent = ~torch.isfinite(kps).all(-1)  # (B, K)
    size = kps.new_tensor([float(image_size[0]), float(image_size[1])])
    grid = (2.0 * torch.nan_to_num(kps) / size - 1.0)[:, None]  # (B, 1, K, 2) in [-1, 1]
    sampled = F.grid_sample(src_features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    queries = F.normalize(sampled[:, :, 0].transpose(1, 2), dim=-1)  # (B, K, D)
    # b = batch, k = keypoints, d = channels, n = target cells
    similarity = torch.einsum("bkd,bdn->bkn", queries, trg_features.reshape(batch, dim, -1))  # (B, K, h*w)
    centres = _cell_centres(height, width, image_size, similarity.device)  # (h*w, 2)
    best = similarity.argmax(dim=-1)  # (B, K)
    if refine == "argmax":
        predicted = centres[best]  # (B, K, 2)
    else:
        # the cells within `window` rows and columns of the best one; (row, column) of every cell: (h*w, 2)
        cells = torch.cartesian_prod(torch.arange(height), torch.arange(width)).to(similarity.device)
        near = (cells[best][..., None, :] - cells).abs().amax(dim=-1) <= window  # (B, K, h*w)
        logits = (similarity / temperature).masked_fill(~near, float("-inf"))
        weights = torch.softmax(logits, dim=-1)  # (B, K, h*w)
        predicted = torch.einsum("bkn,nc->bkc", weights, centres)  # (B, K, 2)
    return predicted.masked_fill(absent[..., None], float("nan"))


def pck_correct(
    predicted: np.ndarray, target: np.ndarray, reference: np.ndarray | float, alpha: float
) -> np.ndarray:
    """(N,) bool: ||predicted - target|| <= alpha * reference for (N, 2) points and (N,) reference sizes."""
    distance = np.linalg.norm(np.asarray(predicted, float) - np.asarray(target, float), axis=-1)
    return distance <= alpha * np.asarray(reference, float)


def summarise_pck(
    distances: np.ndarray,
    references: dict[str, np.ndarray],
    pair_index: np.ndarray,
    alphas: Sequence[float],
) -> dict[str, float]:
    """PCK in percent per threshold kind and alpha, over keypoints (`pck_<kind>@a`) and pairs (`..._per_pair`).

    Args:
        distances: (N,) prediction errors in target pixels of N keypoints.
        references: kind -> (N,) reference size (max side of the target box or image).
        pair_index: (N,) pair of each keypoint, for the per-pair mean.
        alphas: PCK thresholds.
    """
    out: dict[str, float] = {}
    if len(distances) == 0:
        return {
            f"pck_{k}@{a:g}{s}": float("nan") for k in references for a in alphas for s in ("", "_per_pair")
        }
    _, inverse = np.unique(pair_index, return_inverse=True)
    counts = np.bincount(inverse)
    for kind, reference in references.items():
        for alpha in alphas:
            correct = distances <= alpha * reference
            out[f"pck_{kind}@{alpha:g}"] = 100.0 * float(correct.mean())
            per_pair = np.bincount(inverse, weights=correct.astype(float)) / counts
            out[f"pck_{kind}@{alpha:g}_per_pair"] = 100.0 * float(per_pair.mean())
    return out


def chance_pck(
    targets: torch.Tensor,
    references: torch.Tensor,
    alpha: float,
    grid: tuple[int, int],
    input_size: tuple[int, int],
    target_size: torch.Tensor,
) -> torch.Tensor:
    """(N,) probability that a uniformly random grid cell's centre is a correct match for each keypoint.

    Args:
        targets: (N, 2) true target keypoints in original target pixels.
        references: (N,) reference sizes (box or image max side) in original target pixels.
        alpha: PCK threshold.
        grid: (h, w) of the matching grid.
        input_size: (W, H) of the network input.
        target_size: (N, 2) original (W, H) of each keypoint's target image.
    """
    centres = _cell_centres(grid[0], grid[1], input_size, targets.device)  # (h*w, 2) input pixels
    scale = target_size.float() / targets.new_tensor([float(input_size[0]), float(input_size[1])])  # (N, 2)
    in_target = centres[None] * scale[:, None]  # (N, h*w, 2) original target pixels
    distance = (in_target - targets[:, None].float()).norm(dim=-1)  # (N, h*w)
    return (distance <= alpha * references[:, None]).float().mean(dim=1)


def breakdown(
    distances: np.ndarray,
    references: dict[str, np.ndarray],
    pair_index: np.ndarray,
    labels: np.ndarray,
    alphas: Sequence[float],
) -> dict[str, dict[str, float]]:
    """`summarise_pck` of the keypoints of every label (sorted), with their numbers of pairs and keypoints."""
    out = {}
    for label in sorted(set(labels.tolist())):
        keep = labels == label
        out[str(label)] = {
            "num_pairs": int(len(np.unique(pair_index[keep]))),
            "num_keypoints": int(keep.sum()),
            **summarise_pck(
                distances[keep], {k: v[keep] for k, v in references.items()}, pair_index[keep], alphas
            ),
        }
    return out
