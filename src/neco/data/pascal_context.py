"""Pascal Context, 59 classes (the standard benchmark of Segmenter, mmsegmentation and the NeCo paper).

The layout is the one mmsegmentation's `PascalContextDataset59` reads, made by converting the
`trainval_merged.json` annotations of the Pascal Context release into label PNGs:
`VOCdevkit/VOC2010/JPEGImages/*.jpg`, `SegmentationClassContext/*.png` and
`ImageSets/SegmentationContext/{train,val}.txt` (4,996 train and 5,104 val images). Label PNGs
hold 0 for the pixels outside the 59 classes and 1..59 for the classes: 0 becomes the ignore
index 255 and k becomes train id k - 1 (mmsegmentation's `reduce_zero_label`). Any other value
is refused by the dataset's label check, naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neco.data.base import JointTransform, SegmentationDataset
from neco.data.layout import LayoutSpec, check_layout, layout_error, list_files, read_id_list

__all__ = [
    "PASCAL_CONTEXT_CLASSES",
    "PASCAL_CONTEXT_SPLITS",
    "build_pascal_context",
    "pascal_context_label_map",
]

PASCAL_CONTEXT_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
    "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

PASCAL_CONTEXT_SPLITS: dict[str, str] = {"train": "4,996 images", "val": "5,104 images"}

_TREE = """
  <root>/                                   (VOCdevkit/VOC2010, VOCdevkit, or a folder holding VOCdevkit)
    JPEGImages/*.jpg
    SegmentationClassContext/*.png          (0 = outside the 59 classes, 1..59 = classes)
    ImageSets/SegmentationContext/{train,val}.txt
"""


def pascal_context_label_map() -> np.ndarray:
    """Lookup table (256,) from label PNG values to train ids: 0 -> 255, k -> k - 1, 255 -> 255.

    Values 60..254 map to 59..253, outside the 59 classes, so the dataset's label check refuses them.
    """
    table = np.arange(-1, 255, dtype=np.int64)
    table[0] = 255
    table[255] = 255
    return table


def _data_folder(root: Path) -> Path:
    for folder in (root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"):
        if (folder / "SegmentationClassContext").is_dir() or (
            folder / "ImageSets" / "SegmentationContext"
        ).is_dir():
            return folder
    return root


def build_pascal_context(
    root: str | Path, split: str = "val", *, transform: JointTransform | None = None
) -> SegmentationDataset:
    """Pascal Context (59 classes) `split` (train or val) from the mmsegmentation layout.

    Raises:
        ValueError: unknown split.
        FileNotFoundError: wrong or partial layout, or a listed id without image or label file.
    """
    if split not in PASCAL_CONTEXT_SPLITS:
        raise ValueError(f"`split` must be one of {sorted(PASCAL_CONTEXT_SPLITS)} but is {split!r}")
    root = Path(root).expanduser()
    spec = LayoutSpec(
        f"Pascal Context (split {split})",
        _TREE,
        ("JPEGImages", "SegmentationClassContext", f"ImageSets/SegmentationContext/{split}.txt"),
    )
    folder = check_layout(spec, _data_folder(root))
    list_rel = f"ImageSets/SegmentationContext/{split}.txt"
    ids = read_id_list(folder / list_rel)
    images = list_files(folder / "JPEGImages", (".jpg", ".jpeg", ".png"))
    labels = list_files(folder / "SegmentationClassContext", (".png",))
    pairs, problems = [], []
    for image_id in ids:
        if image_id not in images:
            problems.append(f"missing JPEGImages/{image_id}.jpg (listed in {list_rel})")
        if image_id not in labels:
            problems.append(f"missing SegmentationClassContext/{image_id}.png (listed in {list_rel})")
        if image_id in images and image_id in labels:
            pairs.append((images[image_id], labels[image_id]))
    if problems or not pairs:
        raise layout_error(spec, folder, problems or [f"{list_rel} lists no image ids"])
    return SegmentationDataset(
        pairs,
        name="pascal-context",
        split=split,
        class_names=PASCAL_CONTEXT_CLASSES,
        ignore_index=255,
        label_map=pascal_context_label_map(),
        transform=transform,
        info={
            "root": str(folder),
            "label_mapping": "0 (outside the 59 classes) -> ignore 255; 1..59 -> 0..58",
        },
    )
