"""Unreadable images and out-of-range masks in evaluations and `neco features`: named, never silent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neco.cli import main
from neco.data import build_segmentation_dataset
from neco.data.synthetic import write_scenes

ARGS = ["--dataset", "scenes", "--backbone", "vit_tiny", "--random-init", "--input-size", "32"]
ARGS += ["--no-progress", "--batch-size", "4", "--num-figures", "0", "--threads", "1"]
ARGS += ["--ks", "0", "--num-seeds", "1", "--niter", "5", "--nredo", "1", "--target-size", "16"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("scenes") / "s", 4, 4, 32, 0, progress=False)


@pytest.fixture()
def scenes(clean: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "s"))


def _val_pair(root: Path, index: int = 1) -> tuple[Path, Path]:
    return build_segmentation_dataset("scenes", root, "val").pairs[index]


def test_zero_byte_validation_image_is_named_or_skipped_on_request(
    scenes: Path, tmp_path: Path, capsys
) -> None:
    image, _ = _val_pair(scenes)
    image.write_bytes(b"")
    out = tmp_path / "out"
    base = ["eval", "overcluster", "--data-root", str(scenes), "--out", str(out), *ARGS]
    assert main([*base, "--num-workers", "1"]) == 2  # raised in a loader worker
    err = capsys.readouterr().err
    assert str(image) in err and "empty" in err and "--skip-bad-images" in err
    assert "Traceback" not in err
    assert main([*base, "--num-workers", "0", "--skip-bad-images"]) == 0
    assert "(1 unreadable images skipped)" in capsys.readouterr().out  # the closing line counts them
    result = json.loads((out / "overcluster.json").read_text())
    assert result["settings"]["skip_bad_images"] is True
    assert result["dataset"]["splits"]["val"]["skipped_images"] == [str(image)]
    assert result["dataset"]["splits"]["val"]["num_images"] == 3
    assert any("--skip-bad-images" in w and str(image) in w for w in result["warnings"])


def test_out_of_range_mask_is_named_as_it_is_read(scenes: Path, tmp_path: Path, capsys) -> None:
    _, label = _val_pair(scenes, 2)
    mask = np.array(Image.open(label))
    mask[0, :3] = 37
    Image.fromarray(mask).save(label)
    dataset = build_segmentation_dataset("scenes", scenes, "val")
    with pytest.raises(ValueError, match=rf"label file {label}: values \[37\] \(3 pixels\)"):
        dataset.load(2)
    dataset.load(1)  # the others still read
    out = tmp_path / "out"
    args = ["eval", "overcluster", "--data-root", str(scenes), "--out", str(out), *ARGS, "--num-workers", "0"]
    assert main(args) == 2
    assert str(label) in capsys.readouterr().err


def test_features_names_a_corrupt_image_or_skips_it(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        Image.new("RGB", (16, 16), (10, 20, 30)).save(folder / name)
    bad = folder / "b.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    base = ["features", str(folder), "--backbone", "vit_tiny", "--random-init", "--input-size", "16"]
    assert main([*base, "-o", str(tmp_path / "f.pt")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a readable image" in err and "--skip-bad-images" in err
    assert main([*base, "--skip-bad-images", "-o", str(tmp_path / "f.pt")]) == 0
    saved = torch.load(tmp_path / "f.pt", weights_only=True)
    assert [Path(f).name for f in saved["files"]] == ["a.png", "c.png"]
    assert saved["features"].shape[0] == 2 and saved["skipped_images"] == [str(bad)]
    assert "skipped 1" in capsys.readouterr().out
