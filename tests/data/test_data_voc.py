"""Pascal VOC loader: both layouts, layout detection, trainaug labels, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data import build_segmentation_dataset
from neco.data.synthetic import voc_palette
from neco.data.voc import VOC_CLASSES, build_voc, detect_voc_layout

IDS = ["2007_000001", "2007_000002", "2007_000003"]


def _image(path: Path, value: int, size=(20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 0, 0)).save(path)


def _label(path: Path, value: int, size=(20, 12), palette: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full(size[::-1], value, dtype=np.uint8)
    array[0, :] = 255  # boundary row
    label = Image.fromarray(array)
    if palette:
        label = Image.frombytes("P", size, array.tobytes())
        label.putpalette(voc_palette())
    label.save(path)


def _write_ids(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def make_segmentation_layout(root: Path) -> Path:
    for k, image_id in enumerate(IDS):
        _image(root / "images" / f"{image_id}.jpg", 10 * k)
        _label(root / "SegmentationClass" / f"{image_id}.png", k + 1)
        _label(root / "SegmentationClassAug" / f"{image_id}.png", k + 10, palette=False)
    _write_ids(root / "sets" / "train.txt", IDS[:2])
    _write_ids(root / "sets" / "trainaug.txt", IDS)
    _write_ids(root / "sets" / "val.txt", IDS[2:])
    return root


def make_devkit_layout(root: Path, with_aug: bool = False) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for k, image_id in enumerate(IDS):
        _image(voc / "JPEGImages" / f"{image_id}.jpg", 10 * k)
        _label(voc / "SegmentationClass" / f"{image_id}.png", k + 1)
        if with_aug:
            _label(voc / "SegmentationClassAug" / f"{image_id}.png", k + 10, palette=False)
    _write_ids(voc / "ImageSets" / "Segmentation" / "train.txt", IDS[:2])
    _write_ids(voc / "ImageSets" / "Segmentation" / "val.txt", IDS[2:])
    if with_aug:
        _write_ids(voc / "ImageSets" / "Segmentation" / "trainaug.txt", IDS)
    return root


def test_segmentation_layout_reads_palette_labels(tmp_path):
    root = make_segmentation_layout(tmp_path / "VOCSegmentation")
    train = build_voc(root, "train")
    assert len(train) == 2 and train.num_classes == 21 and train.class_names == VOC_CLASSES
    image, mask = train[1]
    assert image.mode == "RGB" and image.size == (20, 12)
    assert mask.dtype == np.int64 and mask.shape == (12, 20)
    # palette index, not the palette colour, is the label; the boundary stays 255
    assert set(np.unique(mask)) == {2, 255}
    assert train.describe()["layout"] == "segmentation"


def test_trainaug_uses_augmented_labels(tmp_path):
    root = make_segmentation_layout(tmp_path / "VOCSegmentation")
    aug = build_voc(root, "trainaug")
    assert len(aug) == 3
    assert set(np.unique(aug[0][1])) == {10, 255}


def test_devkit_layout_detected_from_any_level(tmp_path):
    make_devkit_layout(tmp_path, with_aug=True)
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        layout, folder = detect_voc_layout(root)
        assert layout == "devkit" and folder == tmp_path / "VOCdevkit" / "VOC2012"
    val = build_voc(tmp_path / "VOCdevkit", "val")
    assert len(val) == 1 and set(np.unique(val[0][1])) == {3, 255}
    assert len(build_voc(tmp_path, "trainaug")) == 3


def test_parent_of_vocsegmentation_is_accepted(tmp_path):
    make_segmentation_layout(tmp_path / "VOCSegmentation")
    assert detect_voc_layout(tmp_path)[0] == "segmentation"
    assert len(build_segmentation_dataset("voc", tmp_path, "val")) == 1


def test_devkit_without_trainaug_names_missing_files(tmp_path):
    make_devkit_layout(tmp_path, with_aug=False)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)missing ImageSets/Segmentation/trainaug.txt.*Expected layout"
    ):
        build_voc(tmp_path, "trainaug")


def test_missing_label_file_is_reported(tmp_path):
    root = make_segmentation_layout(tmp_path / "VOCSegmentation")
    (root / "SegmentationClass" / f"{IDS[2]}.png").unlink()
    (root / "SegmentationClassAug" / f"{IDS[2]}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"missing SegmentationClass/{IDS[2]}.png"):
        build_voc(root, "val")


def test_wrong_folder_shows_both_trees(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(FileNotFoundError, match=r"(?s)JPEGImages.*sets/\{train,trainaug,val\}.txt"):
        build_voc(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        build_voc(tmp_path / "absent", "val")


def test_unknown_split(tmp_path):
    root = make_segmentation_layout(tmp_path / "VOCSegmentation")
    with pytest.raises(ValueError, match="`split` must be one of"):
        build_voc(root, "test")


def test_devkit_without_trainaug_suggests_the_train_split(tmp_path):
    from neco.data.images import build_image_source

    make_devkit_layout(tmp_path, with_aug=False)
    with pytest.raises(FileNotFoundError) as err:
        build_voc(tmp_path, "trainaug")
    message = str(err.value)
    assert "--train-split train" in message
    assert "optional" not in message  # the files trainaug needs are required for that split
    with pytest.raises(FileNotFoundError, match="split='train'"):
        build_image_source("voc", tmp_path)
