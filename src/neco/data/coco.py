"""COCO-Stuff semantic segmentation: the 171 classes of COCO-Stuff-164k and the coarse label sets.

Images come from COCO 2017 and labels from the COCO-Stuff `stuffthingmaps` PNGs (values are
`category_id - 1`, 255 = unlabeled); `neco.data.coco_labels` maps them to one of four label
sets: `coco-stuff-164k` (the 171 classes Segmenter and mmsegmentation train on), `coco-stuff`
(15 stuff super-categories), `coco-things` (12 thing super-categories) or `coco-stuff27`
(27 = 12 + 15). Images and maps are paired by file stem. mmsegmentation's layout
(`coco_stuff164k/images/`, `annotations/` holding the raw maps) is accepted; the
`*_labelTrainIds.png` files its converter writes beside the raw maps are skipped, since neco maps
the raw values itself.
"""

from __future__ import annotations

from pathlib import Path

from neco.data.base import JointTransform, SegmentationDataset
from neco.data.coco_labels import COCO_LABEL_SETS, coco_label_map
from neco.data.layout import LayoutSpec, layout_error, list_files, read_id_list

__all__ = ["COCO_SPLITS", "build_coco"]

COCO_SPLITS: dict[str, str] = {"train": "train2017", "val": "val2017"}

_TREE = """
  <root>/
    images/{train2017,val2017}/*.jpg            (or <root>/{train2017,val2017}/*.jpg)
    stuffthingmaps/{train2017,val2017}/*.png    (COCO-Stuff stuffthingmaps_trainval2017;
                                                 also accepted: stuffthingmaps_trainval2017/,
                                                 annotations/stuffthingmaps_trainval2017/ or
                                                 annotations/ as in mmsegmentation's coco_stuff164k)
"""

# mmsegmentation's converter writes `<stem>_labelTrainIds.png` (already train ids) beside each raw map
_CONVERTED_SUFFIX = "_labelTrainIds"

_IMAGE_DIRS = ("images/{split}", "{split}", "coco/images/{split}")
_LABEL_DIRS = (
    "stuffthingmaps/{split}",
    "stuffthingmaps_trainval2017/{split}",
    "annotations/stuffthingmaps_trainval2017/{split}",
    "annotations/{split}",
)


def _first_dir(root: Path, patterns: tuple[str, ...], split: str) -> Path | None:
    for pattern in patterns:
        candidate = root / pattern.format(split=split)
        if candidate.is_dir():
            return candidate
    return None


def build_coco(
    root: str | Path,
    split: str = "val",
    *,
    label_set: str = "coco-stuff",
    file_list: str | Path | None = None,
    transform: JointTransform | None = None,
) -> SegmentationDataset:
    """COCO `split` (train or val) with `label_set` (coco-stuff-164k, coco-stuff, coco-things, coco-stuff27).

    Args:
        root: folder holding the images and the stuffthingmaps (see the module docstring).
        split: train or val.
        label_set: which label set; see `neco.data.coco_labels`.
        file_list: optional text file of image ids or file names (one per line) to restrict to,
            e.g. the curated lists of Leopart or STEGO.
        transform: joint transform applied to (image, mask).

    Raises:
        ValueError: unknown split or label set.
        FileNotFoundError: wrong or partial layout, a map without image, or a listed id without files.
    """
    if split not in COCO_SPLITS:
        raise ValueError(f"`split` must be one of {sorted(COCO_SPLITS)} but is {split!r}")
    label_map, class_names = coco_label_map(label_set)
    root = Path(root).expanduser()
    folder = COCO_SPLITS[split]
    spec = LayoutSpec(f"COCO ({label_set}, split {split})", _TREE, ())
    if not root.is_dir():
        raise layout_error(spec, root, [f"{root} is not an existing directory"])
    image_dir = _first_dir(root, _IMAGE_DIRS, folder)
    label_dir = _first_dir(root, _LABEL_DIRS, folder)
    missing = []
    if image_dir is None:
        missing.append(
            f"missing images/{folder}/ (tried {', '.join(p.format(split=folder) for p in _IMAGE_DIRS)})"
        )
    if label_dir is None:
        missing.append(
            f"missing stuffthingmaps/{folder}/ (tried {', '.join(p.format(split=folder) for p in _LABEL_DIRS)})"
        )
    if missing:
        raise layout_error(spec, root, missing)
    assert image_dir is not None and label_dir is not None
    images = list_files(image_dir, (".jpg", ".jpeg", ".png"))
    found = list_files(label_dir, (".png",))
    labels = {stem: path for stem, path in found.items() if not stem.endswith(_CONVERTED_SUFFIX)}
    if found and not labels:
        raise layout_error(
            spec,
            root,
            [
                f"{label_dir.relative_to(root)} holds only mmsegmentation's converted *{_CONVERTED_SUFFIX}.png "
                "maps; neco reads the raw stuffthingmaps (value = category_id - 1): unzip "
                "stuffthingmaps_trainval2017.zip there"
            ],
        )
    if file_list is not None:
        list_path = Path(file_list).expanduser()
        if not list_path.is_file():
            raise FileNotFoundError(f"`file_list` {list_path}: no such file (expected one image id per line)")
        stems = [Path(entry).stem for entry in read_id_list(list_path)]
    else:
        stems = sorted(labels)
    problems = []
    for stem in stems:
        if stem not in images:
            problems.append(f"missing image {image_dir.relative_to(root)}/{stem}.jpg")
        if stem not in labels:
            problems.append(f"missing label map {label_dir.relative_to(root)}/{stem}.png")
    if problems or not stems:
        raise layout_error(spec, root, problems or [f"no label maps in {label_dir.relative_to(root)}"])
    pairs = [(images[stem], labels[stem]) for stem in stems]
    return SegmentationDataset(
        pairs,
        name=label_set,
        split=split,
        class_names=class_names,
        ignore_index=255,
        label_map=label_map,
        transform=transform,
        info={
            "label_set": label_set,
            "label_set_description": COCO_LABEL_SETS[label_set],
            "label_source": "COCO-Stuff stuffthingmaps (value = category_id - 1)",
            "file_list": str(file_list) if file_list is not None else None,
        },
    )
