"""Foreground masks from CLS attention: registers excluded, mass kept."""

from __future__ import annotations

import pytest
import torch

from neco.method.masks import attention_foreground


def _attention(batch: int, heads: int, registers: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = 1 + registers + h * w
    return torch.softmax(torch.randn(batch, heads, tokens, tokens, generator=generator) * 3, dim=-1)


def test_huge_register_attention_does_not_change_the_mask() -> None:
    attn = _attention(2, 3, registers=4, h=6, w=5)
    mask = attention_foreground(attn, num_register_tokens=4, grid=(6, 5))
    boosted = attn.clone()
    boosted[:, :, 0, 1:5] += 1000.0  # registers soak up almost all the CLS attention ...
    boosted = boosted / boosted.sum(dim=-1, keepdim=True)  # ... after renormalisation, like a softmax would
    assert torch.equal(attention_foreground(boosted, num_register_tokens=4, grid=(6, 5)), mask)
    assert mask.shape == (2, 6, 5) and mask.dtype == torch.bool


def test_mask_keeps_the_top_tokens_holding_the_mass() -> None:
    # Without blur: a peaked attention keeps exactly the tokens needed to reach 60% of the mass.
    h, w = 4, 4
    attn = torch.zeros(1, 2, 1 + h * w, 1 + h * w)
    weights = torch.zeros(h * w)
    weights[5], weights[6], weights[9] = 0.5, 0.3, 0.2
    attn[:, :, 0, 1:] = weights
    mask = attention_foreground(attn, 0, (h, w), mass=0.6, sigma=0.0)
    expected = torch.zeros(h * w, dtype=torch.bool)
    expected[[5, 6]] = True
    assert torch.equal(mask.reshape(-1), expected)
    full = attention_foreground(attn, 0, (h, w), mass=1.0, sigma=0.0)
    assert full.sum() >= 3
    # With the blur the mask grows around the peak but stays near it.
    blurred = attention_foreground(attn, 0, (h, w), mass=0.6, sigma=0.6).reshape(-1)
    assert blurred[5] and not blurred[15]


def test_validation() -> None:
    attn = _attention(1, 2, registers=0, h=3, w=3)
    with pytest.raises(ValueError, match="registers"):
        attention_foreground(attn, 4, (3, 3))
    with pytest.raises(ValueError, match="mass"):
        attention_foreground(attn, 0, (3, 3), mass=0.0)
