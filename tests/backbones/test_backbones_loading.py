"""Loading a backbone as the commands do: checkpoints, run folders, --resume files, non-finite weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neco.backbones import create
from neco.backbones.loading import load_backbone, resolve_backbone
from neco.cli import main
from neco.demo.pretrain import save_tiny_asset


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_tiny_asset(
        create("vit_tiny"), {"config": {"backbone": "vit_tiny"}}, tmp_path / "run" / "last.ckpt"
    )


def test_checkpoint_with_weights_says_the_checkpoint_fixes_the_backbone(
    checkpoint: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.pth"
    torch.save(create("vit_tiny").state_dict(), other)
    with pytest.raises(
        ValueError, match="is a checkpoint, which fixes the backbone.*--backbone NAME --weights FILE"
    ):
        resolve_backbone(str(checkpoint), other)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    argv = ["features", str(image), "--backbone", str(checkpoint), "--weights", str(other)]
    assert main([*argv, "-o", str(tmp_path / "f.pt")]) == 2


def test_run_folder_resolves_to_its_last_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    run = checkpoint.parent
    assert resolve_backbone(str(run)) == ("vit_tiny", checkpoint)
    nested = tmp_path / "run2" / "checkpoints"
    nested.mkdir(parents=True)
    (nested / "last.ckpt").write_bytes(checkpoint.read_bytes())
    assert resolve_backbone(str(nested.parent))[1] == nested / "last.ckpt"
    model, identity = load_backbone(str(run))
    assert identity["weights"] == str(checkpoint.resolve())
    with pytest.raises(FileNotFoundError, match="folder without a checkpoint.*last.ckpt"):
        resolve_backbone(str(tmp_path / "run2" / "checkpoints" / ".." / ".."))


def test_resume_of_a_text_file_says_it_is_text(tmp_path: Path) -> None:
    from neco.training.checkpoint import read_checkpoint

    notes = tmp_path / "notes.ckpt"
    notes.write_text("e" * 200)
    with pytest.raises(ValueError, match="notes.ckpt is not a torch checkpoint.*looks like a text file"):
        read_checkpoint(notes)


def test_a_zip_named_safetensors_is_called_a_torch_file(tmp_path: Path) -> None:
    from neco.backbones import read_checkpoint

    path = tmp_path / "w.safetensors"
    torch.save(create("vit_tiny").state_dict(), path)
    with pytest.raises(ValueError, match="torch checkpoint \\(zip\\) named .safetensors") as err:
        read_checkpoint(path)
    assert "text file" not in str(err.value)


def test_non_finite_weights_are_refused_with_the_file_named(tmp_path: Path, capsys) -> None:
    state = create("vit_tiny").state_dict()
    state["model.blocks.1.attn.qkv.weight"][0, 0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="diverged.pth: 1 tensor.s. hold NaN or infinite"):
        create("vit_tiny", weights=path)
    assert main(["export", str(path), "--backbone", "vit_tiny", "-o", str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert "diverged.pth" in err and "NaN or infinite" in err and "Traceback" not in err
    assert not (tmp_path / "out.pth").exists()


def test_misspelt_timm_name_suggests_the_closest_whole_name() -> None:
    from neco.backbones import get_config

    with pytest.raises(ValueError, match="did you mean 'vit_small_patch16_224'"):
        get_config("timm:vit_smal_patch16_224")


def test_extract_features_takes_pil_images_and_arrays(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    import neco

    torch.manual_seed(0)
    model = create("vit_tiny")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 24, 16, 3), dtype=np.uint8)
    mean, std = (
        torch.tensor(model.config.mean).view(1, 3, 1, 1),
        torch.tensor(model.config.std).view(1, 3, 1, 1),
    )
    expected = neco.extract_features(
        model, (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std, progress=False
    )
    images = [Image.fromarray(p) for p in pixels]
    torch.testing.assert_close(neco.extract_features(model, images, progress=False), expected)
    torch.testing.assert_close(neco.extract_features(model, pixels, progress=False), expected)
    torch.testing.assert_close(neco.extract_features(model, list(pixels), progress=False), expected)
    with pytest.raises(TypeError, match="uint8 RGB"):
        neco.extract_features(model, pixels.astype(np.float32), progress=False)
    with pytest.raises(TypeError, match="PIL images or uint8 RGB arrays, but is int"):
        neco.extract_features(model, 3, progress=False)


def test_convert_of_a_dinov3_state_dict_without_backbone_says_to_name_it(tmp_path: Path, capsys) -> None:
    source = tmp_path / "dinov3.pth"
    torch.save(create("dinov3_vits16", depth=1).model.state_dict(), source)
    assert main(["convert", str(source), "--format", "timm", "-o", str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert "DINOv3" in err and "--backbone NAME" in err and "Traceback" not in err
