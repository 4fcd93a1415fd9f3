"""ROI-Align of token grids: cell-aligned boxes equal slicing / average pooling; masks align like features."""

from __future__ import annotations

import pytest
import torch

from neco.method.align import roi_align_grid, roi_align_mask


@pytest.mark.parametrize("patch", [8, 14, 16])
def test_cell_aligned_box_equals_slicing(patch: int) -> None:
    # 14 (DINOv2): with `spatial_scale=1/14` a 7-cell box measured 7 + 3e-7 cells and was sampled 2x2 per bin.
    torch.manual_seed(0)
    tokens = torch.randn(2, 5, 12, 10)  # (B, D, h, w)
    # 7x7 cells starting at (row 3, col 2) for image 0 and (row 0, col 3) for image 1, one cell per bin.
    boxes = torch.tensor(
        [[2 * patch, 3 * patch, 9 * patch, 10 * patch], [3 * patch, 0, 10 * patch, 7 * patch]],
        dtype=torch.float32,
    )
    out = roi_align_grid(tokens, boxes, patch_size=patch, output_size=7)
    assert out.shape == (2, 5, 7, 7)
    torch.testing.assert_close(out[0], tokens[0, :, 3:10, 2:9])
    torch.testing.assert_close(out[1], tokens[1, :, 0:7, 3:10])
    whole = roi_align_grid(
        tokens[:1, :, :7, :7], torch.tensor([[0.0, 0.0, 7.0 * patch, 7.0 * patch]]), patch, 7
    )
    torch.testing.assert_close(whole, tokens[:1, :, :7, :7])


def test_two_cells_per_bin_is_average_pooling() -> None:
    torch.manual_seed(1)
    tokens = torch.randn(1, 3, 8, 8)
    out = roi_align_grid(tokens, torch.tensor([[0.0, 0.0, 112.0, 112.0]]), patch_size=14, output_size=4)
    torch.testing.assert_close(out, torch.nn.functional.avg_pool2d(tokens, 2))


def test_mask_alignment_and_errors() -> None:
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, :, :3] = True  # left half foreground
    aligned = roi_align_mask(mask, torch.tensor([[0.0, 0.0, 6.0, 6.0]]), patch_size=1, output_size=6)
    assert torch.equal(aligned, mask)
    with pytest.raises(ValueError, match="boxes"):
        roi_align_grid(torch.zeros(2, 1, 4, 4), torch.zeros(1, 4), patch_size=4)
    with pytest.raises(ValueError, match="tokens"):
        roi_align_grid(torch.zeros(2, 4, 4), torch.zeros(2, 4), patch_size=4)
