"""SPair-71k semantic correspondence (Min et al., 2019): image pairs with matched keypoints.

Layout (the official `SPair-71k` folder):

    <root>/
      JPEGImages/<category>/*.jpg
      PairAnnotation/{trn,val,test}/*.json     one file per pair
      ImageAnnotation/<category>/*.json        one file per image
      Layout/{large,small}/*.txt               (optional, not read)

A pair file (e.g. `PairAnnotation/test/000001-2008_000585-2008_000989:aeroplane.json`) holds
`pair_id`, `filename`, `category`, `src_imname`, `trg_imname`, `src_imsize` / `trg_imsize`
([width, height, depth]), `src_bndbox` / `trg_bndbox` ([x1, y1, x2, y2] in pixels), `src_kps` /
`trg_kps` (K lists [x, y] of the keypoints visible in both images, matched by position),
`kps_ids` (their ids in the category's keypoint list), `src_pose` / `trg_pose`, the variation
labels `viewpoint_variation` (0 none, 1 small, 2 large), `scale_variation` (0-2 likewise),
`truncation` and `occlusion` (0 none, 1 source, 2 target, 3 both) and `mirror` (0/1). This was
checked against public SPair-71k loaders (HPF-style `src_kps`/`trg_kps` read as K x 2, bounding
boxes scaled by `imsize[0]` along x, i.e. `imsize` is [width, height, depth]).

Items are `CorrespondencePair`s with PIL RGB images and float64 keypoints (K, 2) in pixels (x, y);
a keypoint that is absent (null) in either image is NaN in both and `valid` is False for it.
Keypoint coordinates are continuous pixel positions with the image spanning [0, W] x [0, H]
(so resizing an image by a factor scales its keypoints by the same factor).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neco.data.base import load_rgb
from neco.data.layout import LayoutSpec, check_layout, layout_error

__all__ = [
    "SPAIR_CATEGORIES",
    "SPAIR_SPLITS",
    "SPAIR_VARIATIONS",
    "variation_name",
    "CorrespondencePair",
    "SPairDataset",
    "build_spair",
    "parse_pair_annotation",
]

SPAIR_CATEGORIES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)  # fmt: skip

SPAIR_SPLITS: dict[str, str] = {
    "trn": "53,340 training pairs",
    "val": "5,384 validation pairs",
    "test": "12,234 test pairs (the split papers report)",
}
_SPLIT_ALIASES = {"train": "trn"}

# Value names of the variation labels, indexed by the integer in the pair file (as the SPair-71k
# devkit describes them; other values are reported as `level_<n>`).
SPAIR_VARIATIONS: dict[str, tuple[str, ...]] = {
    "viewpoint_variation": ("none", "small", "large"),
    "scale_variation": ("none", "small", "large"),
    "truncation": ("none", "source", "target", "both"),
    "occlusion": ("none", "source", "target", "both"),
}


def variation_name(kind: str, value: int) -> str:
    """The name of a variation label value (`none`, `small`, ...; `level_<n>` beyond the named ones)."""
    names = SPAIR_VARIATIONS[kind]
    return names[value] if 0 <= value < len(names) else f"level_{value}"


_TREE = """
  <root>/                              (the SPair-71k folder)
    JPEGImages/<category>/*.jpg
    PairAnnotation/{trn,val,test}/*.json
    ImageAnnotation/<category>/*.json
"""
_SPEC = LayoutSpec("SPair-71k", _TREE, ("JPEGImages", "PairAnnotation", "ImageAnnotation"))

_REQUIRED_KEYS = (
    "src_imname",
    "trg_imname",
    "src_kps",
    "trg_kps",
    "src_bndbox",
    "trg_bndbox",
    "category",
)


@dataclass
class CorrespondencePair:
    """One annotated pair: images, matched keypoints (K, 2) in pixels (x, y), boxes and labels."""

    src_image: Image.Image
    trg_image: Image.Image
    src_kps: np.ndarray  # (K, 2) float64, NaN where absent
    trg_kps: np.ndarray  # (K, 2) float64, NaN where absent
    src_bbox: np.ndarray  # (4,) x1, y1, x2, y2
    trg_bbox: np.ndarray  # (4,)
    category: str
    variations: dict[str, int] = field(default_factory=dict)
    name: str = ""
    kps_ids: list[str] = field(default_factory=list)
    mirror: int = 0

    @property
    def valid(self) -> np.ndarray:
        """(K,) bool: keypoints present (finite) in both images."""
        return np.isfinite(self.src_kps).all(1) & np.isfinite(self.trg_kps).all(1)


def _keypoints(value: Any, key: str, path: Path) -> np.ndarray:
    """K x 2 list (null entries allowed) -> (K, 2) float64 with NaN for absent points."""
    if not isinstance(value, list):
        raise ValueError(
            f"SPair pair file {path}: `{key}` must be a list of [x, y] but is {type(value).__name__}"
        )
    points = np.full((len(value), 2), np.nan)
    for i, point in enumerate(value):
        if point is None:
            continue
        if not (isinstance(point, list | tuple) and len(point) >= 2):
            raise ValueError(f"SPair pair file {path}: `{key}[{i}]` must be [x, y] or null but is {point!r}")
        x, y = (float(v) if v is not None else math.nan for v in point[:2])
        # SPair marks missing points with negative coordinates in some exports
        if x >= 0 and y >= 0:
            points[i] = (x, y)
    return points


def _bbox(value: Any, key: str, path: Path) -> np.ndarray:
    if not (isinstance(value, list | tuple) and len(value) == 4):
        raise ValueError(f"SPair pair file {path}: `{key}` must be [x1, y1, x2, y2] but is {value!r}")
    box = np.asarray(value, dtype=np.float64)
    if not (box[2] >= box[0] and box[3] >= box[1]):
        raise ValueError(f"SPair pair file {path}: `{key}` must have x2 >= x1 and y2 >= y1 but is {value!r}")
    return box


def parse_pair_annotation(path: str | Path) -> dict[str, Any]:
    """Read and check one pair file; return its fields with keypoints as (K, 2) arrays (NaN = absent)."""
    path = Path(path)
    try:
        with open(path) as handle:
            raw = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"SPair pair file {path}: malformed JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"SPair pair file {path}: must hold a JSON object but holds {type(raw).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"SPair pair file {path}: missing keys {missing} (needs {list(_REQUIRED_KEYS)})")
    src_kps = _keypoints(raw["src_kps"], "src_kps", path)
    trg_kps = _keypoints(raw["trg_kps"], "trg_kps", path)
    if src_kps.shape != trg_kps.shape:
        raise ValueError(
            f"SPair pair file {path}: `src_kps` and `trg_kps` must have the same length but have "
            f"{len(src_kps)} and {len(trg_kps)}"
        )
    absent = ~(np.isfinite(src_kps).all(1) & np.isfinite(trg_kps).all(1))
    src_kps[absent] = np.nan
    trg_kps[absent] = np.nan
    variations = {}
    for key in SPAIR_VARIATIONS:
        value = raw.get(key, 0)
        # values beyond the named ones are kept (and reported as `level_<n>`), not rejected
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"SPair pair file {path}: `{key}` must be an integer >= 0 but is {value!r}")
        variations[key] = value
    return {
        "name": str(raw.get("filename", path.stem)),
        "category": str(raw["category"]),
        "src_imname": str(raw["src_imname"]),
        "trg_imname": str(raw["trg_imname"]),
        "src_kps": src_kps,
        "trg_kps": trg_kps,
        "src_bbox": _bbox(raw["src_bndbox"], "src_bndbox", path),
        "trg_bbox": _bbox(raw["trg_bndbox"], "trg_bndbox", path),
        "kps_ids": [str(k) for k in raw.get("kps_ids", range(len(src_kps)))],
        "variations": variations,
        "mirror": int(raw.get("mirror", 0)),
        "src_imsize": raw.get("src_imsize"),
        "trg_imsize": raw.get("trg_imsize"),
    }


class SPairDataset:
    """SPair-71k pairs of one split, read and checked up front; items are `CorrespondencePair`s."""

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        *,
        categories: Sequence[str] | None = None,
        max_pairs: int | None = None,
    ) -> None:
        split = _SPLIT_ALIASES.get(split, split)
        if split not in SPAIR_SPLITS:
            raise ValueError(f"`split` must be one of {sorted(SPAIR_SPLITS)} but is {split!r}")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"`max_pairs` must be >= 1 or None but is {max_pairs}")
        self.root = check_layout(_SPEC, root)
        self.split = split
        pair_dir = self.root / "PairAnnotation" / split
        if not pair_dir.is_dir():
            raise layout_error(_SPEC, self.root, [f"missing PairAnnotation/{split} (split {split!r})"])
        files = sorted(pair_dir.glob("*.json"))
        if not files:
            raise layout_error(_SPEC, self.root, [f"PairAnnotation/{split} holds no *.json pair files"])
        wanted = None if categories is None else set(categories)
        self.pairs: list[dict[str, Any]] = []
        for path in files:
            pair = parse_pair_annotation(path)
            if wanted is not None and pair["category"] not in wanted:
                continue
            for side in ("src", "trg"):
                image = self.root / "JPEGImages" / pair["category"] / pair[f"{side}_imname"]
                if not image.is_file():
                    raise FileNotFoundError(
                        f"SPair pair file {path}: `{side}_imname` refers to {image}, which does not exist"
                    )
                pair[f"{side}_path"] = image
            self.pairs.append(pair)
            if max_pairs is not None and len(self.pairs) >= max_pairs:
                break
        if not self.pairs:
            raise ValueError(
                f"SPair-71k {self.root} split {split!r}: no pairs of categories {sorted(wanted or [])}"
            )
        self.categories = sorted({p["category"] for p in self.pairs})

    def __len__(self) -> int:
        return len(self.pairs)

    def labels(self, index: int) -> tuple[str, dict[str, int]]:
        """(category, variation labels) of pair `index`, without reading its images."""
        pair = self.pairs[index]
        return pair["category"], dict(pair["variations"])

    def __getitem__(self, index: int) -> CorrespondencePair:
        pair = self.pairs[index]
        return CorrespondencePair(
            src_image=load_rgb(pair["src_path"]),
            trg_image=load_rgb(pair["trg_path"]),
            src_kps=pair["src_kps"].copy(),
            trg_kps=pair["trg_kps"].copy(),
            src_bbox=pair["src_bbox"].copy(),
            trg_bbox=pair["trg_bbox"].copy(),
            category=pair["category"],
            variations=dict(pair["variations"]),
            name=pair["name"],
            kps_ids=list(pair["kps_ids"]),
            mirror=pair["mirror"],
        )


def build_spair(
    root: str | Path,
    split: str = "test",
    *,
    categories: Sequence[str] | None = None,
    max_pairs: int | None = None,
) -> SPairDataset:
    """The SPair-71k pairs of `split` (trn, val, test) under `root`, optionally some categories only."""
    return SPairDataset(root, split, categories=categories, max_pairs=max_pairs)
