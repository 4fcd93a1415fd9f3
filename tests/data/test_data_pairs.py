"""Synthetic correspondence pairs: exact geometry, determinism, flips, and the SPair-layout writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from neco.data.pairs import SyntheticPairs, generate_pair, write_spair_pairs
from neco.data.spair import SPairDataset
from neco.data.synthetic import SCENE_CLASSES


def _to_canonical(affine, points):
    return points @ affine[:, :2].T + affine[:, 2]


def _decode(image, points, canvas):
    """Canonical (x, y) read from a coordinate-rendered image at the pixels holding `points`."""
    cols, rows = np.floor(points).astype(int).T
    return image[rows, cols, :2].astype(float) / 255.0 * canvas


def test_generate_pair_is_deterministic_and_well_formed():
    pair = generate_pair(np.random.default_rng(1), 64, num_keypoints=6)
    again = generate_pair(np.random.default_rng(1), 64, num_keypoints=6)
    other = generate_pair(np.random.default_rng(2), 64, num_keypoints=6)
    assert np.array_equal(pair.src_image, again.src_image) and np.array_equal(pair.trg_kps, again.trg_kps)
    assert not np.array_equal(pair.src_image, other.src_image)
    assert pair.src_image.dtype == np.uint8 and pair.src_image.shape[1] == 64
    assert 48 <= pair.src_image.shape[0] <= 64  # aspect range (0.75, 1)
    assert pair.src_kps.shape == pair.trg_kps.shape and 1 <= len(pair.src_kps) <= 6
    assert pair.category in SCENE_CLASSES[1:]
    for kps, image, box in (
        (pair.src_kps, pair.src_image, pair.src_bbox),
        (pair.trg_kps, pair.trg_image, pair.trg_bbox),
    ):
        height, width = image.shape[:2]
        assert (kps[:, 0] >= 2).all() and (kps[:, 0] <= width - 2).all()
        assert (kps[:, 1] >= 2).all() and (kps[:, 1] <= height - 2).all()
        # keypoints lie on the object, so inside its box (the box is computed from the rendered labels)
        assert (kps[:, 0] >= box[0] - 1).all() and (kps[:, 0] <= box[2] + 1).all()
        assert (kps[:, 1] >= box[1] - 1).all() and (kps[:, 1] <= box[3] + 1).all()


def test_coordinate_rendering_confirms_exact_correspondences():
    # The views are rendered by sampling the canvas; the keypoints come from inverting the view maps.
    # Reading the canonical coordinates back from the pixels checks both paths against each other.
    for seed in range(6):
        pair = generate_pair(np.random.default_rng(seed), 64, coordinates=True, flip_p=0.5)
        canvas = pair.canonical_size
        truth_src = _to_canonical(pair.src_to_canonical, pair.src_kps)
        truth_trg = _to_canonical(pair.trg_to_canonical, pair.trg_kps)
        np.testing.assert_allclose(truth_src, truth_trg, atol=1e-9)
        # a view pixel spans <= 1.5 canonical px (scale <= canvas / size), so its centre is within
        # 1.5 / sqrt(2) of the keypoint; colours round to canvas / 510 more
        for image, kps in ((pair.src_image, pair.src_kps), (pair.trg_image, pair.trg_kps)):
            assert np.abs(_decode(image, kps, canvas) - truth_src).max() < 1.5


def test_texture_and_coordinate_pairs_share_geometry():
    texture = generate_pair(np.random.default_rng(5), 64)
    oracle = generate_pair(np.random.default_rng(5), 64, coordinates=True)
    assert np.array_equal(texture.src_kps, oracle.src_kps) and np.array_equal(
        texture.trg_bbox, oracle.trg_bbox
    )
    assert not np.array_equal(texture.src_image, oracle.src_image)


def test_flip_mirrors_the_target_view():
    pair = generate_pair(np.random.default_rng(0), 64, coordinates=True, flip_p=1.0, max_rotation=5.0)
    assert pair.mirror == 1
    assert np.linalg.det(pair.trg_to_canonical[:, :2]) < 0 < np.linalg.det(pair.src_to_canonical[:, :2])
    # red encodes canonical x: it grows left to right in the source and shrinks in the mirrored target
    src_row = pair.src_image[pair.src_image.shape[0] // 2, :, 0].astype(int)
    trg_row = pair.trg_image[pair.trg_image.shape[0] // 2, :, 0].astype(int)
    assert src_row[-1] > src_row[0] and trg_row[-1] < trg_row[0]
    plain = generate_pair(np.random.default_rng(0), 64, flip_p=0.0)
    assert plain.mirror == 0


def test_variation_labels_in_range():
    seen = set()
    for i in range(12):
        pair = SyntheticPairs(12, 64, seed=3).pair(i)
        assert set(pair.variations) == {"viewpoint_variation", "scale_variation", "truncation", "occlusion"}
        assert 0 <= pair.variations["viewpoint_variation"] <= 2 and 0 <= pair.variations["truncation"] <= 3
        seen.add(pair.variations["viewpoint_variation"])
    assert len(seen) > 1  # rotations up to 15 degrees cover several viewpoint bins


def test_bad_options():
    with pytest.raises(ValueError, match="`size` must be >= 32"):
        generate_pair(np.random.default_rng(0), 16)
    with pytest.raises(ValueError, match="`num_keypoints`"):
        generate_pair(np.random.default_rng(0), 64, num_keypoints=0)
    with pytest.raises(ValueError, match="`image_format` must be one of"):
        write_spair_pairs("/nonexistent", 1, image_format="gif")


def test_writer_round_trips_through_the_spair_loader(tmp_path):
    out = write_spair_pairs(tmp_path / "spair", 5, 64, seed=2, image_format="png", progress=False)
    memory = SyntheticPairs(5, 64, seed=2)
    loaded = SPairDataset(out, "test")
    assert len(loaded) == 5
    assert json.loads((out / "pairs.json").read_text())["num_pairs"] == 5
    for i in range(5):
        ours, theirs = memory.pair(i), loaded[i]
        np.testing.assert_allclose(theirs.src_kps, ours.src_kps, atol=1e-3)  # written with 3 decimals
        np.testing.assert_allclose(theirs.trg_kps, ours.trg_kps, atol=1e-3)
        assert np.array_equal(np.asarray(theirs.trg_image), ours.trg_image)  # PNG: exact pixels
        assert theirs.category == ours.category and theirs.variations == ours.variations
        assert theirs.mirror == ours.mirror
        np.testing.assert_array_equal(theirs.src_bbox, ours.src_bbox)
    image_ann = json.loads(next((out / "ImageAnnotation").rglob("*.json")).read_text())
    assert {"filename", "image_width", "image_height", "bndbox", "kps", "category"} <= set(image_ann)


def test_writer_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_spair_pairs(tmp_path / "x", 1, 64, progress=False)
    write_spair_pairs(tmp_path / "x", 1, 64, progress=False, overwrite=True)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"  # only its own folders are replaced
    jpg = next((tmp_path / "x" / "JPEGImages").rglob("*.jpg"))
    assert Image.open(jpg).format == "JPEG"
