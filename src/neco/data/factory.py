"""One entry point from a dataset name to a `SegmentationDataset`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neco.data.base import SegmentationDataset

__all__ = ["SEGMENTATION_DATASETS", "build_segmentation_dataset", "build_scenes"]

SEGMENTATION_DATASETS: dict[str, str] = {
    "voc": "Pascal VOC 2012, 21 classes (VOCSegmentation or VOCdevkit layout); splits train, trainaug, val",
    "ade20k": "ADE20k / ADEChallengeData2016, 150 classes; splits train, val",
    "coco-stuff-164k": "COCO-Stuff-164k, 171 classes (Segmenter / mmsegmentation); splits train, val",
    "coco-stuff": "COCO-Stuff, 15 stuff super-categories (Leopart); splits train, val",
    "coco-things": "COCO-Things, 12 thing super-categories (Leopart); splits train, val",
    "coco-stuff27": "COCO-Stuff-27, 27 super-categories (PiCIE/STEGO); splits train, val",
    "cityscapes": "Cityscapes gtFine, 19 train ids; splits train, val",
    "pascal-context": "Pascal Context, 59 classes (mmsegmentation layout, VOC2010); splits train, val",
    "scenes": "synthetic texture scenes written by `neco make-scenes` (VOC layout); splits train, trainaug, val",
}


def build_scenes(root: str | Path, split: str = "val", **kw: Any) -> SegmentationDataset:
    """A synthetic scenes output (VOC layout plus `scenes.json`) as a segmentation dataset."""
    from neco.data.voc import build_voc

    root = Path(root).expanduser()
    manifest = root / "scenes.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"scenes {root}: missing {manifest.name}; this is not an output of `neco make-scenes` "
            "(create one with `neco make-scenes OUT`)"
        )
    try:
        settings = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"scenes {manifest}: not valid JSON ({err})") from err
    dataset = build_voc(root, split, name="scenes", class_names=settings["class_names"], **kw)
    dataset.info.update(
        generator={k: settings[k] for k in ("version", "size", "seed", "num_train", "num_val")}
    )
    return dataset


def _coco(label_set: str) -> Callable[..., SegmentationDataset]:
    def _build(root: str | Path, split: str = "val", **kw: Any) -> SegmentationDataset:
        from neco.data.coco import build_coco

        return build_coco(root, split, label_set=label_set, **kw)

    return _build


def _voc(root: str | Path, split: str = "val", **kw: Any) -> SegmentationDataset:
    from neco.data.voc import build_voc

    return build_voc(root, split, **kw)


def _ade20k(root: str | Path, split: str = "val", **kw: Any) -> SegmentationDataset:
    from neco.data.ade20k import build_ade20k

    return build_ade20k(root, split, **kw)


def _cityscapes(root: str | Path, split: str = "val", **kw: Any) -> SegmentationDataset:
    from neco.data.cityscapes import build_cityscapes

    return build_cityscapes(root, split, **kw)


def _pascal_context(root: str | Path, split: str = "val", **kw: Any) -> SegmentationDataset:
    from neco.data.pascal_context import build_pascal_context

    return build_pascal_context(root, split, **kw)


_BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc": _voc,
    "ade20k": _ade20k,
    "coco-stuff-164k": _coco("coco-stuff-164k"),
    "coco-stuff": _coco("coco-stuff"),
    "coco-things": _coco("coco-things"),
    "coco-stuff27": _coco("coco-stuff27"),
    "cityscapes": _cityscapes,
    "pascal-context": _pascal_context,
    "scenes": build_scenes,
}


def build_segmentation_dataset(name: str, root: str | Path, split: str, **kw: Any) -> SegmentationDataset:
    """Build the segmentation dataset `name` (see SEGMENTATION_DATASETS) from `root`, split `split`.

    Keywords go to the loader: `transform` for all, `file_list` for the COCO sets.

    Raises:
        ValueError: unknown name or split.
        FileNotFoundError: wrong or partial folder layout (the message shows the expected tree).
    """
    if name not in _BUILDERS:
        raise ValueError(f"`dataset` must be one of {sorted(_BUILDERS)} but is {name!r}")
    return _BUILDERS[name](root, split, **kw)
