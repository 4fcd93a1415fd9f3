"""Pascal VOC 2012 segmentation (21 classes incl. background, 255 = boundary/ignore).

Two layouts are accepted and detected automatically:
- `VOCSegmentation` (the layout of the public dense-evaluation tools): `images/*.jpg`,
  `SegmentationClass/*.png`, `SegmentationClassAug/*.png`, `sets/{train,trainaug,val}.txt`;
- the official `VOCdevkit/VOC2012`: `JPEGImages/*.jpg`, `SegmentationClass/*.png`,
  `ImageSets/Segmentation/{train,val}.txt`, optionally `SegmentationClassAug/*.png` with
  `ImageSets/Segmentation/trainaug.txt` (the SBD-augmented 10,582 images).
`root` may be the `VOCSegmentation`, `VOCdevkit` or `VOC2012` folder, or a folder holding one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from neco.data.base import JointTransform, SegmentationDataset
from neco.data.layout import LayoutSpec, check_layout, layout_error, list_files, read_id_list

__all__ = ["VOC_CLASSES", "VOC_SPLITS", "build_voc", "detect_voc_layout"]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

VOC_SPLITS: dict[str, str] = {
    "train": "1,464 images with SegmentationClass labels",
    "trainaug": "10,582 images with SegmentationClassAug labels (SBD-augmented)",
    "val": "1,449 images with SegmentationClass labels",
}

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

TRAINAUG_HINT = (
    "The split trainaug needs the SBD-augmented labels (SegmentationClassAug/ and trainaug.txt), which "
    "a standard VOCdevkit does not have: add them, or use the VOC train split "
    "(`--train-split train` in neco eval, split='train' in Python)"
)

_SEGMENTATION_TREE = """
  <root>/                      (the VOCSegmentation folder)
    images/*.jpg
    SegmentationClass/*.png    (palette PNG, 0-20 and 255; train and val)
    SegmentationClassAug/*.png (trainaug)
    sets/{train,trainaug,val}.txt
"""

_DEVKIT_TREE = """
  <root>/                      (VOCdevkit, or VOCdevkit/VOC2012)
    VOC2012/
      JPEGImages/*.jpg
      SegmentationClass/*.png
      ImageSets/Segmentation/{train,val}.txt
      SegmentationClassAug/*.png               (split trainaug only; SBD, not in the VOCdevkit)
      ImageSets/Segmentation/trainaug.txt      (split trainaug only; SBD, not in the VOCdevkit)
"""

_BOTH_TREES = LayoutSpec("Pascal VOC", "either" + _SEGMENTATION_TREE + "or" + _DEVKIT_TREE, ())


def detect_voc_layout(root: str | Path) -> tuple[str, Path]:
    """Return ("segmentation" | "devkit", the folder that holds the data) for a VOC root."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout_error(_BOTH_TREES, root, [f"{root} is not an existing directory"])
    candidates = [root, root / "VOCSegmentation", root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
    for folder in candidates:
        if (folder / "JPEGImages").is_dir():
            return "devkit", folder
        if (folder / "sets").is_dir() or (folder / "images").is_dir():
            return "segmentation", folder
    raise layout_error(
        _BOTH_TREES, root, [f"found neither images/ + sets/ nor JPEGImages/ in {root} or its VOC subfolders"]
    )


def _split_paths(layout: str, split: str) -> tuple[str, str, str]:
    # (image dir, id-list file, label dir), relative to the data folder
    if layout == "segmentation":
        labels = "SegmentationClassAug" if split == "trainaug" else "SegmentationClass"
        return "images", f"sets/{split}.txt", labels
    labels = "SegmentationClassAug" if split == "trainaug" else "SegmentationClass"
    return "JPEGImages", f"ImageSets/Segmentation/{split}.txt", labels


def build_voc(
    root: str | Path,
    split: str = "val",
    *,
    transform: JointTransform | None = None,
    name: str = "voc",
    class_names: Sequence[str] = VOC_CLASSES,
) -> SegmentationDataset:
    """Pascal VOC 2012 `split` (train, trainaug or val) from either supported layout.

    Raises:
        ValueError: unknown split.
        FileNotFoundError: wrong or partial layout; the message shows the expected tree.
    """
    if split not in VOC_SPLITS:
        raise ValueError(f"`split` must be one of {sorted(VOC_SPLITS)} but is {split!r}")
    layout, folder = detect_voc_layout(root)
    image_rel, list_rel, label_rel = _split_paths(layout, split)
    tree = _SEGMENTATION_TREE if layout == "segmentation" else _DEVKIT_TREE
    spec = LayoutSpec(f"Pascal VOC ({layout} layout, split {split})", tree, (image_rel, list_rel, label_rel))
    try:
        check_layout(spec, folder)
    except FileNotFoundError as err:
        if split != "trainaug":
            raise
        raise FileNotFoundError(f"{err}\n{TRAINAUG_HINT}") from None

    ids = read_id_list(folder / list_rel)
    images = list_files(folder / image_rel, _IMAGE_EXTENSIONS)
    labels = list_files(folder / label_rel, (".png",))
    # train/val labels may live in the augmented folder only (some VOCSegmentation copies)
    fallback = {}
    if split != "trainaug" and (folder / "SegmentationClassAug").is_dir():
        fallback = list_files(folder / "SegmentationClassAug", (".png",))

    pairs, problems = [], []
    for image_id in ids:
        image = images.get(image_id)
        label = labels.get(image_id) or fallback.get(image_id)
        if image is None:
            problems.append(f"missing {image_rel}/{image_id}.jpg (listed in {list_rel})")
        if label is None:
            problems.append(f"missing {label_rel}/{image_id}.png (listed in {list_rel})")
        if image is not None and label is not None:
            pairs.append((image, label))
    if problems or not pairs:
        raise layout_error(spec, folder, problems or [f"{list_rel} lists no image ids"])
    return SegmentationDataset(
        pairs,
        name=name,
        split=split,
        class_names=class_names,
        ignore_index=255,
        transform=transform,
        info={"layout": layout, "root": str(folder)},
    )
