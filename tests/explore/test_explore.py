"""The explorer page's data: reduction and quantisation, the Python reference of the page's retrieval, the writer, the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from neco.cli import main
from neco.explore.page import (
    ExploreBackbone,
    nearest_patches,
    page_vectors,
    patch_labels,
    reduce_features,
    retrieval_precision,
    write_explore_html,
)


def _page_data(path) -> dict:
    text = path.read_text()
    match = re.search(r'<script type="application/json" id="neco-data">(.*?)</script>', text, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_reduction_keeps_cosines_and_quantises_to_int8():
    torch.manual_seed(0)
    features = torch.randn(3, 16, 4, 5)
    reduced = reduce_features(features, dims=16)
    assert reduced.codes.dtype == np.int8 and reduced.codes.shape == (3 * 4 * 5, 16)
    assert reduced.energy == pytest.approx(1.0)
    assert np.abs(reduced.codes).max() == 127  # each dimension uses the full int8 range
    vectors = page_vectors(reduced).astype(np.float64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    x = features.permute(0, 2, 3, 1).reshape(-1, 16).double()
    x = torch.nn.functional.normalize(x, dim=1).numpy()
    # All dimensions kept: only int8 rounding separates the page's cosines from the exact ones.
    assert np.abs(vectors @ vectors.T - x @ x.T).max() < 0.03
    # Fewer dimensions keep less energy, in (0, 1).
    assert 0.0 < reduce_features(features, dims=4).energy < 1.0
    with pytest.raises(ValueError, match="`dims` must be >= 1"):
        reduce_features(features, dims=0)


def test_nearest_patches_skips_the_query_image_and_breaks_ties_by_index():
    # 3 images of 2 patches; patch 0 of image 0 is the query.
    vectors = np.array([[1, 0], [1, 0], [0.6, 0.8], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    index, sims = nearest_patches(vectors, 0, 3, 2)
    assert index.tolist() == [3, 4, 2]  # patch 1 (own image) is skipped; 3 and 4 tie -> index order
    assert sims.tolist() == pytest.approx([1.0, 1.0, 0.6])
    index, _ = nearest_patches(vectors, 0, 2, 2, include_query_image=True)
    assert index.tolist() == [1, 3]  # own image allowed, the query itself never
    with pytest.raises(ValueError, match="`query` must be in"):
        nearest_patches(vectors, 6, 1, 2)


def test_patch_labels_take_the_majority_and_mark_ignored_patches():
    masks = np.zeros((1, 4, 4), dtype=np.int64)
    masks[0, :2, 2:] = 3  # top-right patch: class 3
    masks[0, 2:, :2] = 255  # bottom-left patch: ignored
    masks[0, 2:, 2:] = [[5, 5], [5, 0]]  # bottom-right: 3 of 4 pixels are class 5
    labels = patch_labels(masks, 2)
    assert labels.tolist() == [[0, 3, -1, 5]]
    with pytest.raises(ValueError, match="multiples of 3"):
        patch_labels(masks, 3)


def test_retrieval_precision_counts_labelled_neighbours_only():
    labels = np.array([1, 1, 2, -1, 1])
    assert retrieval_precision(labels, 0, [1, 2, 3, 4]) == pytest.approx(2 / 3)
    assert retrieval_precision(labels, 3, [0, 1]) is None  # unlabelled query
    assert retrieval_precision(labels, 0, [3]) is None  # nothing labelled retrieved


def test_page_is_self_contained_and_carries_both_backbones(tmp_path):
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((3, 16, 16), dtype=np.int64)
    masks[:, 8:] = 1
    backbones = [
        ExploreBackbone("first</script>", torch.randn(3, 12, 4, 4)),
        ExploreBackbone("b", torch.randn(3, 6, 4, 4)),
    ]
    path = write_explore_html(
        tmp_path / "page.html",
        images,
        backbones,
        patch_size=4,
        k=5,
        dims=8,
        masks=masks,
        class_names=["bg", "fg"],
    )
    text = path.read_text()
    # No external resources: every src is inline, no http(s) URL anywhere.
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', text))
    data = _page_data(path)
    assert [b["name"] for b in data["backbones"]] == ["first</script>", "b"]  # "</" escaped in the page
    assert [len(b["scales"]) for b in data["backbones"]] == [8, 6]  # min(dims, D)
    assert data["grid"] == [4, 4] and data["k"] == 5 and data["input_size"] == [16, 16]
    assert data["labels"]["names"] == ["bg", "fg"]
    assert data["labels"]["values"] == patch_labels(masks, 4).reshape(-1).tolist()
    assert all(img["src"].startswith("data:image/jpeg;base64,") for img in data["images"])


def test_writer_rejects_bad_inputs(tmp_path):
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    good = ExploreBackbone("a", torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="one or two backbones"):
        write_explore_html(tmp_path / "x.html", images, [good] * 3, patch_size=4)
    with pytest.raises(ValueError, match=r"must be \(2, D, 4, 4\)"):
        write_explore_html(
            tmp_path / "x.html", images, [ExploreBackbone("a", torch.zeros(2, 4, 2, 2))], patch_size=4
        )
    with pytest.raises(ValueError, match="`images` must be uint8"):
        write_explore_html(tmp_path / "x.html", images.astype(np.float32), [good], patch_size=4)
    with pytest.raises(ValueError, match="multiple of `patch_size`"):
        write_explore_html(tmp_path / "x.html", images, [good], patch_size=5)
    with pytest.raises(ValueError, match="`masks` must be"):
        write_explore_html(tmp_path / "x.html", images, [good], patch_size=4, masks=np.zeros((2, 8, 8)))


def test_cli_writes_a_compare_page_from_a_folder(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    out = tmp_path / "explore.html"
    argv = ["explore", str(folder), "--backbone", "vit_tiny", "--compare", "vit_tiny", "--random-init"]
    assert main([*argv, "--input-size", "32", "--k", "4", "--dims", "16", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    data = _page_data(out)
    assert [img["name"] for img in data["images"]] == ["im0.png", "im1.png", "im2.png"]
    assert data["grid"] == [4, 4] and data["k"] == 4 and data["labels"] is None
    first, second = data["backbones"]
    assert first["name"] == second["name"] == "vit_tiny (random init)"
    assert first["codes"] != second["codes"]  # --compare got its own random weights


@pytest.mark.parametrize(
    "extra,message",
    [
        ([], "give IMAGES"),
        (["--dataset", "scenes"], "--dataset scenes needs --data-root"),
        (["IMG", "--input-size", "30"], "`--input-size` must be a multiple of the patch size 8"),
        (["IMG", "--k", "0"], "`--k` must be >= 1 but is 0"),
        (["IMG", "--out", "page.png"], "--out must name an .html file"),
    ],
)
def test_cli_errors_name_the_option(tmp_path, capsys, extra, message):
    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(image)
    argv = ["explore", "--backbone", "vit_tiny", "--random-init", "--out", str(tmp_path / "e.html")]
    assert main(argv + [str(image) if x == "IMG" else x for x in extra]) == 2
    assert message in capsys.readouterr().err


def test_demo_path_writes_a_page_with_masks_and_the_report_links_it(tmp_path):
    from neco.backbones import create
    from neco.data import build_segmentation_dataset
    from neco.data.synthetic import write_scenes
    from neco.demo.report import render_html, render_markdown
    from neco.explore import dataset_images, write_explore

    scenes = write_scenes(tmp_path / "scenes", 2, 3, 32, seed=0, progress=False)
    val_set = build_segmentation_dataset("scenes", scenes, "val")
    views = dataset_images(val_set, 32)
    assert views.images.shape == (3, 32, 32, 3) and views.masks.shape == (3, 32, 32)
    torch.manual_seed(0)
    pair = [("start", create("vit_tiny")), ("NeCo teacher", create("vit_tiny"))]
    page = write_explore(tmp_path / "explore.html", pair, views, title="neco demo")
    data = _page_data(page)
    assert [b["name"] for b in data["backbones"]] == ["start", "NeCo teacher"]
    assert data["labels"]["names"] == list(val_set.class_names)
    assert data["labels"]["values"] == patch_labels(views.masks, 8, val_set.ignore_index).reshape(-1).tolist()
    results = {
        "settings": {},
        "backbone": {"name": "vit_tiny"},
        "evaluations": {},
        "explore": "explore.html",
    }
    assert "[explore.html](explore.html)" in render_markdown(results)
    assert '<a href="explore.html">' in render_html(results)


def test_cli_skips_a_corrupt_image_on_request_and_checks_inputs_before_the_backbone(
    tmp_path, capsys, monkeypatch
):
    """Issue 26 item 15: a corrupt file stops the page with its name, or is left out with --skip-bad-images;
    a missing input fails before any backbone is loaded."""
    import neco.explore as explore

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(folder / f"im{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    argv = [
        "explore",
        str(folder),
        "--backbone",
        "vit_tiny",
        "--random-init",
        "--input-size",
        "16",
        "--dims",
        "8",
    ]
    out = tmp_path / "e.html"
    assert main([*argv, "--out", str(out)]) == 2
    assert "broken.png" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--out", str(out), "--skip-bad-images"]) == 0
    assert "left out 1 unreadable image(s) (--skip-bad-images)" in capsys.readouterr().out
    assert [img["name"] for img in _page_data(out)["images"]] == ["im0.png", "im1.png"]

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the inputs were checked")

    monkeypatch.setattr(explore, "load_named_backbone", no_backbone)
    assert main(["explore", str(tmp_path / "missing"), "--backbone", "vit_tiny", "--out", str(out)]) == 2
    assert "input" in capsys.readouterr().err
