"""ADE20k (SceneParsing / ADEChallengeData2016): 150 classes; raw label 0 ("other") is ignored.

Raw labels 1..150 become train ids 0..149 through a lookup table; 0 and anything above 150
become the ignore index 255, so the mean IoU is over the 150 real classes (the public
Hummingbird code divides by 151 instead; `describe()` records the mapping used here).
Images and annotations are paired by file stem, never by the order of a directory listing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neco.data.base import JointTransform, SegmentationDataset
from neco.data.layout import LayoutSpec, check_layout, layout_error, list_files

__all__ = ["ADE20K_CLASSES", "ADE20K_SPLITS", "build_ade20k", "ade20k_label_map"]

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

ADE20K_SPLITS: dict[str, str] = {"train": "training", "val": "validation"}

_TREE = """
  <root>/                           (ADEChallengeData2016, or a folder holding it)
    images/training/*.jpg
    images/validation/*.jpg
    annotations/training/*.png      (one per image, same file stem; 0 = other, 1..150 = classes)
    annotations/validation/*.png
"""


def ade20k_label_map() -> np.ndarray:
    """Lookup table (256,) from raw ADE20k labels to train ids: 0 -> 255, k -> k - 1, >150 -> 255."""
    table = np.full(256, 255, dtype=np.int64)
    table[1:151] = np.arange(150)
    return table


def build_ade20k(
    root: str | Path, split: str = "val", *, transform: JointTransform | None = None
) -> SegmentationDataset:
    """ADE20k `split` (train or val; training / validation are accepted too).

    Raises:
        ValueError: unknown split.
        FileNotFoundError: wrong or partial layout, or an image without annotation (or vice versa).
    """
    aliases = {"training": "train", "validation": "val"}
    split = aliases.get(split, split)
    if split not in ADE20K_SPLITS:
        raise ValueError(f"`split` must be one of {sorted(ADE20K_SPLITS)} but is {split!r}")
    root = Path(root).expanduser()
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = ADE20K_SPLITS[split]
    spec = LayoutSpec(f"ADE20k (split {split})", _TREE, (f"images/{folder}", f"annotations/{folder}"))
    check_layout(spec, root)
    images = list_files(root / "images" / folder, (".jpg", ".jpeg", ".png"))
    labels = list_files(root / "annotations" / folder, (".png",))
    problems = [
        f"missing annotations/{folder}/{stem}.png for images/{folder}/{images[stem].name}"
        for stem in sorted(images.keys() - labels.keys())
    ]
    problems += [
        f"missing images/{folder}/{stem}.jpg for annotations/{folder}/{stem}.png"
        for stem in sorted(labels.keys() - images.keys())
    ]
    if problems or not images:
        raise layout_error(spec, root, problems or [f"no images in images/{folder}"])
    pairs = [(images[stem], labels[stem]) for stem in sorted(images)]
    return SegmentationDataset(
        pairs,
        name="ade20k",
        split=split,
        class_names=ADE20K_CLASSES,
        ignore_index=255,
        label_map=ade20k_label_map(),
        transform=transform,
        info={
            "label_mapping": "raw 0 (other) -> ignore 255; raw 1..150 -> 0..149",
            "miou_over": "150 classes (the public Hummingbird code divides by 151)",
        },
    )
