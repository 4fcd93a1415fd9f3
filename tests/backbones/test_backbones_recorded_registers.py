"""A checkpoint trained with another register count than its registry entry builds with the recorded count."""

from __future__ import annotations

import pytest
import torch

from neco.backbones import create
from neco.backbones.checkpoint import recorded_register_tokens
from neco.backbones.loading import load_backbone
from neco.demo.pretrain import save_tiny_asset


def test_xr_checkpoint_loads_with_its_recorded_register_count(tmp_path):
    torch.manual_seed(0)
    xr = create("vit_tiny_reg", num_register_tokens=0)  # the XR recipe: register weights, no registers
    path = save_tiny_asset(xr, {"config": {"backbone": "vit_tiny_reg"}}, tmp_path / "xr.pth")
    assert recorded_register_tokens(path) == 0
    x = torch.randn(1, 3, 32, 32)
    for model in (create("vit_tiny_reg", weights=path), load_backbone(str(path))[0]):
        assert model.num_register_tokens == 0
        with torch.no_grad():
            assert torch.allclose(model.eval()(x), xr.eval()(x), atol=5e-2)  # fp16 asset


def test_other_files_record_nothing(tmp_path):
    torch.save(create("vit_tiny").state_dict(), tmp_path / "plain.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert recorded_register_tokens(tmp_path / "plain.pth") is None
    assert recorded_register_tokens(tmp_path / "text.pth") is None
    assert recorded_register_tokens({"num_register_tokens": 4}) == 4


def test_random_init_with_a_weights_file_is_refused_by_every_loader(tmp_path, capsys):
    from neco.cli import main

    path = tmp_path / "w.pth"
    torch.save(create("vit_tiny").state_dict(), path)
    with pytest.raises(ValueError, match="--random-init.*--weights"):
        load_backbone("vit_tiny", weights=path, pretrained=False)  # eval / features / explore
    argv = ["features", str(tmp_path), "--backbone", "vit_tiny", "--weights", str(path), "--random-init"]
    assert main([*argv, "-o", str(tmp_path / "f.pt")]) == 2
    assert "--random-init" in capsys.readouterr().err
    assert not (tmp_path / "f.pt").exists()
