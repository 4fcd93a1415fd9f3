"""Semantic correspondence by keypoint transfer (SPair-71k protocol), scored by PCK.

For each pair both images are resized to a square `input_size` (keypoints scaled with them, x and
y separately) and mapped to patch features (B, D, h, w) by any backbone. Each source keypoint's
feature is sampled bilinearly from the source grid; the target grid cell with the highest cosine
similarity is the match (optionally refined by a soft-argmax over a window around it, optionally
on target features upsampled bilinearly). The match is mapped back to original target pixels.

Coordinates: keypoints are continuous pixel positions with the image spanning [0, W] x [0, H].
`grid_sample(..., align_corners=False)` uses that convention: -1 and +1 are the outer edges of the
border cells, so a keypoint x in an input of width S samples at u = 2x / S - 1, and grid cell j
of w has its centre at (j + 0.5) S / w, which is where a match on cell j is placed.

PCK@alpha: a prediction is correct when its distance to the true target point is <= alpha *
max(h, w) of the target bounding box (SPair convention; `bbox`) or of the target image (`image`).
Reported per keypoint (all keypoints pooled; the usual SPair number), per pair (mean of each pair's
PCK), as the mean over categories, per category and per variation label. Absent keypoints (NaN in
either image) are skipped and counted. `chance` is the PCK a uniformly random target cell would
get in expectation (what random features score with argmax matching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from neco.evaluation.backbone import FeaturesFn
from neco.evaluation.common import EvalOutput, check_divisible
from neco.evaluation.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CorrespondenceConfig",
    "run_correspondence",
    "transfer_keypoints",
    "resize_keypoints",
    "pck_correct",
    "summarise_pck",
    "chance_pck",
    "REFINEMENTS",
    "THRESHOLDS",
]

REFINEMENTS: dict[str, str] = {
    "argmax": "centre of the most similar target cell",
    "softargmax": "softmax-weighted mean of cell centres in a window around the most similar cell",
}
THRESHOLDS: dict[str, str] = {
    "bbox": "alpha * max(h, w) of the target bounding box (SPair convention)",
    "image": "alpha * max(h, w) of the target image",
}


@dataclass(frozen=True)
class CorrespondenceConfig:
    """Settings of the keypoint-transfer evaluation."""

    input_size: int = 448
    alphas: tuple[float, ...] = (0.05, 0.1, 0.15)
    refine: str = "argmax"
    window: int = 2  # soft-argmax half-width in (upsampled) grid cells
    temperature: float = 0.02  # soft-argmax temperature on cosine similarities
    upsample: int = 1  # bilinear upsampling factor of the target feature grid
    figure_alpha: float = 0.1  # bbox threshold that colours the figure
    batch_size: int = 8  # pairs per backbone forward (2 images each)
    num_workers: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        if self.input_size < 1:
            raise ValueError(f"`input_size` must be >= 1 but is {self.input_size}")
        if not self.alphas or any(not 0 < a <= 1 for a in self.alphas):
            raise ValueError(f"`alphas` must be values in (0, 1] but is {self.alphas}")
        if self.refine not in REFINEMENTS:
            raise ValueError(f"`refine` must be one of {sorted(REFINEMENTS)} but is {self.refine!r}")
        if self.window < 0:
            raise ValueError(f"`window` must be >= 0 but is {self.window}")
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be > 0 but is {self.temperature}")
        if self.upsample < 1:
            raise ValueError(f"`upsample` must be >= 1 but is {self.upsample}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1 but is {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0 but is {self.num_workers}")


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
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)  # (h*w, 2)


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
        rows, cols = best // width, best % width
        cell_rows = torch.arange(height, device=similarity.device).repeat_interleave(width)  # (h*w,)
        cell_cols = torch.arange(width, device=similarity.device).repeat(height)  # (h*w,)
        near = ((cell_rows - rows[..., None]).abs() <= window) & (
            (cell_cols - cols[..., None]).abs() <= window
        )
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


class _PairTensors(torch.utils.data.Dataset):
    """Pairs as network inputs: both images resized to a square and normalised, keypoints scaled."""

    def __init__(self, dataset: Any, input_size: int) -> None:
        self.dataset, self.input_size = dataset, input_size

    def __len__(self) -> int:
        return len(self.dataset)

    def _image(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        resized = image.resize((self.input_size, self.input_size), Image.Resampling.BILINEAR)
        return TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.dataset[index]
        square = (self.input_size, self.input_size)
        valid = pair.valid
        src_kps = np.where(valid[:, None], pair.src_kps, np.nan)
        trg_kps = np.where(valid[:, None], pair.trg_kps, np.nan)
        box = pair.trg_bbox
        return {
            "src": self._image(pair.src_image),
            "trg": self._image(pair.trg_image),
            "src_kps": torch.as_tensor(
                resize_keypoints(src_kps, pair.src_image.size, square), dtype=torch.float32
            ),
            "trg_kps": torch.as_tensor(trg_kps, dtype=torch.float64),
            "trg_size": torch.tensor(pair.trg_image.size, dtype=torch.float64),
            "bbox_size": float(max(box[2] - box[0], box[3] - box[1])),
            "src_outside": int(
                ((src_kps < 0) | (src_kps > np.asarray(pair.src_image.size))).any(1)[valid].sum()
            ),
            "absent": int((~valid).sum()),
            "category": pair.category,
            "variations": dict(pair.variations),
            "index": index,
        }


def _pad(tensors: list[torch.Tensor]) -> torch.Tensor:
    size = max(t.shape[0] for t in tensors)
    out = torch.full((len(tensors), size, 2), float("nan"), dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out  # (B, Kmax, 2), NaN padding


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "src": torch.stack([i["src"] for i in items]),
        "trg": torch.stack([i["trg"] for i in items]),
        "src_kps": _pad([i["src_kps"] for i in items]),
        "trg_kps": _pad([i["trg_kps"] for i in items]),
        "trg_size": torch.stack([i["trg_size"] for i in items]),
        "bbox_size": torch.tensor([i["bbox_size"] for i in items], dtype=torch.float64),
        "src_outside": sum(i["src_outside"] for i in items),
        "absent": sum(i["absent"] for i in items),
        "category": [i["category"] for i in items],
        "variations": [i["variations"] for i in items],
        "index": [i["index"] for i in items],
    }


def _breakdown(
    distances: np.ndarray,
    references: dict[str, np.ndarray],
    pair_index: np.ndarray,
    labels: np.ndarray,
    alphas: Sequence[float],
) -> dict[str, dict[str, float]]:
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


def run_correspondence(
    features_fn: FeaturesFn,
    dataset: Any,
    config: CorrespondenceConfig,
    *,
    patch_size: int,
    progress: bool = True,
    num_examples: int = 4,
) -> EvalOutput:
    """Keypoint transfer over every pair of `dataset` (items like `neco.data.spair.CorrespondencePair`).

    Returns an EvalOutput whose `result` holds `metrics` (PCK over all keypoints, per pair and as a
    category mean), `chance`, `per_category` and `per_variation`; `examples` is a list of
    `neco.viz.keypoints.KeypointMatch` for the first `num_examples` pairs.
    """
    from tqdm.auto import tqdm

    from neco.data.spair import SPAIR_VARIATIONS, variation_name
    from neco.viz.keypoints import KeypointMatch

    config.validate()
    check_divisible(config.input_size, patch_size)
    if len(dataset) == 0:
        raise ValueError("`dataset` must hold at least one pair but is empty")
    loader = torch.utils.data.DataLoader(
        _PairTensors(dataset, config.input_size),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.num_workers,
        collate_fn=_collate,
    )
    square = (config.input_size, config.input_size)
    records: dict[str, list[Any]] = {k: [] for k in ("distance", "bbox", "image", "pair", "chance")}
    pair_labels: dict[int, tuple[str, dict[str, int]]] = {}
    predictions: dict[int, np.ndarray] = {}
    skipped = outside = empty_pairs = 0
    grid: tuple[int, int] | None = None
    for batch in tqdm(loader, desc="correspondence", disable=not progress, leave=False):
        count = batch["src"].shape[0]
        features = features_fn(torch.cat([batch["src"], batch["trg"]]))  # (2B, D, h, w)
        predicted = transfer_keypoints(
            features[:count],
            features[count:],
            batch["src_kps"],
            square,
            refine=config.refine,
            window=config.window,
            temperature=config.temperature,
            upsample=config.upsample,
        ).cpu()  # (B, K, 2) input pixels
        grid = (features.shape[-2] * config.upsample, features.shape[-1] * config.upsample)
        # back to original target pixels, in float64 for the distance arithmetic
        scale = batch["trg_size"] / torch.tensor(square, dtype=torch.float64)  # (B, 2)
        predicted = predicted.double() * scale[:, None]
        outside += batch["src_outside"]
        skipped += batch["absent"]
        for b in range(count):
            index = batch["index"][b]
            pair_labels[index] = (batch["category"][b], batch["variations"][b])
            trg = batch["trg_kps"][b]
            keep = torch.isfinite(trg).all(-1) & torch.isfinite(batch["src_kps"][b]).all(-1)
            if len(predictions) < num_examples:
                predictions[index] = predicted[b].numpy()
            if not keep.any():
                empty_pairs += 1
                continue
            n = int(keep.sum())
            image_side = float(batch["trg_size"][b].max())
            bbox_side = float(batch["bbox_size"][b])
            records["distance"].append((predicted[b][keep] - trg[keep]).norm(dim=-1).numpy())
            records["bbox"].append(np.full(n, bbox_side))
            records["image"].append(np.full(n, image_side))
            records["pair"].append(np.full(n, index))
            chance = [
                chance_pck(
                    trg[keep],
                    torch.full((n,), side, dtype=torch.float64),
                    alpha,
                    grid,
                    square,
                    batch["trg_size"][b].expand(n, 2),
                ).numpy()
                for alpha in config.alphas
                for side in (bbox_side, image_side)
            ]
            records["chance"].append(np.stack(chance, axis=1))  # (n, alphas * 2)
    if not records["distance"]:
        raise ValueError("no pair has a keypoint present in both images; nothing to evaluate")
    distance = np.concatenate(records["distance"])
    references = {"bbox": np.concatenate(records["bbox"]), "image": np.concatenate(records["image"])}
    pair_index = np.concatenate(records["pair"])
    chance_table = np.concatenate(records["chance"]).mean(0)
    categories = np.array([pair_labels[int(i)][0] for i in pair_index])

    metrics = summarise_pck(distance, references, pair_index, config.alphas)
    per_category = _breakdown(distance, references, pair_index, categories, config.alphas)
    for kind in references:
        for alpha in config.alphas:
            key = f"pck_{kind}@{alpha:g}"
            metrics[f"{key}_category_mean"] = float(np.mean([v[key] for v in per_category.values()]))
    per_variation = {}
    for name in SPAIR_VARIATIONS:
        labels = np.array([variation_name(name, pair_labels[int(i)][1].get(name, 0)) for i in pair_index])
        per_variation[name] = _breakdown(distance, references, pair_index, labels, config.alphas)
    chance = {
        f"pck_{kind}@{alpha:g}": 100.0 * float(chance_table[2 * a + k])
        for a, alpha in enumerate(config.alphas)
        for k, kind in enumerate(("bbox", "image"))
    }
    warnings = []
    if skipped:
        warnings.append(f"{skipped} keypoints absent in the source or target image were skipped")
    if empty_pairs:
        warnings.append(f"{empty_pairs} pairs had no keypoint present in both images and were skipped")
    if outside:
        warnings.append(
            f"{outside} source keypoints lie outside their image (features clamped to the border)"
        )

    examples = []
    for index, pred in predictions.items():
        pair = dataset[index]
        box = pair.trg_bbox
        side = max(box[2] - box[0], box[3] - box[1])
        pred = pred[: len(pair.trg_kps)]
        correct = np.isfinite(pair.trg_kps).all(1) & pck_correct(
            pred, pair.trg_kps, side, config.figure_alpha
        )
        examples.append(
            KeypointMatch(
                src_image=np.asarray(pair.src_image),
                trg_image=np.asarray(pair.trg_image),
                src_kps=pair.src_kps,
                trg_kps=pair.trg_kps,
                pred_kps=pred,
                correct=correct,
                title=f"{pair.category} {pair.name}: {int(correct.sum())}/{int(pair.valid.sum())} "
                f"within {config.figure_alpha:g} x box",
            )
        )
    result = {
        "protocol": "correspondence",
        "config": {**asdict(config), "alphas": list(config.alphas)},
        "matching_grid": list(grid) if grid else None,
        "num_pairs": len(dataset),
        "num_pairs_evaluated": int(len(np.unique(pair_index))),
        "num_keypoints": int(len(distance)),
        "num_skipped_keypoints": int(skipped),
        "metrics": metrics,
        "chance": chance,
        "per_category": per_category,
        "per_variation": per_variation,
    }
    return EvalOutput(result=result, examples=examples or None, warnings=warnings)  # type: ignore[arg-type]
