"""Projection head and collapse diagnostics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neco.method.diagnostics import effective_rank, mean_pairwise_cosine
from neco.method.head import ProjectionHead, tokens_to_grid


def test_projection_head_shape_norm_and_init() -> None:
    head = ProjectionHead(12, hidden_dim=32, out_dim=8)
    out = head(torch.randn(2, 5, 12))
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 5))
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 32), (32, 32), (32, 8)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    # trunc-normal std 0.02 (cut at +-2 absolute, as in DINO, so effectively a normal)
    assert linears[1].weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2
    with pytest.raises(ValueError, match="in_dim"):
        head(torch.randn(2, 5, 11))


def test_tokens_to_grid_is_row_major() -> None:
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # (B, h*w, C)
    grid = tokens_to_grid(tokens, 2, 3)
    assert grid.shape == (2, 3, 2, 3)
    assert torch.equal(grid[1, :, 1, 2], tokens[1, 5])


def test_effective_rank_and_pairwise_cosine() -> None:
    torch.manual_seed(0)
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    rank_one = torch.randn(50, 1) @ torch.randn(1, 8)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-3)
    assert 1.0 < effective_rank(torch.randn(200, 8)) <= 8.0
    same = torch.ones(10, 4)
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    x = torch.randn(30, 6)
    unit = torch.nn.functional.normalize(x, dim=1)
    cos = unit @ unit.T
    expected = (cos.sum() - cos.diagonal().sum()) / (30 * 29)
    assert mean_pairwise_cosine(x) == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine(torch.randn(1, 3))
