"""SPair-71k loader: real-format pair files, absent keypoints, and clear messages for broken layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from neco.data.pairs import write_spair_pairs
from neco.data.spair import SPAIR_SPLITS, SPairDataset, build_spair, parse_pair_annotation, variation_name


def _real_style_pair(**overrides):
    """A pair file with the fields and value types of the published SPair-71k annotations."""
    pair = {
        "pair_id": 1,
        "filename": "000001-2008_000585-2008_000989:aeroplane",
        "src_imname": "2008_000585.jpg",
        "trg_imname": "2008_000989.jpg",
        "src_imsize": [40, 30, 3],
        "trg_imsize": [50, 20, 3],
        "src_bndbox": [2, 3, 35, 28],
        "trg_bndbox": [1, 1, 48, 19],
        "category": "aeroplane",
        "src_pose": "Frontal",
        "trg_pose": "Left",
        "src_kps": [[10, 12], [20, 5], [30, 25]],
        "trg_kps": [[11, 10], [40, 4], [25, 15]],
        "kps_ids": ["0", "3", "7"],
        "viewpoint_variation": 2,
        "scale_variation": 1,
        "truncation": 2,
        "occlusion": 0,
        "mirror": 1,
    }
    pair.update(overrides)
    return pair


def _real_style_root(tmp_path, **overrides):
    root = tmp_path / "SPair-71k"
    pair = _real_style_pair(**overrides)
    for folder in ("JPEGImages/aeroplane", "ImageAnnotation/aeroplane", "PairAnnotation/test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30)).save(root / "JPEGImages/aeroplane/2008_000585.jpg")
    Image.new("RGB", (50, 20)).save(root / "JPEGImages/aeroplane/2008_000989.jpg")
    (root / "PairAnnotation/test" / f"{pair['filename']}.json").write_text(json.dumps(pair))
    return root


def test_reads_a_real_format_pair(tmp_path):
    dataset = build_spair(_real_style_root(tmp_path), "test")
    assert len(dataset) == 1 and dataset.categories == ["aeroplane"]
    item = dataset[0]
    assert item.src_image.size == (40, 30) and item.trg_image.size == (50, 20)
    np.testing.assert_array_equal(item.src_kps, [[10, 12], [20, 5], [30, 25]])  # K x 2, (x, y)
    np.testing.assert_array_equal(item.trg_bbox, [1, 1, 48, 19])
    assert item.variations == {
        "viewpoint_variation": 2,
        "scale_variation": 1,
        "truncation": 2,
        "occlusion": 0,
    }
    assert item.mirror == 1 and item.kps_ids == ["0", "3", "7"]
    assert item.valid.all() and item.name.endswith(":aeroplane")


def test_labels_come_from_the_pair_file_alone(tmp_path):
    root = _real_style_root(tmp_path)
    dataset = build_spair(root, "test")
    shutil.rmtree(root / "JPEGImages")  # labels() must not read an image
    assert dataset.labels(0) == (
        "aeroplane",
        {"viewpoint_variation": 2, "scale_variation": 1, "truncation": 2, "occlusion": 0},
    )


def test_absent_keypoints_become_nan_on_both_sides(tmp_path):
    root = _real_style_root(
        tmp_path, src_kps=[[10, 12], None, [30, 25]], trg_kps=[[11, 10], [40, 4], [-1, -1]]
    )
    item = SPairDataset(root, "test")[0]
    assert item.valid.tolist() == [True, False, False]
    assert np.isnan(item.src_kps[1:]).all() and np.isnan(item.trg_kps[1:]).all()


def test_synthetic_pairs_in_the_spair_layout_and_filters(tmp_path):
    root = write_spair_pairs(tmp_path / "s", 6, 64, seed=0, split="val", progress=False)
    dataset = SPairDataset(root, "val")
    assert len(dataset) == 6
    category = dataset.categories[0]
    only = SPairDataset(root, "val", categories=[category])
    assert {p["category"] for p in only.pairs} == {category}
    assert len(SPairDataset(root, "val", max_pairs=2)) == 2


def test_missing_folder_shows_the_expected_tree(tmp_path):
    root = write_spair_pairs(tmp_path / "s", 2, 64, progress=False)
    shutil.rmtree(root / "ImageAnnotation")
    with pytest.raises(FileNotFoundError, match="missing ImageAnnotation") as info:
        SPairDataset(root, "test")
    assert "PairAnnotation/{trn,val,test}/*.json" in str(info.value)  # the expected layout is shown
    with pytest.raises(FileNotFoundError, match="is not an existing directory"):
        SPairDataset(tmp_path / "nowhere", "test")


def test_missing_split_folder(tmp_path):
    root = write_spair_pairs(tmp_path / "s", 2, 64, progress=False)
    with pytest.raises(FileNotFoundError, match=r"missing PairAnnotation/trn"):
        SPairDataset(root, "train")  # alias of trn


def test_missing_image_names_the_pair_file_and_the_image(tmp_path):
    root = _real_style_root(tmp_path)
    (root / "JPEGImages/aeroplane/2008_000989.jpg").unlink()
    with pytest.raises(FileNotFoundError) as info:
        SPairDataset(root, "test")
    message = str(info.value)
    assert "000001-2008_000585-2008_000989:aeroplane.json" in message and "trg_imname" in message
    assert "2008_000989.jpg" in message


def test_malformed_json_names_the_file(tmp_path):
    root = _real_style_root(tmp_path)
    bad = root / "PairAnnotation/test/000002-a-b:aeroplane.json"
    bad.write_text('{"src_imname": "a.jpg", ')
    with pytest.raises(ValueError, match=r"000002-a-b:aeroplane\.json: malformed JSON"):
        SPairDataset(root, "test")


def test_bad_fields_are_named(tmp_path):
    path = tmp_path / "p.json"
    for overrides, expected in (
        ({"trg_kps": [[1, 2]]}, "same length"),
        ({"src_bndbox": [5, 5, 1, 1]}, "x2 >= x1"),
        ({"src_kps": "none"}, "`src_kps` must be a list"),
        ({"viewpoint_variation": "large"}, "`viewpoint_variation` must be an integer >= 0"),
    ):
        path.write_text(json.dumps(_real_style_pair(**overrides)))
        with pytest.raises(ValueError, match=expected):
            parse_pair_annotation(path)
    pair = _real_style_pair()
    del pair["trg_kps"]
    path.write_text(json.dumps(pair))
    with pytest.raises(ValueError, match=r"p\.json: missing keys \['trg_kps'\]"):
        parse_pair_annotation(path)


def test_variation_names():
    assert variation_name("truncation", 2) == "target" and variation_name("scale_variation", 0) == "none"
    assert variation_name("occlusion", 9) == "level_9"  # unknown values are kept, not rejected


def test_unknown_split_lists_the_splits(tmp_path):
    with pytest.raises(ValueError, match="`split` must be one of"):
        SPairDataset(tmp_path, "dev")
    assert set(SPAIR_SPLITS) == {"trn", "val", "test"}
