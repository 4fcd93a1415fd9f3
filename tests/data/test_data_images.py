"""Training image sources: discovery, RGB conversion, skipping and counting unreadable files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neco.data.images import ImageSource, UnreadableImagesError, build_image_source


def _rgb(path: Path, colour=(200, 30, 60), size=(6, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return path


def test_folder_is_recursive_and_filters_extensions(tmp_path):
    _rgb(tmp_path / "a.jpg")
    _rgb(tmp_path / "sub" / "deeper" / "b.PNG")
    _rgb(tmp_path / "c.webp")
    _rgb(tmp_path / "d.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    source = build_image_source("folder", tmp_path)
    assert [p.name for p in source.files] == ["a.jpg", "c.webp", "d.bmp", "b.PNG"]
    assert all(source[i].mode == "RGB" for i in range(len(source)))


def test_modes_are_converted_to_rgb(tmp_path):
    Image.new("L", (4, 4), 128).save(tmp_path / "gray.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red in CMYK
    Image.new("RGBA", (4, 4), (0, 0, 255, 0)).save(tmp_path / "rgba.png")  # fully transparent
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    source = build_image_source("folder", tmp_path, transform=np.asarray)
    pixels = {path.stem: source[i][0, 0].tolist() for i, path in enumerate(source.files)}
    assert all(source[i].shape == (4, 4, 3) for i in range(len(source)))
    assert pixels["gray"] == [128, 128, 128]
    assert pixels["palette"] == [0, 255, 0]
    assert pixels["rgba"] == [255, 255, 255]  # transparent composited on white
    red, green, blue = pixels["cmyk"]
    assert red > 200 and green < 60 and blue < 60


def test_corrupt_file_is_skipped_counted_and_warned_once(tmp_path):
    for k in range(6):
        _rgb(tmp_path / f"img{k}.jpg", colour=(40 * k, 0, 0))
    _corrupt(tmp_path / "img2.jpg")
    source = build_image_source("folder", tmp_path, transform=np.asarray, max_bad_fraction=0.5)
    with pytest.warns(RuntimeWarning, match="img2.jpg"):
        item = source[2]
    # the next readable file stands in, deterministically
    assert np.array_equal(item, np.asarray(Image.open(tmp_path / "img3.jpg").convert("RGB")))
    assert source.num_bad == 1 and source.bad_files == [tmp_path / "img2.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad file: no second warning, no second read
        assert np.array_equal(source[2], item)
    assert np.array_equal(source[5], np.asarray(Image.open(tmp_path / "img5.jpg").convert("RGB")))
    assert source.num_bad == 1


def test_truncated_file_is_skipped(tmp_path):
    good = _rgb(tmp_path / "a.png", size=(64, 64))
    _rgb(tmp_path / "b.png", size=(64, 64))
    data = good.read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    source = build_image_source("folder", tmp_path, max_bad_fraction=0.9)
    with pytest.warns(RuntimeWarning, match="a.png"):
        assert source[0].size == (64, 64)
    assert source.num_bad == 1


def test_too_many_bad_files_raise_with_counts(tmp_path):
    for k in range(10):
        (_corrupt if k < 4 else _rgb)(tmp_path / f"img{k}.jpg")
    source = ImageSource(sorted(tmp_path.iterdir()), max_bad_fraction=0.01, min_bad=2)
    with pytest.warns(RuntimeWarning):
        with pytest.raises(
            UnreadableImagesError, match=r"3 of 3 image files tried could not be read.*img0.jpg"
        ):
            source[0]
    # below min_bad nothing is raised even though the fraction is exceeded
    lenient = ImageSource(sorted(tmp_path.iterdir()), max_bad_fraction=0.01, min_bad=5)
    with pytest.warns(RuntimeWarning):
        assert lenient[0].mode == "RGB"
    assert lenient.num_bad == 4


def test_missing_or_empty_folder_names_extensions(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_image_source("folder", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*\.jpg, \.jpeg, \.png, \.webp, \.bmp"):
        build_image_source("folder", tmp_path / "empty")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        build_image_source("laion", tmp_path)
    with pytest.raises(ValueError, match="takes the options"):
        build_image_source("folder", tmp_path, split="train")


def test_coco_imagenet_voc_kinds(tmp_path):
    _rgb(tmp_path / "coco" / "images" / "train2017" / "000000000009.jpg")
    _rgb(tmp_path / "coco" / "images" / "val2017" / "000000000139.jpg")
    coco = build_image_source("coco", tmp_path / "coco")
    assert [p.name for p in coco.files] == ["000000000009.jpg"]

    for wnid in ("n01440764", "n01443537", "n01484850"):
        _rgb(tmp_path / "imagenet" / "train" / wnid / f"{wnid}_1.JPEG")
    assert len(build_image_source("imagenet", tmp_path / "imagenet")) == 3
    subset = tmp_path / "in100.txt"
    subset.write_text("n01484850\nn01440764\n")
    picked = build_image_source("imagenet", tmp_path / "imagenet", classes=subset)
    assert [p.parent.name for p in picked.files] == ["n01484850", "n01440764"]
    with pytest.raises(FileNotFoundError, match="n09999999"):
        build_image_source("imagenet", tmp_path / "imagenet", classes=["n09999999"])

    voc = tmp_path / "VOCSegmentation"
    for image_id in ("2007_000032", "2007_000033", "2008_000001"):
        _rgb(voc / "images" / f"{image_id}.jpg")
    (voc / "sets").mkdir()
    (voc / "sets" / "trainaug.txt").write_text("2007_000032\n2008_000001\n")
    assert [p.stem for p in build_image_source("voc", voc).files] == ["2007_000032", "2008_000001"]


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    """A 16-bit grayscale PNG keeps its contrast: values are scaled by 255/65535, not clipped to white."""
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I")
    source = build_image_source("folder", tmp_path)
    rgb = np.asarray(source.load(0))
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01  # was 99.6% white
