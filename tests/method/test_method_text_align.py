"""Talk2DINO's text-to-patch pieces: attention pooling, head-selected InfoNCE, scores, text towers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from neco.method.text_align import (
    HeadSelectInfoNCE,
    TextToPatchMapping,
    clean_background,
    cls_patch_attention,
    head_pooled_embeddings,
    pair_similarity,
    prompt_texts,
    segment_scores,
)
from neco.method.text_encoder import TextEncoder, tiny_text_config


def test_cls_attention_drops_cls_and_registers_and_renormalises():
    logits = torch.randn(2, 3, 7, 7)
    attention = logits.softmax(-1)
    weights = cls_patch_attention(attention, num_register_tokens=2)  # tokens: CLS, 2 registers, 4 patches
    assert weights.shape == (2, 3, 4)
    torch.testing.assert_close(weights, logits[:, :, 0, 3:].softmax(-1))  # softmax over the patches only


def test_head_pooling_is_the_weighted_average_and_pair_similarity_takes_the_best_head():
    patches = torch.randn(2, 4, 5)
    weights = torch.rand(2, 3, 4).softmax(-1)
    pooled = head_pooled_embeddings(patches, weights)
    torch.testing.assert_close(pooled[1, 2], (weights[1, 2, :, None] * patches[1]).sum(0))
    mapped = torch.randn(2, 5)
    similarity, heads = pair_similarity(pooled, mapped)
    cosine = F.cosine_similarity(pooled[0], mapped[1][None], dim=-1)  # (H,)
    assert similarity[0, 1] == pytest.approx(cosine.max().item(), abs=1e-6)
    assert heads[0, 1] == cosine.argmax()


def test_loss_prefers_matched_pairs_and_trains_only_mapping_and_scale():
    torch.manual_seed(0)
    loss_fn = HeadSelectInfoNCE()
    assert loss_fn.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    mapping = TextToPatchMapping(6, 5, hidden_dim=8)
    text = torch.randn(4, 6)
    target = mapping(text).detach()
    pooled = torch.stack(
        [target + 0.01 * torch.randn(3, 5) for target in target]
    )  # (B, H, D): every head matches
    matched, stats = loss_fn(pooled, mapping(text))
    shuffled, _ = loss_fn(pooled[[1, 2, 3, 0]], mapping(text))
    assert matched < shuffled and stats["pair_accuracy"] == 1.0
    matched.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mapping.parameters())
    assert loss_fn.logit_scale.grad is not None
    with pytest.raises(ValueError, match="B >= 2"):
        loss_fn(pooled[:1], mapping(text[:1]))


def test_mapping_is_w2_tanh_w1():
    mapping = TextToPatchMapping(3, 4, hidden_dim=5)
    text = torch.randn(2, 3)
    expected = torch.tanh(text @ mapping.inner.weight.T + mapping.inner.bias) @ mapping.outer.weight.T
    torch.testing.assert_close(mapping(text), expected + mapping.outer.bias)
    with pytest.raises(ValueError, match="must end in 3"):
        mapping(torch.randn(2, 4))


def test_scores_are_cosines_and_cleaning_with_zero_weight_changes_nothing():
    grid = torch.randn(1, 5, 2, 3)
    classes = torch.randn(4, 5)
    scores = segment_scores(grid, classes)
    assert scores[0, 2, 1, 0] == pytest.approx(
        F.cosine_similarity(grid[0, :, 1, 0], classes[2], dim=0).item(), abs=1e-6
    )
    weights = torch.rand(1, 3, 6).softmax(-1)
    torch.testing.assert_close(clean_background(scores, grid, weights, classes, 0.0), scores)
    cleaned = clean_background(scores, grid, weights, classes, 0.2)
    assert cleaned.shape == scores.shape and not torch.allclose(cleaned, scores)
    with pytest.raises(ValueError, match="another backbone"):
        segment_scores(grid, torch.randn(4, 6))


def test_prompts_fill_the_templates():
    assert prompt_texts("potted_plant", "simple") == ["a photo of a potted plant."]
    assert len(prompt_texts("stripes-vertical", "subset")) == 7
    with pytest.raises(ValueError, match="templates"):
        prompt_texts("dog", "all")


def _mean_offdiagonal_cosine(encoder: TextEncoder, names: list[str]) -> float:
    embeddings = F.normalize(encoder.encode(names), dim=-1)
    cosines = embeddings @ embeddings.T
    return float(cosines[~torch.eye(len(names), dtype=torch.bool)].mean())


def test_words_init_tells_class_names_apart_where_a_random_tower_does_not():
    names = ["checkerboard", "dots", "rings", "zigzag", "crosshatch", "grid"]
    torch.manual_seed(0)
    plain = TextEncoder.from_spec({"config": tiny_text_config(width=64)})
    torch.manual_seed(0)
    words = TextEncoder.from_spec({"config": tiny_text_config(width=64), "init": "words"})
    # a random tower gives different names similar embeddings (class names: mean off-diagonal cosine 0.61 at width 64, seed 0)
    assert _mean_offdiagonal_cosine(plain, names) > 0.4
    assert abs(_mean_offdiagonal_cosine(words, names)) < 0.2
    # the stored weights rebuild the same tower
    rebuilt = TextEncoder.from_spec(words.spec, state_dict=words.text_state_dict())
    assert rebuilt.checksum() == words.checksum()
    torch.testing.assert_close(rebuilt.encode(names), words.encode(names))
    assert not math.isnan(words.encode(["a"]).sum().item())
    with pytest.raises(ValueError, match="`init`"):
        TextEncoder.from_spec({"config": tiny_text_config(), "init": "zeros"})


def test_missing_clip_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(
        FileNotFoundError, match=r"ViT-B-16/openai.*open_clip_model.safetensors.*--text-weights FILE"
    ):
        TextEncoder.from_spec({"model": "ViT-B-16", "pretrained": "openai"}, download=False)
    with pytest.raises(FileNotFoundError, match="--text-weights .*clip.pt: file not found"):
        TextEncoder.from_spec({"model": "ViT-B-16", "weights": str(tmp_path / "clip.pt")})
    with pytest.raises(ValueError, match="open_clip model name"):
        TextEncoder.from_spec({"model": "ViT-Q-99", "pretrained": "openai"})
