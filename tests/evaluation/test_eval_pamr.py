"""PAMR (pixel-adaptive mask refinement) on hand-made images: a leaky, noisy mask snaps to a colour edge."""

from __future__ import annotations

import pytest
import torch

from neco.evaluation.blocks.pamr import pamr, pamr_affinities


def _edge_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A red | blue image (edge at column 16), its true labels, and a coarse mask that leaks 4 px and has 15% flips."""
    image = torch.zeros(1, 3, 32, 32)
    image[:, 0, :, :16] = 1.0
    image[:, 2, :, 16:] = 1.0
    truth = torch.zeros(32, 32, dtype=torch.long)
    truth[:, 16:] = 1
    coarse = torch.zeros(1, 2, 32, 32)
    coarse[0, 0, :, :20] = 1.0  # class 0 spills over the edge, as an upsampled patch grid does
    coarse[0, 1, :, 20:] = 1.0
    flips = torch.rand(32, 32, generator=torch.Generator().manual_seed(seed)) < 0.15
    coarse[0, :, flips] = coarse[0, :, flips].flip(0)
    return image, truth, coarse


def test_pamr_cleans_a_noisy_mask_next_to_a_colour_edge() -> None:
    image, truth, coarse = _edge_case()
    before = (coarse.argmax(1)[0] == truth).float().mean()
    refined = pamr(image, coarse)  # 10 iterations, dilations 1, 2, 4, 8, 12, 24
    after = (refined.argmax(1)[0] == truth).float().mean()
    assert before < 0.8
    assert after == 1.0  # the leak is pulled back to the edge and the flips are gone
    # few, short-range steps clean less: the refinement is what fixes it, not the argmax alone
    weak = (pamr(image, coarse, iterations=1, dilations=(1,)).argmax(1)[0] == truth).float().mean()
    assert weak < 1.0


def test_pamr_does_not_mix_across_the_edge_and_keeps_score_mass() -> None:
    image, _, coarse = _edge_case(seed=1)
    weights = pamr_affinities(image)  # (1, N, H, W)
    assert torch.allclose(weights.sum(1), torch.ones(1, 32, 32))
    refined = pamr(image, coarse)
    # scores are convex mixtures of neighbours: per pixel the class scores still sum to 1
    assert torch.allclose(refined.sum(1), torch.ones(1, 32, 32), atol=1e-5)
    # the red side only ever sees red neighbours: whatever the blue side says leaves it unchanged
    relabelled = coarse.clone()
    relabelled[0, 0, :, 16:], relabelled[0, 1, :, 16:] = 0.0, 1.0
    assert torch.allclose(pamr(image, relabelled)[..., :16], refined[..., :16], atol=1e-4)
    assert not torch.allclose(pamr(image, relabelled)[..., 16:], refined[..., 16:], atol=1e-2)


def test_pamr_is_invariant_to_channel_normalisation_and_identity_at_zero_iterations() -> None:
    image, _, coarse = _edge_case()
    normalised = (image - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    assert torch.allclose(pamr(image, coarse), pamr(normalised, coarse), atol=1e-5)
    assert torch.equal(pamr(image, coarse, iterations=0), coarse)


def test_pamr_bad_inputs_name_the_problem() -> None:
    image, _, coarse = _edge_case()
    with pytest.raises(ValueError, match="same B, H, W"):
        pamr(image[..., :16], coarse)
    with pytest.raises(ValueError, match="dilations"):
        pamr(image, coarse, dilations=(0, 2))
    with pytest.raises(ValueError, match="iterations"):
        pamr(image, coarse, iterations=-1)
