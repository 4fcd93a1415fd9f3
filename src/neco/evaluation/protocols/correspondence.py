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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from neco.evaluation.blocks.keypoints import (
    REFINEMENTS,
    breakdown,
    chance_pck,
    pck_correct,
    resize_keypoints,
    summarise_pck,
    transfer_keypoints,
)
from neco.evaluation.blocks.transforms import to_input
from neco.evaluation.features import Features
from neco.evaluation.options import option
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol

__all__ = ["CorrespondenceSettings", "Correspondence"]


@dataclass
class CorrespondenceSettings:
    """Settings of the keypoint-transfer evaluation."""

    alphas: tuple[float, ...] = option(
        (0.05, 0.1, 0.15), "PCK thresholds (x max side)", minimum=0, exclusive_minimum=True, maximum=1
    )
    refine: str = option(
        "argmax", "argmax (cell centre) or softargmax (window around the best cell)", choices=REFINEMENTS
    )
    window: int = option(2, "soft-argmax half-width in grid cells", minimum=0)
    temperature: float = option(0.02, "soft-argmax temperature", minimum=0, exclusive_minimum=True)
    upsample: int = option(1, "bilinear upsampling of the target features", minimum=1)
    categories: tuple[str, ...] | None = option(None, "evaluate these categories only")
    max_pairs: int | None = option(None, "evaluate the first N pairs only", minimum=1)
    figure_alpha: float = option(0.1, "bbox threshold that colours the figure", cli=False)


