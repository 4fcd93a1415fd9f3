"""Semantic correspondence by keypoint transfer on SPair-71k: Probe3D's protocol (default) or neco's.

`--protocol probe3d` (the default) is the evaluation of Probe3D (El Banani et al., CVPR 2024,
`evaluate_spair_correspondence.py` and `evals/datasets/spair.py` of github.com/mbanani/probe3d),
whose numbers the NeCo paper reports:
- pairs: for each category and viewpoint-variation bucket (`viewpoint_variation` 0, 1, 2, and all
  pairs) the category's pairs in file-name order, shuffled by Python's `random` seeded with 20, the
  first `bucket_pairs` (200) kept; a pair drawn in two buckets is computed once;
- images: padded to a square of their longer side with white at the right and bottom, resized to
  `resize` (800) with PIL's bicubic filter, ImageNet-normalised; zero-padded around to whole
  patches for the backbone (Probe3D's ViT wrappers, `center_padding`);
- keypoints: integers; truncated, scaled by resize / padded side and truncated again;
- features: the backbone's patch grid, L2-normalised over channels; each source keypoint's feature
  sampled with `grid_sample(bilinear, align_corners=True)` at 2 x / resize - 1;
- match: argmax of the dot product over the target grid; the prediction is (column, row) / w, in
  units of the square side (the cell's top-left corner, as Probe3D places it);
- error: distance to the true target point / resize, divided by max(target box side) /
  max(target image side), i.e. the error in target pixels over the box's longer side; correct when
  `< alpha` (strictly; Probe3D: 0.1);
- recall: over the keypoints of a category and bucket pooled, then the mean over the categories
  that have pairs in the bucket: `recall@<alpha>_<bucket>` (`recall@0.1_all` is the headline),
  with every category and bucket in `per_category` and the counts in `per_bucket`.

`--protocol neco` is neco's own evaluation (the behaviour before Probe3D's became the default):
both images are resized to a square `input_size` (keypoints scaled with them, x and y separately)
and mapped to patch features (B, D, h, w) by any backbone. Each source keypoint's feature is
sampled bilinearly from the source grid; the target grid cell with the highest cosine similarity
is the match (optionally refined by a soft-argmax over a window around it, optionally on target
features upsampled bilinearly). The match is mapped back to original target pixels.

Coordinates (neco): keypoints are continuous pixel positions with the image spanning [0, W] x
[0, H]. `grid_sample(..., align_corners=False)` uses that convention: -1 and +1 are the outer
edges of the border cells, so a keypoint x in an input of width S samples at u = 2x / S - 1, and
grid cell j of w has its centre at (j + 0.5) S / w, which is where a match on cell j is placed.

PCK@alpha (neco): a prediction is correct when its distance to the true target point is <= alpha
* max(h, w) of the target bounding box (SPair convention; `bbox`) or of the target image (`image`).
Reported per keypoint (all keypoints pooled), per pair (mean of each pair's PCK), as the mean over
categories, per category and per variation label. Absent keypoints (NaN in either image) are
skipped and counted. `chance` is the PCK a uniformly random target cell would get in expectation
(what random features score with argmax matching).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from neco.evaluation.blocks.keypoints import (
    PROBE3D_BUCKETS,
    REFINEMENTS,
    breakdown,
    chance_pck,
    pad_to_patches,
    pck_correct,
    probe3d_errors,
    probe3d_image,
    probe3d_keypoints,
    probe3d_sample,
    resize_keypoints,
    summarise_pck,
    transfer_keypoints,
)
from neco.evaluation.blocks.transforms import to_input
from neco.evaluation.features import Features
from neco.evaluation.options import option
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol

__all__ = ["CorrespondenceSettings", "Correspondence", "PROTOCOLS", "PROBE3D_CATEGORIES"]

PROTOCOLS = ("probe3d", "neco")
#: the SPair-71k categories Probe3D's evaluation loops over (its `CLASS_IDS`)
PROBE3D_CATEGORIES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)  # fmt: skip
_NECO_ONLY = ("refine", "window", "temperature", "upsample")
_PROBE3D_ONLY = ("resize", "bucket_pairs")


@dataclass
class CorrespondenceSettings:
    """Settings of the keypoint-transfer evaluation."""

    # `--protocol`: `neco eval` parses its sub-command into `protocol`, so the field has another name
    rules: str = option(
        "probe3d",
        "probe3d (Probe3D's SPair-71k evaluation, the published numbers) or neco",
        choices=PROTOCOLS,
        flag="--protocol",
    )
    resize: int = option(
        800, "probe3d: side the white-padded square image is resized to (bicubic)", minimum=1
    )
    bucket_pairs: int = option(
        200, "probe3d: pairs per category and viewpoint bucket (seeded shuffle; 0: all)", minimum=0
    )
    alphas: tuple[float, ...] = option(
        (0.05, 0.1, 0.15), "PCK thresholds (x max side)", minimum=0, exclusive_minimum=True, maximum=1
    )
    refine: str = option(
        "argmax",
        "neco: argmax (cell centre) or softargmax (window around the best cell)",
        choices=REFINEMENTS,
    )
    window: int = option(2, "neco: soft-argmax half-width in grid cells", minimum=0)
    temperature: float = option(0.02, "neco: soft-argmax temperature", minimum=0, exclusive_minimum=True)
    upsample: int = option(1, "neco: bilinear upsampling of the target features", minimum=1)
    categories: tuple[str, ...] | None = option(None, "evaluate these categories only")
    max_pairs: int | None = option(None, "evaluate the first N pairs only", minimum=1)
    figure_alpha: float = option(0.1, "bbox threshold that colours the figure", cli=False)

    def check(self) -> None:
        """Refuse the options of the protocol not selected by `--protocol` (they would be ignored)."""
        other = _NECO_ONLY if self.rules == "probe3d" else _PROBE3D_ONLY
        defaults = CorrespondenceSettings(rules=self.rules)
        changed = [name for name in other if getattr(self, name) != getattr(defaults, name)]
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            switch = "neco" if self.rules == "probe3d" else "probe3d"
            raise ValueError(
                f"{flags}: not used by --protocol {self.rules}; pass --protocol {switch} to use it"
            )


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


class _Probe3DPairs(torch.utils.data.Dataset):
    """Pairs as Probe3D prepares them: white-padded squares, integer keypoints, the box threshold scale."""

    def __init__(self, dataset: Any, indices: list[int], size: int) -> None:
        self.dataset, self.indices, self.size = dataset, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self.indices[position]
        pair = self.dataset[index]
        valid = pair.valid  # Probe3D keeps the keypoints annotated in both images
        src, src_side = probe3d_image(pair.src_image, self.size)
        trg, trg_side = probe3d_image(pair.trg_image, self.size)
        box = pair.trg_bbox
        return {
            "src": src,
            "trg": trg,
            "src_kps": probe3d_keypoints(pair.src_kps[valid], src_side, self.size),
            "trg_kps": probe3d_keypoints(pair.trg_kps[valid], trg_side, self.size),
            "thresh_scale": float(max(box[2] - box[0], box[3] - box[1])) / max(pair.trg_image.size),
            "trg_side": trg_side,
            "index": index,
        }


def _collate_probe3d(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked, everything else as lists (pairs have different numbers of keypoints)."""
    batch = {key: [item[key] for item in items] for key in items[0]}
    batch["src"], batch["trg"] = torch.stack(batch["src"]), torch.stack(batch["trg"])
    return batch


