"""Caption datasets (COCO Captions layout, caption folder): tiny real-layout files and their bad-input errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from neco.data.captions import build_caption_dataset, write_scene_captions
from neco.data.synthetic import write_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes"), num_train=4, num_val=2, size=32, progress=False)


def test_scene_captions_in_both_layouts_name_the_classes(scenes, tmp_path):
    coco = build_caption_dataset("coco", write_scene_captions(scenes, tmp_path / "coco", "coco"))
    folder = build_caption_dataset("folder", write_scene_captions(scenes, tmp_path / "folder", "folder"))
    assert len(coco) == len(folder) == 8 and len(coco.images) == 4  # two captions per image
    assert sorted(coco.captions) == sorted(folder.captions)
    names = {"stripes", "checkerboard", "dots", "rings", "zigzag", "crosshatch", "grid"}
    assert all(any(name in caption for name in names) for caption in coco.captions)
    image, index = coco[3]
    assert image.size == (32, 32) and coco.captions[index] == coco.captions[3]


def _coco(root, images, annotations):
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    for entry in images:
        Image.new("RGB", (8, 8)).save(root / "train2017" / entry["file_name"])
    content = {"images": images, "annotations": annotations}
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(content))
    return root


def test_coco_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing caption file .*captions_train2017.json"):
        build_caption_dataset("coco", tmp_path / "empty")
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    bare = _coco(tmp_path / "bare", images, [{"id": 1, "image_id": 1, "caption": "a cat"}])
    with pytest.raises(ValueError, match=r"captions_train2017.json: 1 image\(s\) have no caption .*b.jpg"):
        build_caption_dataset("coco", bare)
    notes = [{"id": 1, "image_id": 1, "caption": "a"}, {"id": 2, "image_id": 2, "caption": "b"}]
    stray = _coco(tmp_path / "stray", images, [*notes, {"id": 3, "image_id": 9, "caption": "c"}])
    with pytest.raises(ValueError, match=r"name image ids absent .*\[9\]"):
        build_caption_dataset("coco", stray)
    gone = _coco(tmp_path / "gone", images, notes)
    (gone / "train2017" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 image.*missing.*b.jpg"):
        build_caption_dataset("coco", gone)


def test_folder_bad_inputs_name_the_file(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    with pytest.raises(ValueError, match=r"have no caption file, e.g. .*a.png needs .*a.txt"):
        build_caption_dataset("folder", folder)
    (folder / "a.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"a.txt: empty"):
        build_caption_dataset("folder", folder)
    (folder / "a.txt").write_text("a black square\n")
    (folder / "b.txt").write_text("nothing here\n")
    with pytest.raises(ValueError, match=r"no image beside them, e.g. .*b.txt"):
        build_caption_dataset("folder", folder)
    (folder / "b.txt").unlink()
    assert build_caption_dataset("folder", folder).captions == ["a black square"]
    with pytest.raises(ValueError, match="--layout"):
        build_caption_dataset("webdataset", folder)