class _PairTensors(torch.utils.data.Dataset):
    """Pairs as network inputs: both images resized to a square and normalised, keypoints scaled."""

    def __init__(self, dataset: Any, input_size: int) -> None:
        self.dataset, self.input_size = dataset, input_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.dataset[index]
        valid = pair.valid
        src_kps = np.where(valid[:, None], pair.src_kps, np.nan)
        trg_kps = np.where(valid[:, None], pair.trg_kps, np.nan)
        box = pair.trg_bbox
        return {
            "src": to_input(pair.src_image, self.input_size),
            "trg": to_input(pair.trg_image, self.input_size),
            "src_kps": torch.as_tensor(
                resize_keypoints(src_kps, pair.src_image.size, (self.input_size,) * 2), dtype=torch.float32
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


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Lists per key; images, target sizes and box sides stacked, keypoints NaN-padded to (B, Kmax, 2)."""
    batch = {key: [item[key] for item in items] for key in items[0]}
    for key in ("src", "trg", "trg_size"):
        batch[key] = torch.stack(batch[key])
    for key in ("src_kps", "trg_kps"):
        batch[key] = pad_sequence(batch[key], batch_first=True, padding_value=float("nan"))
    batch["bbox_size"] = torch.tensor(batch["bbox_size"], dtype=torch.float64)
    return batch


@register_protocol
class Correspondence(Protocol):
    """Semantic correspondence: SPair-71k keypoint transfer scored by PCK."""

    name = "correspondence"
    summary = "semantic correspondence: SPair-71k keypoint transfer (PCK)"
    settings_class = CorrespondenceSettings
    datasets = ("spair",)
    val_split = "test"
    input_size = 448

    def load_data(
        self, dataset: str, root: Path, train_split: str | None, val_split: str | None, settings: Any
    ) -> EvalData:
        """The SPair pairs of the split (every pair file is checked before the backbone is loaded)."""
        from neco.data.spair import build_spair

        pairs = build_spair(
            root, val_split or self.val_split, categories=settings.categories, max_pairs=settings.max_pairs
        )
        return EvalData(val=pairs, name=dataset, root=str(Path(root).resolve()))

    def headline(self, metrics: dict[str, Any]) -> tuple[str, float]:
        """PCK@0.1 against the box (or the first threshold)."""
        first = next(k for k in metrics if k.startswith("pck_bbox@"))
        key = "pck_bbox@0.1" if "pck_bbox@0.1" in metrics else first
        return key, float(metrics[key])

    def figures(self, output: ProtocolOutput, features: Features, data: EvalData, out_dir: Any) -> list[Any]:
        """Source and target keypoints with the transferred ones, correct in green."""
        from neco.viz.keypoints import save_keypoint_figure

        path = out_dir / "correspondence_keypoints.png"
        return [save_keypoint_figure(output.examples, path)] if output.examples else []

    def run(  # noqa: C901 - one pass over the pairs collects every breakdown
        self, features: Features, data: EvalData, config: CorrespondenceSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Keypoint transfer over every pair: PCK over all keypoints, per pair, per category and variation."""
        from neco.data.spair import SPAIR_VARIATIONS, variation_name
        from neco.viz.keypoints import KeypointMatch

        dataset, num_examples = data.val, ctx.run.num_figures
        if len(dataset) == 0:
            raise ValueError("`dataset` must hold at least one pair but is empty")
        loader = torch.utils.data.DataLoader(
            _PairTensors(dataset, ctx.input_size),
            batch_size=ctx.run.batch_size,
            shuffle=False,
            num_workers=ctx.run.num_workers,
            collate_fn=_collate,
        )
        square = (ctx.input_size, ctx.input_size)
        matching = {key: getattr(config, key) for key in ("refine", "window", "temperature", "upsample")}
        # per kept keypoint, in pair order: error, reference sides (`bbox`, `image`) and pair index
        records: dict[str, list[np.ndarray]] = {k: [] for k in ("distance", "bbox", "image", "pair")}
        chance_parts: dict[str, list[np.ndarray]] = {}  # `pck_<kind>@<alpha>` -> per-keypoint chance
        pair_labels: dict[int, tuple[str, dict[str, int]]] = {}
        predictions: list[tuple[int, np.ndarray, float]] = []  # (index, (K, 2), box side) for the figure
        skipped = outside = empty_pairs = 0
        for batch in ctx.iterate(loader, "correspondence"):
            grids = features(torch.cat([batch["src"], batch["trg"]]))  # (2B, D, h, w): sources, then targets
            # (B, K, 2) in input pixels
            predicted = transfer_keypoints(*grids.chunk(2), batch["src_kps"], square, **matching).cpu()
            grid = (grids.shape[-2] * config.upsample, grids.shape[-1] * config.upsample)
            # back to original target pixels, in float64 for the distance arithmetic
            scale = batch["trg_size"] / torch.tensor(square, dtype=torch.float64)  # (B, 2)
            predicted = predicted.double() * scale[:, None]
            outside += sum(batch["src_outside"])
            skipped += sum(batch["absent"])
            pair_labels.update(zip(batch["index"], zip(batch["category"], batch["variations"])))
            take = max(0, num_examples - len(predictions))
            predictions += zip(
                batch["index"][:take], predicted[:take].numpy(), batch["bbox_size"][:take].tolist()
            )
            trg = batch["trg_kps"]  # (B, K, 2), NaN where absent (either image) or padded
            keep = torch.isfinite(trg).all(-1) & torch.isfinite(predicted).all(-1)  # (B, K)
            kept = keep.sum(1)  # (B,)
            empty_pairs += int((kept == 0).sum())
            records["distance"].append((predicted - trg).norm(dim=-1)[keep].numpy())
            per_pair = {"pair": torch.tensor(batch["index"]), "bbox": batch["bbox_size"]}
            per_pair["image"] = batch["trg_size"].amax(1)  # (B,) each
            for key, values in per_pair.items():
                records[key].append(values.repeat_interleave(kept).numpy())
            targets, sizes = trg[keep], batch["trg_size"].repeat_interleave(kept, dim=0)  # (N, 2) each
            for alpha in config.alphas:
                for kind in ("bbox", "image"):
                    sides = torch.from_numpy(records[kind][-1])
                    chance = chance_pck(targets, sides, alpha, grid, square, sizes)
                    chance_parts.setdefault(f"pck_{kind}@{alpha:g}", []).append(chance.numpy())
        references = {key: np.concatenate(parts) for key, parts in records.items()}
        distance, pair_index = references.pop("distance"), references.pop("pair")  # leaves `bbox`, `image`
        if len(distance) == 0:
            raise ValueError("no pair has a keypoint present in both images; nothing to evaluate")
        categories = np.array([pair_labels[int(i)][0] for i in pair_index])

        metrics = summarise_pck(distance, references, pair_index, config.alphas)
        per_category = breakdown(distance, references, pair_index, categories, config.alphas)
        for key in [k for k in metrics if not k.endswith("_per_pair")]:  # pck_<kind>@<alpha>
            metrics[f"{key}_category_mean"] = float(np.mean([v[key] for v in per_category.values()]))
        per_variation = {}
        for name in SPAIR_VARIATIONS:
            labels = np.array([variation_name(name, pair_labels[int(i)][1].get(name, 0)) for i in pair_index])
            per_variation[name] = breakdown(distance, references, pair_index, labels, config.alphas)
        chance = {key: 100.0 * float(np.concatenate(parts).mean()) for key, parts in chance_parts.items()}
        if skipped:
            ctx.warn(f"{skipped} keypoints absent in the source or target image were skipped")
        if empty_pairs:
            ctx.warn(f"{empty_pairs} pairs had no keypoint present in both images and were skipped")
        if outside:
            ctx.warn(f"{outside} source keypoints lie outside their image (features clamped to the border)")

        examples = []
        for index, pred, side in predictions:
            pair = dataset[index]
            pred = pred[: len(pair.trg_kps)]  # without the batch padding
            correct = pck_correct(pred, pair.trg_kps, side, config.figure_alpha)  # False where NaN
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
        metrics.update({"chance": chance, "per_category": per_category, "per_variation": per_variation})
        resolved = {
            "matching_grid": list(grid),  # the loop ran: the dataset is not empty
            "num_pairs": len(dataset),
            "num_pairs_evaluated": int(len(np.unique(pair_index))),
            "num_keypoints": int(len(distance)),
            "num_skipped_keypoints": int(skipped),
        }
        return ProtocolOutput(metrics=metrics, settings=resolved, examples=examples or None)