def _labels(dataset: Any, index: int) -> tuple[str, int]:
    """(category, viewpoint_variation) of a pair, from the annotations alone where the dataset can."""
    if hasattr(dataset, "labels"):
        category, variations = dataset.labels(index)
    else:
        pair = dataset[index]
        category, variations = pair.category, pair.variations
    return category, int(variations.get("viewpoint_variation", 0))


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
        """probe3d: recall@0.1 over all pairs (mean over categories); neco: PCK@0.1 against the box."""
        if "per_bucket" in metrics:
            keys = [k for k in metrics if k.startswith("recall@") and k.endswith("_all")]
            key = "recall@0.1_all" if "recall@0.1_all" in keys else keys[0]
            return key, float(metrics[key])
        first = next(k for k in metrics if k.startswith("pck_bbox@"))
        key = "pck_bbox@0.1" if "pck_bbox@0.1" in metrics else first
        return key, float(metrics[key])

    def figures(self, output: ProtocolOutput, features: Features, data: EvalData, out_dir: Any) -> list[Any]:
        """Source and target keypoints with the transferred ones, correct in green."""
        from neco.viz.keypoints import save_keypoint_figure

        path = out_dir / "correspondence_keypoints.png"
        return [save_keypoint_figure(output.examples, path)] if output.examples else []

    def run(
        self, features: Features, data: EvalData, config: CorrespondenceSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Keypoint transfer with the rules of `--protocol` (`config.rules`)."""
        if len(data.val) == 0:
            raise ValueError("`dataset` must hold at least one pair but is empty")
        if config.rules == "probe3d" and ctx.run.input_size is not None:
            raise ValueError(
                "--input-size: not used by --protocol probe3d (--resize sets its square, padded to whole "
                "patches); pass --protocol neco to use it"
            )
        if config.rules == "probe3d":
            return self._run_probe3d(features, data, config, ctx)
        return self._run_neco(features, data, config, ctx)

    def _run_probe3d(  # noqa: C901 - one pass over the drawn pairs, then the per-bucket tables
        self, features: Features, data: EvalData, config: CorrespondenceSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Probe3D's evaluation: recall per category and viewpoint bucket, then the mean over categories."""
        from neco.viz.keypoints import KeypointMatch

        dataset, size = data.val, config.resize
        sample = probe3d_sample(
            [_labels(dataset, i) for i in range(len(dataset))], config.bucket_pairs or None
        )
        indices = sorted({i for buckets in sample.values() for members in buckets.values() for i in members})
        loader = torch.utils.data.DataLoader(
            _Probe3DPairs(dataset, indices, size),
            batch_size=ctx.run.batch_size,
            shuffle=False,
            num_workers=ctx.run.num_workers,
            collate_fn=_collate_probe3d,
        )
        errors: dict[int, torch.Tensor] = {}  # pair index -> (K,) float32 errors in box units
        kept: list[tuple[int, np.ndarray, np.ndarray]] = []  # (index, predictions, errors) for the figure
        grid: tuple[int, int] = (0, 0)
        for batch in ctx.iterate(loader, "correspondence"):
            images = pad_to_patches(torch.cat([batch["src"], batch["trg"]]), features.patch_size)
            grids = F.normalize(features(images), p=2, dim=1)  # (2B, D, h, w): sources, then targets
            grid = (grids.shape[-2], grids.shape[-1])
            sources, targets = grids.chunk(2)
            for b, index in enumerate(batch["index"]):
                error, predicted = probe3d_errors(
                    sources[b],
                    targets[b],
                    batch["src_kps"][b],
                    batch["trg_kps"][b],
                    size,
                    batch["thresh_scale"][b],
                )
                errors[index] = error.cpu()
                if len(kept) < ctx.run.num_figures:
                    kept.append((index, predicted.double().numpy() * batch["trg_side"][b], error.numpy()))

        keys = [f"recall@{alpha:g}" for alpha in config.alphas]
        per_category: dict[str, dict[str, dict[str, Any]]] = {}
        empty = []
        for category, buckets in sample.items():
            per_category[category] = {}
            for bucket, members in buckets.items():
                pooled = torch.cat([errors[i] for i in members]) if members else torch.zeros(0)
                entry: dict[str, Any] = {"num_pairs": len(members), "num_keypoints": len(pooled)}
                if len(pooled):
                    # `errors < alpha` in float32, as Probe3D compares; the fraction in float64
                    entry.update(
                        {k: 100.0 * float((pooled < a).double().mean()) for k, a in zip(keys, config.alphas)}
                    )
                elif members:
                    empty.append(f"{category}/{bucket}")
                per_category[category][bucket] = entry
        per_bucket: dict[str, dict[str, Any]] = {}
        for bucket in PROBE3D_BUCKETS:
            scored = [per_category[c][bucket] for c in per_category if keys[0] in per_category[c][bucket]]
            per_bucket[bucket] = {
                "num_categories": len(scored),
                "num_pairs": sum(e["num_pairs"] for e in scored),
                "num_keypoints": sum(e["num_keypoints"] for e in scored),
                **{k: float(np.mean([e[k] for e in scored])) if scored else float("nan") for k in keys},
            }
        if not per_bucket["all"]["num_categories"]:
            raise ValueError("no pair has a keypoint annotated in both images; nothing to evaluate")
        if empty:
            ctx.warn(
                f"{len(empty)} category/bucket sets have pairs but no keypoint in both images, e.g. {empty[0]}"
            )
        unknown = sorted(set(sample) - set(PROBE3D_CATEGORIES))
        if unknown:
            ctx.warn(
                f"categories {unknown} are not among Probe3D's 18 SPair-71k classes (it leaves them out)"
            )
        metrics: dict[str, Any] = {f"{k}_{b}": per_bucket[b][k] for k in keys for b in PROBE3D_BUCKETS}
        metrics.update({"per_bucket": per_bucket, "per_category": per_category})

        examples = []
        for index, predicted, error in kept:
            pair = dataset[index]
            valid = pair.valid
            correct = error < config.figure_alpha
            examples.append(
                KeypointMatch(
                    src_image=np.asarray(pair.src_image),
                    trg_image=np.asarray(pair.trg_image),
                    src_kps=pair.src_kps[valid],
                    trg_kps=pair.trg_kps[valid],
                    pred_kps=predicted,
                    correct=correct,
                    title=f"{pair.category} {pair.name}: {int(correct.sum())}/{len(correct)} "
                    f"below {config.figure_alpha:g} x box",
                )
            )
        resolved = {
            "backbone_input_size": int(images.shape[-1]),  # the loop ran: at least one pair was drawn
            "matching_grid": list(grid),
            "num_pairs": len(dataset),
            "num_pairs_evaluated": len(indices),
            "num_keypoints": int(sum(len(e) for e in errors.values())),
        }
        return ProtocolOutput(metrics=metrics, settings=resolved, examples=examples or None)

    def _run_neco(  # noqa: C901 - one pass over the pairs collects every breakdown
        self, features: Features, data: EvalData, config: CorrespondenceSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Keypoint transfer over every pair: PCK over all keypoints, per pair, per category and variation."""
        from neco.data.spair import SPAIR_VARIATIONS, variation_name
        from neco.viz.keypoints import KeypointMatch

        dataset, num_examples = data.val, ctx.run.num_figures
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
