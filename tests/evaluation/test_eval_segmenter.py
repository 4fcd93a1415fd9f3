"""Segmenter decoders against hand computations, the training crops, sliding windows, the LR plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from neco.evaluation.blocks.seg_recipe import SegmenterTrainTransform, StepDataset, predict_probabilities
from neco.evaluation.blocks.segmenter import LinearDecoder, MaskTransformer, SegmenterModel, build_decoder


def test_mask_transformer_matches_hand_computation_on_a_non_square_grid():
    torch.manual_seed(0)
    decoder = MaskTransformer(dim=24, num_classes=5, num_layers=2, width=16, num_heads=2).eval()
    tokens = torch.randn(3, 2 * 3, 24)  # B = 3, grid 2 x 3, D = 24
    masks = decoder(tokens, (2, 3))
    assert masks.shape == (3, 5, 2, 3)
    # by hand: projected patches then the class embeddings, the layers, the norm, cosines, LayerNorm over classes
    x = torch.cat(
        [tokens @ decoder.proj_dec.weight.T + decoder.proj_dec.bias, decoder.cls_emb.expand(3, -1, -1)], 1
    )
    for block in decoder.blocks:
        x = block(x)
    x = F.layer_norm(x, (16,), decoder.decoder_norm.weight, decoder.decoder_norm.bias)
    patches, classes = x[:, :6] @ decoder.proj_patch, x[:, 6:] @ decoder.proj_classes
    cosine = torch.einsum(
        "bne,bce->bnc",
        patches / patches.norm(dim=-1, keepdim=True),
        classes / classes.norm(dim=-1, keepdim=True),
    )
    expected = F.layer_norm(cosine, (5,), decoder.mask_norm.weight, decoder.mask_norm.bias)  # (B, N, C)
    # patch n = row * 3 + column lands at masks[:, :, row, column]
    assert torch.allclose(masks[:, :, 1, 2], expected[:, 5], atol=1e-5)
    assert torch.allclose(masks.flatten(2).transpose(1, 2), expected, atol=1e-5)


def test_class_embeddings_reach_the_masks_and_get_gradients():
    torch.manual_seed(0)
    decoder = MaskTransformer(dim=8, num_classes=3, num_layers=0, width=8).eval()
    tokens = torch.randn(1, 4, 8)
    before = decoder(tokens, (2, 2))
    with torch.no_grad():
        decoder.cls_emb[0, 1] += (
            1.0  # without layers, only class 1's cosine column moves (before the LayerNorm)
        )
    after = decoder(tokens, (2, 2))
    assert not torch.allclose(before, after)
    decoder(tokens, (2, 2)).square().sum().backward()
    assert decoder.cls_emb.grad is not None and decoder.cls_emb.grad.abs().sum() > 0
    assert decoder.no_weight_decay() == {"cls_emb"}


def test_linear_decoder_and_errors():
    decoder = LinearDecoder(6, 4)
    tokens = torch.randn(2, 6, 6)
    logits = decoder(tokens, (2, 3))
    assert torch.allclose(logits[:, :, 1, 0], decoder.head(tokens)[:, 3], atol=1e-6)
    with pytest.raises(ValueError, match=r"`tokens` must be \(B, 4, D\)"):
        decoder(tokens, (2, 2))
    with pytest.raises(ValueError, match="`decoder` must be one of"):
        build_decoder("fpn", 6, 4)


def test_segmenter_model_gives_logits_at_image_size():
    from neco.backbones import create

    model = SegmenterModel(create("vit_tiny", pretrained=False), build_decoder("mask", 192, 3))
    assert model(torch.randn(1, 3, 16, 24)).shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        model(torch.randn(1, 3, 12, 16))


def test_train_transform_crops_pads_and_is_seeded():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    mask = np.zeros((20, 30), dtype=np.int64)
    mask[:, 15:] = 1
    transform = SegmenterTrainTransform(32, 16, ratio_range=(1.0, 1.0))
    pixels, labels = transform(image, mask, torch.Generator().manual_seed(1))
    # short side 16 -> 16 x 24, padded to 32 x 32 with label 255
    assert pixels.shape == (3, 32, 32) and labels.shape == (32, 32)
    assert (labels[16:] == 255).all() and (labels[:, 24:] == 255).all()
    assert set(labels[:16, :24].unique().tolist()) == {0, 1} and (pixels[:, 16:] == 0).all()
    again = transform(image, mask, torch.Generator().manual_seed(1))
    assert torch.equal(pixels, again[0]) and torch.equal(labels, again[1])


def test_step_dataset_visits_every_image_once_per_epoch():
    class Toy:
        def __len__(self):
            return 5

        def load(self, index):
            return Image.new("RGB", (8, 8), (index, 0, 0)), np.full((8, 8), index, dtype=np.int64)

    stream = StepDataset(Toy(), lambda image, mask, g: (torch.zeros(1), torch.as_tensor(mask)), 0, 0, 15)
    for epoch in range(3):
        assert sorted(stream.image_index(epoch * 5 + i) for i in range(5)) == list(range(5))
    assert [stream.image_index(i) for i in range(5)] != [stream.image_index(i) for i in range(5, 10)]


def test_sliding_windows_equal_one_pass_for_a_per_pixel_model():
    class PerPixel(torch.nn.Module):
        patch_size = 4

        def forward(self, images):
            return torch.stack([images[:, 0], -images[:, 0]], 1)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8))
    whole = predict_probabilities(PerPixel(), image, (24, 40), scale=24, window=64, stride=64)
    windows = predict_probabilities(PerPixel(), image, (24, 40), scale=24, window=16, stride=12)
    assert whole.shape == (2, 24, 40) and torch.allclose(whole, windows, atol=1e-6)
    flipped = predict_probabilities(PerPixel(), image, (24, 40), scale=24, window=16, stride=12, flip=True)
    assert torch.allclose(whole, flipped, atol=1e-6)  # a per-pixel model is flip-equivariant


def test_train_crops_keep_image_and_labels_aligned():
    from neco.evaluation.blocks.transforms import IMAGENET_MEAN, IMAGENET_STD

    labels = np.kron(
        np.random.default_rng(0).integers(0, 5, (6, 6)), np.ones((8, 8), dtype=np.int64)
    )  # 48 x 48
    image = Image.fromarray(
        np.stack([labels * 50, np.zeros_like(labels), np.zeros_like(labels)], -1).astype(np.uint8)
    )
    transform = SegmenterTrainTransform(32, 48, ratio_range=(0.8, 1.6), photometric=False)
    for seed in range(6):
        pixels, crop = transform(image, labels, torch.Generator().manual_seed(seed))
        red = pixels[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to 0..1
        decoded = (red * 255 / 50).round().long()
        kept = crop != 255
        assert (decoded[kept] == crop[kept]).float().mean() > 0.9  # only resampled edges may differ
