"""The command modules stay thin: what they hand to the layer below gives the same numbers as calling it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neco.cli import main


def test_features_equal_the_backbone_on_contiguous_normalised_images(tmp_path: Path) -> None:
    """`neco features` reads through `neco.explore.load_image_files`; its grids are the model's, bit for bit."""
    from neco.backbones import create

    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(create("vit_tiny").state_dict(), weights)
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (20, 30, 3)), ("b.png", (33, 17, 3)), ("c.png", (16, 16, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / name)
    out = tmp_path / "f.pt"
    argv = [
        "features",
        str(tmp_path),
        "--backbone",
        "vit_tiny",
        "--weights",
        str(weights),
        "--input-size",
        "32",
    ]
    assert main([*argv, "--batch-size", "2", "--device", "cpu", "-o", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    model = create("vit_tiny", weights=weights).eval()
    pixels = np.stack(
        [np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR)) for f in saved["files"]]
    )
    mean, std = (
        torch.tensor(model.config.mean).view(1, 3, 1, 1),
        torch.tensor(model.config.std).view(1, 3, 1, 1),
    )
    x = ((torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float() / 255 - mean) / std)[
        :2
    ]  # (2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)["x_norm_patchtokens"]  # (2, 16, 192)
    assert torch.equal(saved["features"][:2], tokens.transpose(1, 2).reshape(2, 192, 4, 4))
