"""Tiny image-level pretraining: targets come from the crop, the saved asset loads through the registry path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neco.backbones import create
from neco.demo.pretrain import TinyPretrainConfig, _sample_batch, pretrain_tiny


def test_targets_match_classes_in_the_crop():
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros((1, 32, 32), dtype=np.uint8)
    labels[0, :, :16] = 3  # left half class 3, right half background
    cfg = TinyPretrainConfig(scene_size=32, crop_size=16, crop_scale=(1.0, 1.0), batch_size=2)
    x, y = _sample_batch(images, labels, cfg, np.random.default_rng(0))
    assert x.shape == (2, 3, 16, 16)
    expected = torch.zeros(2, 8)
    expected[:, 2] = 1  # class 3 is target column 2 (background is not a target)
    assert torch.equal(y, expected)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="crop_size"):
        TinyPretrainConfig(crop_size=20)
    with pytest.raises(ValueError, match="steps"):
        TinyPretrainConfig(steps=0)


def test_pretrain_saves_a_loadable_neco_checkpoint(tmp_path):
    cfg = TinyPretrainConfig(num_scenes=8, steps=2, batch_size=4, scene_size=32, crop_size=16)
    model, log = pretrain_tiny(cfg, tmp_path / "tiny.pth", progress=False)
    assert len(log["loss_curve"]) == 2 and np.isfinite(log["final_loss"])
    loaded = create("vit_tiny", weights=tmp_path / "tiny.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        # the asset is stored in fp16, so the reloaded model equals the trained one up to fp16 rounding
        ref, out = model(x), loaded(x)
    assert torch.allclose(ref, out, atol=5e-2), (ref - out).abs().max()
    payload = torch.load(tmp_path / "tiny.pth", weights_only=True)
    assert payload["format"] == "neco-checkpoint" and payload["backbone"] == "vit_tiny"


def test_shipped_asset_loads_through_the_registry():
    model = create("vit_tiny_scenes", pretrained=True)
    assert model.patch_size == 8 and model.embed_dim == 192
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_asset_writer_reproduces_the_shipped_bytes(tmp_path):
    """Issue 24: the shipped asset's weights and provenance, written again, give the shipped file's sha256.

    `neco pretrain-tiny --threads 1` rebuilt every tensor of the asset exactly, but after the timm backbone
    rewrite the writer put `mask_token` last instead of after `pos_embed`; torch.save keeps key order.
    """
    import hashlib
    from dataclasses import asdict
    from importlib import resources

    from neco.backbones import load_weights
    from neco.demo.pretrain import save_tiny_asset

    shipped = resources.files("neco").joinpath("assets", "vit_tiny_scenes.pth")
    provenance = torch.load(shipped, weights_only=True)["provenance"]
    model = create("vit_tiny", pretrained=False)
    load_weights(model, shipped)
    log = {k: provenance[k] for k in ("seconds", "final_loss", "final_label_accuracy")}
    save_tiny_asset(
        model, {"config": asdict(TinyPretrainConfig()), **log, "loss_curve": []}, tmp_path / "t.pth"
    )
    digest = hashlib.sha256((tmp_path / "t.pth").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(shipped.read_bytes()).hexdigest()
