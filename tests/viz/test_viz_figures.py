"""PCA colour maps, class colouring and the PNG figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from neco.viz import class_palette, colourise, pca_rgb, save_overlay_figure, save_pca_figure


def test_palette_is_distinct_and_voc_like():
    palette = class_palette(21)
    assert palette.shape == (21, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == 21
    assert (
        tuple(palette[0]) == (0, 0, 0)
        and tuple(palette[1]) == (128, 0, 0)
        and tuple(palette[15]) == (192, 128, 128)
    )
    with pytest.raises(ValueError, match="`num_classes` must be >= 1"):
        class_palette(0)


def test_pca_colours_follow_the_features():
    # two feature directions laid out as left/right halves: equal features -> equal colours, different -> different
    features = torch.zeros(2, 8, 4, 6)
    features[:, 0, :, :3] = 1.0
    features[:, 1, :, 3:] = 1.0
    rgb = pca_rgb(features)
    assert rgb.shape == (2, 4, 6, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :, :3].reshape(-1, 3), rgb[:, :, 3:].reshape(-1, 3)
    assert (left == left[0]).all() and (right == right[0]).all()
    assert np.abs(left[0].astype(int) - right[0].astype(int)).sum() > 100


def test_colourise_marks_ignore_white():
    labels = np.array([[0, 1], [255, 2]])
    out = colourise(labels, 3, 255)
    assert tuple(out[1, 0]) == (255, 255, 255)
    np.testing.assert_array_equal(out[0, 1], class_palette(3)[1])


def test_figures_are_written_with_one_row_per_image(tmp_path):
    images = torch.randn(3, 3, 32, 32)
    features = torch.randn(3, 5, 4, 4)
    masks = torch.randint(0, 4, (3, 16, 16))
    pca = save_pca_figure(images, features, tmp_path / "pca.png", tile=20)
    overlay = save_overlay_figure(images, masks, masks, tmp_path / "pred.png", num_classes=4, tile=20)
    assert Image.open(pca).size == (40, 60)
    assert Image.open(overlay).size == (60, 16 + 60)
    # GT and prediction panels are identical when the prediction equals the GT
    array = np.asarray(Image.open(overlay))
    np.testing.assert_array_equal(array[16:, 20:40], array[16:, 40:60])
    # column titles (issue 26): dark text in the white band above each of the three columns
    for col in range(3):
        assert (array[:16, col * 20 : (col + 1) * 20] < 128).any()
