"""Synthetic texture scenes: determinism, label range, class coverage, VOC layout, reuse rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from neco.cli import main
from neco.data import build_segmentation_dataset
from neco.data.synthetic import HELDOUT_CLASSES, SCENE_CLASSES, generate_scene, generate_scenes, write_scenes


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_scene_is_deterministic_and_in_range():
    image, label = generate_scene(np.random.default_rng(3), 96)
    again, label_again = generate_scene(np.random.default_rng(3), 96)
    other, _ = generate_scene(np.random.default_rng(4), 96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert label.shape == (96, 96) and label.dtype == np.uint8
    assert np.array_equal(image, again) and np.array_equal(label, label_again)
    assert not np.array_equal(image, other)
    assert label.max() < len(SCENE_CLASSES)


def test_requested_classes_are_drawn_and_textured():
    image, label = generate_scene(np.random.default_rng(0), 112, classes=[4])
    assert set(np.unique(label)) == {0, 4}
    # texture, not flat colour: inside the object the pixels take clearly different values
    assert image[label == 4].std(axis=0).max() > 20
    with pytest.raises(ValueError, match="`classes` entries"):
        generate_scene(np.random.default_rng(0), 64, classes=[0])


def test_classes_differ_by_texture_not_colour():
    # the same class drawn twice gets unrelated colours: the mean colour says nothing of the class
    means = [
        generate_scene(np.random.default_rng(s), 64, classes=[1])[0].reshape(-1, 3).mean(0) for s in range(8)
    ]
    assert np.ptp(np.stack(means), axis=0).max() > 40


def test_write_scenes_layout_determinism_and_coverage(tmp_path):
    out = write_scenes(tmp_path / "a", num_train=12, num_val=4, size=64, seed=5, progress=False)
    write_scenes(tmp_path / "b", num_train=12, num_val=4, size=64, seed=5, progress=False)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")  # same seed -> same bytes
    settings = json.loads((out / "scenes.json").read_text())
    assert settings["class_names"] == list(SCENE_CLASSES) and settings["seed"] == 5
    assert len((out / "sets" / "trainaug.txt").read_text().split()) == 12
    label = Image.open(out / "SegmentationClass" / "scene_val_000000.png")
    assert label.mode == "P"
    seen = set()
    for split in ("trainaug", "val"):
        dataset = build_segmentation_dataset("scenes", out, split)
        assert dataset.class_names == SCENE_CLASSES
        for index in range(len(dataset)):
            image, mask = dataset[index]
            assert image.size == (64, 64) and mask.max() < len(SCENE_CLASSES)
            seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(SCENE_CLASSES)))


def test_reuse_and_conflicting_settings(tmp_path):
    out = write_scenes(tmp_path, num_train=2, num_val=1, size=32, seed=0, progress=False)
    stamp = (out / "images" / "scene_train_000000.jpg").stat().st_mtime_ns
    write_scenes(tmp_path, num_train=2, num_val=1, size=32, seed=0, progress=False)
    assert (out / "images" / "scene_train_000000.jpg").stat().st_mtime_ns == stamp  # reused
    with pytest.raises(FileExistsError, match="other settings"):
        write_scenes(tmp_path, num_train=2, num_val=1, size=32, seed=1, progress=False)
    write_scenes(tmp_path, num_train=3, num_val=1, size=32, seed=1, overwrite=True, progress=False)
    assert json.loads((out / "scenes.json").read_text())["seed"] == 1
    assert (out / "images" / "scene_train_000002.jpg").exists()
    write_scenes(tmp_path, num_train=2, num_val=1, size=32, seed=1, overwrite=True, progress=False)
    assert not (out / "images" / "scene_train_000002.jpg").exists()  # stale files removed


def test_incomplete_output_is_regenerated(tmp_path):
    write_scenes(tmp_path, num_train=2, num_val=1, size=32, seed=0, progress=False)
    (tmp_path / "images" / "scene_val_000000.jpg").unlink()
    write_scenes(tmp_path, num_train=2, num_val=1, size=32, seed=0, progress=False)
    assert (tmp_path / "images" / "scene_val_000000.jpg").is_file()


def test_non_scenes_folder_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no scenes.json"):
        write_scenes(tmp_path, num_train=1, num_val=1, size=32, progress=False)
    with pytest.raises(FileNotFoundError, match="make-scenes"):
        build_segmentation_dataset("scenes", tmp_path, "val")


def test_cli_make_scenes(tmp_path, capsys):
    assert main(["make-scenes", str(tmp_path / "s"), "--num-train", "2", "--num-val", "1", "--size", "32",
                 "--no-progress"]) == 0  # fmt: skip
    assert (tmp_path / "s" / "sets" / "val.txt").read_text().split() == ["scene_val_000000"]
    assert main(["make-scenes", str(tmp_path / "s"), "--num-train", "2", "--num-val", "1", "--size", "48",
                 "--no-progress"]) == 2  # fmt: skip
    assert "--overwrite" in capsys.readouterr().err
    assert main(["make-scenes", str(tmp_path / "t"), "--size", "8", "--no-progress"]) == 2


def test_in_memory_scenes_equal_written_png_files(tmp_path):
    images, labels = generate_scenes(3, size=48, seed=7, split="val")
    assert images.shape == (3, 48, 48, 3) and labels.shape == (3, 48, 48)
    write_scenes(tmp_path, num_train=1, num_val=3, size=48, seed=7, image_format="png", progress=False)
    for index in range(3):
        written = np.asarray(Image.open(tmp_path / "images" / f"scene_val_{index:06d}.png"))
        label = np.asarray(Image.open(tmp_path / "SegmentationClassAug" / f"scene_val_{index:06d}.png"))
        assert np.array_equal(written, images[index]) and np.array_equal(label, labels[index])


def test_stripe_classes_have_their_orientation():
    # horizontal stripes change along y, vertical ones along x, whatever the colours
    for class_id, along_y in ((1, True), (2, False)):
        for seed in range(4):
            image, label = generate_scene(np.random.default_rng(seed), 96, classes=[class_id], noise_std=0.0)
            gray = image.astype(np.float32).mean(-1)
            inside = (label[1:, 1:] == class_id) & (label[:-1, 1:] == class_id) & (label[1:, :-1] == class_id)
            dy = np.abs(np.diff(gray, axis=0))[:, 1:][inside].mean()
            dx = np.abs(np.diff(gray, axis=1))[1:, :][inside].mean()
            assert (dy > 1.5 * dx) if along_y else (dx > 1.5 * dy), (class_id, seed, dx, dy)


def test_killed_generation_leaves_no_partial_folder(tmp_path, monkeypatch):
    """A generation stopped midway (kill, Ctrl-C) leaves no half-written output: a rerun just works."""
    import neco.data.synthetic as synthetic

    original = synthetic._save_image
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands in for the kill
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_save_image", dying)
    out = tmp_path / "scenes"
    with pytest.raises(KeyboardInterrupt):
        write_scenes(out, num_train=4, num_val=1, size=32, progress=False)
    assert not out.exists()  # nothing was renamed into place
    assert list(tmp_path.iterdir()) == []  # and the temporary folder is gone
    monkeypatch.setattr(synthetic, "_save_image", original)
    write_scenes(out, num_train=4, num_val=1, size=32, progress=False)
    assert (out / "scenes.json").is_file() and len(list((out / "images").iterdir())) == 5


def test_sigkilled_generation_is_not_refused_afterwards(tmp_path):
    """A SIGKILL mid-generation leaves only a hidden temporary folder, removed by the next run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "scenes"
    code = (
        "import neco.data.synthetic as s, os, signal\n"
        "orig = s._save_image\n"
        "n = [0]\n"
        "def save(*a, **k):\n"
        "    n[0] += 1\n"
        "    if n[0] == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return orig(*a, **k)\n"
        "s._save_image = save\n"
        f"s.write_scenes({str(out)!r}, num_train=4, num_val=1, size=32, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()
    time.sleep(0.1)
    write_scenes(out, num_train=4, num_val=1, size=32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes"]  # the orphan was cleaned up


def _radial_spectrum(images: np.ndarray) -> np.ndarray:
    """Mean radially averaged power spectrum of the grey images, normalised to sum 1 (texture scale)."""
    grey = images.astype(np.float32).mean(-1)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(1, 2))) ** 2
    side = grey.shape[1]
    yy, xx = np.mgrid[:side, :side] - side // 2
    radius = np.hypot(yy, xx).astype(int).ravel()
    counts = np.bincount(radius)
    profile = np.stack([np.bincount(radius, p.ravel()) / counts for p in power]).mean(0)[: side // 2]
    return profile / profile.sum()


def test_heldout_family_differs_in_texture_statistics():
    developer_a = generate_scenes(16, 64, seed=0)[0]
    developer_b = generate_scenes(16, 64, seed=1)[0]
    heldout, labels = generate_scenes(16, 64, seed=0, family="heldout")
    within = np.abs(_radial_spectrum(developer_a) - _radial_spectrum(developer_b)).sum()
    across = np.abs(_radial_spectrum(developer_a) - _radial_spectrum(heldout)).sum()
    assert across > 2.5 * within, (across, within)  # measured 0.36 vs 0.09
    assert labels.max() < len(HELDOUT_CLASSES) and set(HELDOUT_CLASSES[1:]).isdisjoint(SCENE_CLASSES)
    with pytest.raises(ValueError, match="`family` must be one of"):
        generate_scenes(2, 32, family="other")


def test_heldout_layout_loads_with_the_voc_loader(tmp_path):
    assert main(["make-scenes", str(tmp_path / "h"), "--family", "heldout", "--num-train", "10",
                 "--num-val", "3", "--size", "48", "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "h"
    settings = json.loads((out / "scenes.json").read_text())
    assert settings["family"] == "heldout" and settings["class_names"] == list(HELDOUT_CLASSES)
    seen = set()
    for split in ("trainaug", "val"):
        dataset = build_segmentation_dataset("scenes", out, split)
        assert dataset.class_names == HELDOUT_CLASSES
        for index in range(len(dataset)):
            image, mask = dataset[index]
            assert image.size == (48, 48)
            seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(HELDOUT_CLASSES)))
    # the developer manifest is unchanged (no "family" key), so existing outputs stay reusable; mixing conflicts
    developer = write_scenes(tmp_path / "d", num_train=2, num_val=1, size=32, progress=False)
    assert "family" not in json.loads((developer / "scenes.json").read_text())
    with pytest.raises(FileExistsError, match="other settings"):
        write_scenes(developer, num_train=2, num_val=1, size=32, progress=False, family="heldout")
