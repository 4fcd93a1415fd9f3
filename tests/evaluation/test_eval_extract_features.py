"""`neco.extract_features`: batched (N, D, h, w) patch grids of final-LayerNorm tokens."""

from __future__ import annotations

import pytest
import torch

import neco
from neco.backbones import create


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create("vit_tiny_reg")


def test_grid_equals_patch_tokens_and_is_batch_invariant(model) -> None:
    images = torch.randn(5, 3, 24, 40)
    grids = neco.extract_features(model, images, batch_size=2, progress=False)
    assert grids.shape == (5, 192, 3, 5) and grids.dtype == torch.float32 and grids.device.type == "cpu"
    model.eval()
    with torch.no_grad():
        tokens = model.forward_features(images)["x_norm_patchtokens"]  # (5, 15, 192), row-major
    torch.testing.assert_close(grids.flatten(2).transpose(1, 2), tokens, atol=1e-5, rtol=1e-5)
    # Patch (row 1, col 3) of image 4 is token 1 * 5 + 3.
    torch.testing.assert_close(grids[4, :, 1, 3], tokens[4, 8], atol=1e-5, rtol=1e-5)
    one_batch = neco.extract_features(model, images, batch_size=8, progress=False)
    torch.testing.assert_close(one_batch, grids, atol=1e-5, rtol=1e-5)


def test_iterable_of_batches_and_training_flag_restored() -> None:
    model = create("vit_tiny", drop_path_rate=0.5).train()
    batches = [torch.randn(2, 3, 16, 16), torch.randn(1, 3, 16, 16)]
    grids = neco.extract_features(model, iter(batches), progress=False)
    assert grids.shape == (3, 192, 2, 2)
    assert model.training
    assert not any(p.grad is not None for p in model.parameters())
    # Eval mode was used: with drop-path 0.5 in train mode the results would be random; here they repeat.
    again = neco.extract_features(model, batches, progress=False)
    torch.testing.assert_close(again, grids)


def test_bad_inputs(model) -> None:
    with pytest.raises(ValueError, match="`images` must be a \\(N, 3, H, W\\)"):
        neco.extract_features(model, torch.randn(3, 16, 16), progress=False)
    with pytest.raises(ValueError, match="`batch_size` must be >= 1"):
        neco.extract_features(model, torch.randn(1, 3, 16, 16), batch_size=0, progress=False)
    with pytest.raises(ValueError, match="same grid"):
        neco.extract_features(model, [torch.randn(1, 3, 16, 16), torch.randn(1, 3, 24, 16)], progress=False)
    with pytest.raises(ValueError, match="no image"):
        neco.extract_features(model, [], progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_gives_cpu_float32_grids(model) -> None:
    images = torch.randn(3, 3, 16, 24)
    on_gpu = neco.extract_features(model, images, device="cuda", progress=False)
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"  # the model is moved back
    torch.testing.assert_close(
        on_gpu, neco.extract_features(model, images, progress=False), atol=1e-3, rtol=1e-3
    )
