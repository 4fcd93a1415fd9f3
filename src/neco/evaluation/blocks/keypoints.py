"""Keypoint-transfer blocks of the correspondence protocol: feature matching, PCK, chance PCK.

Coordinates are continuous pixel positions with the image spanning [0, W] x [0, H]; see
`neco/evaluation/protocols/correspondence.py` for the conventions. The `probe3d_*` blocks follow
Probe3D's SPair-71k evaluation instead (El Banani et al., CVPR 2024; its conventions are listed in
the correspondence protocol's docstring).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "REFINEMENTS",
    "resize_keypoints",
    "transfer_keypoints",
    "pck_correct",
    "summarise_pck",
    "chance_pck",
    "breakdown",
    "PROBE3D_BUCKETS",
    "PROBE3D_SEED",
    "probe3d_sample",
    "probe3d_image",
    "pad_to_patches",
    "probe3d_keypoints",
    "probe3d_errors",
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


#: viewpoint-variation buckets of Probe3D's table: SPair's `viewpoint_variation` 0, 1, 2, and every pair
PROBE3D_BUCKETS = ("vp0", "vp1", "vp2", "all")
#: Probe3D seeds Python's `random` with 20 before each bucket's shuffle (its config's `random_seed: 8`
#: is not what the dataset reads)
PROBE3D_SEED = 20


def probe3d_sample(
    labels: Sequence[tuple[str, int]], cap: int | None, seed: int = PROBE3D_SEED
) -> dict[str, dict[str, list[int]]]:
    """Pair indices per category and bucket: the pairs of each, shuffled by `random.Random(seed)`, first `cap`.

    Args:
        labels: (category, viewpoint_variation) of every pair, in the order the shuffle starts from.
        cap: pairs kept per category and bucket (Probe3D: 200); None or 0 keeps all, unshuffled.
        seed: the shuffle's seed.
    Returns:
        category (sorted) -> bucket (`PROBE3D_BUCKETS`) -> pair indices; empty buckets hold [].
    """
    out: dict[str, dict[str, list[int]]] = {}
    for category in sorted({c for c, _ in labels}):
        out[category] = {}
        for bucket in PROBE3D_BUCKETS:
            members = [
                i
                for i, (c, vp) in enumerate(labels)
                if c == category and (bucket == "all" or f"vp{vp}" == bucket)
            ]
            if cap:
                # a fresh generator per bucket: the same draw as seeding the global one before each shuffle
                random.Random(seed).shuffle(members)
                members = members[:cap]
            out[category][bucket] = members
    return out


def probe3d_image(image: Image.Image, size: int) -> tuple[torch.Tensor, int]:
    """(ImageNet-normalised (3, size, size) tensor, padded side) of an RGB image padded white at right/bottom.

    The image is padded to a square of its longer side with white (255) below and to the right, so
    pixel coordinates keep their origin, then resized to `size` x `size` with PIL's bicubic filter.
    """
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image.convert("RGB"), (0, 0))
    square = square.resize((size, size), Image.BICUBIC)
    return TF.normalize(TF.to_tensor(square), IMAGENET_MEAN, IMAGENET_STD), side


def pad_to_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) images to whole patches, the odd pixel of each side's padding at right/bottom."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % patch_size, -width % patch_size
    if not (pad_h or pad_w):
        return images
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def probe3d_keypoints(kps: np.ndarray, side: int, size: int) -> torch.Tensor:
    """(K, 2) int64 keypoints in pixels of the `size` square: truncated to whole pixels, scaled, truncated again.

    Probe3D holds keypoints as integers: the annotated (x, y) are truncated, multiplied by
    size / side (side: the padded square's) and truncated again; integer division gives the same
    truncation without a float round trip.
    """
    whole = torch.from_numpy(np.trunc(np.asarray(kps, dtype=np.float64))).long()
    return torch.div(whole * size, side, rounding_mode="trunc")


def probe3d_errors(
    src_grid: torch.Tensor,
    trg_grid: torch.Tensor,
    src_kps: torch.Tensor,
    trg_kps: torch.Tensor,
    size: int,
    thresh_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(errors (K,), predictions (K, 2)) of one pair's keypoints, in Probe3D's units and float32 arithmetic.

    Args:
        src_grid, trg_grid: (D, h, w) L2-normalised features of the source and target (square grid).
        src_kps, trg_kps: (K, 2) integer keypoints (x, y) in pixels of the `size` square.
        size: side of the square the keypoints live in.
        thresh_scale: max(target box side) / max(target image side).
    Returns:
        errors: distance of each prediction to the true target point, as a fraction of the padded
            target square, divided by `thresh_scale` (so `< alpha` is PCK@alpha of the box).
        predictions: (K, 2) the matched cell's (column, row) / w, in units of the square side.
    """
    width = trg_grid.shape[-1]
    # align_corners=True: -1 / +1 are the centres of the border cells
    where = (src_kps.float() / size * 2 - 1)[None, None].to(src_grid.device)  # (1, 1, K, 2)
    queries = F.grid_sample(src_grid[None], where, mode="bilinear", align_corners=True)[0, :, 0].t()  # (K, D)
    heatmaps = torch.einsum("kd,dhw->khw", queries, trg_grid).flatten(1)  # (K, h*w)
    best = heatmaps.argmax(dim=-1).cpu()
    predictions = torch.stack((best % width, best // width), dim=-1).float() / width  # (K, 2)
    errors = (predictions - trg_kps.float() / size).norm(p=2, dim=-1) / thresh_scale
    return errors, predictions
