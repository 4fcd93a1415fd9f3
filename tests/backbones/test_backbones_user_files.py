"""What a new user hands the weight commands: broken files, existing outputs, the same network in other layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from official_dinov2 import official_state_dict

from neco.backbones import convert, create
from neco.backbones.checkpoint import read_checkpoint
from neco.backbones.loading import load_backbone, state_dict_checksum
from neco.cli import main

BROKEN = {
    "notes.pth": (b"these are my notes\n", "text file"),
    "page.pth": (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
    "weights.safetensors": (bytes(range(200, 256)) * 4, "not a safetensors file"),
    "empty.pth": (b"", "empty"),
}


@pytest.fixture()
def broken(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    files = {}
    for name, (content, said) in BROKEN.items():
        (tmp_path / name).write_bytes(content)
        files[name] = (tmp_path / name, said)
    return files


def test_a_file_that_is_not_a_checkpoint_is_named_and_described(broken) -> None:
    for path, said in broken.values():
        with pytest.raises(ValueError) as err:
            read_checkpoint(path)
        message = str(err.value)
        assert str(path) in message and said in message
        assert "weights_only=False" not in message  # no advice to turn safety off for a non-pickle


def test_truncated_torch_file_is_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"a": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:120])
    with pytest.raises(ValueError, match="cut.pth is not a readable torch checkpoint.*truncated"):
        read_checkpoint(path)


def test_every_command_reports_a_broken_file_without_traceback(broken, tmp_path: Path, capsys) -> None:
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    for path, said in broken.values():
        runs = [
            ["features", str(image), "--backbone", str(path), "-o", str(tmp_path / "f.pt")],
            [
                "features",
                str(image),
                "--backbone",
                "vit_tiny",
                "--weights",
                str(path),
                "-o",
                str(tmp_path / "f.pt"),
            ],
            ["export", str(path), "-o", str(tmp_path / "out.pth")],
            ["convert", str(path), "--to", "timm", "-o", str(tmp_path / "out.pth")],
        ]
        for args in runs:
            assert main(args) == 2, args
            err = capsys.readouterr().err
            assert str(path) in err and said in err and "Traceback" not in err, (args, err)


def test_outputs_are_not_overwritten_without_force(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    source = tmp_path / "official.pth"
    torch.save(create("vit_tiny").state_dict(), source)
    out = tmp_path / "out.pth"
    out.write_bytes(b"keep me")
    for command in (["export", str(source)], ["convert", str(source), "--to", "timm"]):
        assert main([*command, "-o", str(out)]) == 2
        assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    features = ["features", str(image), "--backbone", "vit_tiny", "--random-init", "--input-size", "16"]
    assert main([*features, "-o", str(out)]) == 2 and out.read_bytes() == b"keep me"
    assert main(["export", str(source), "-o", str(out), "--force"]) == 0
    assert out.read_bytes() != b"keep me"


def test_checksum_is_the_same_for_official_timm_and_hf_files_of_one_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in official_state_dict("vit_tiny_reg").items()}
    official = tmp_path / "official.pth"
    torch.save(state, official)
    sums = {}
    for fmt in ("official", "timm", "hf"):
        out = tmp_path / f"{fmt}.safetensors"
        named = ["--backbone", "vit_tiny_reg"] if fmt == "hf" else []  # hf writes config.json: needs the name
        assert main(["convert", str(official), "--format", fmt, *named, "-o", str(out)]) == 0  # `--to`: old
        model, identity = load_backbone("vit_tiny_reg", weights=out)
        sums[fmt] = identity["sha256"]
        assert identity["sha256"] == state_dict_checksum(model)
    assert len(set(sums.values())) == 1, sums
    assert state_dict_checksum(convert(state, to="timm")) == sums["official"]
    changed = dict(state, **{"blocks.0.attn.qkv.bias": state["blocks.0.attn.qkv.bias"] + 1e-3})
    assert state_dict_checksum(changed) != sums["official"]


@pytest.mark.parametrize("name", ["vit_tiny", "vit_tiny_reg"])
def test_hf_export_folder_loads_with_transformers_auto_model(name: str, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = create(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # not the init: a wrong mapping would show
    path = tmp_path / "neco.ckpt"
    state = model.state_dict()
    registers = model.num_register_tokens
    ckpt = {"format": "neco-checkpoint", "version": 1, "backbone": name, "num_register_tokens": registers}
    torch.save({**ckpt, "teacher": state, "student": state, "student_head": {}, "teacher_head": {}}, path)
    folder = tmp_path / "hf_model"
    assert main(["export", str(path), "--format", "hf", "-o", str(folder)]) == 0
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    hf = transformers.AutoModel.from_pretrained(str(folder)).eval()
    x = torch.randn(2, 3, 224, 224)  # the exported grid (28 x 28 patches of 8): no interpolation
    with torch.no_grad():
        ours = model.forward_features(x)["x_norm_patchtokens"]
        theirs = hf(pixel_values=x).last_hidden_state[:, 1 + registers :]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert main(["export", str(path), "--format", "hf", "-o", str(folder)]) == 2  # no silent overwrite


def test_hf_convert_writes_config_json_that_transformers_loads(tmp_path: Path, capsys) -> None:
    """`neco convert --format hf` writes config.json as export does: from the recorded or the given backbone."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = create("vit_tiny_reg").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = model.state_dict()
    ckpt = {"format": "neco-checkpoint", "version": 1, "backbone": "vit_tiny_reg", "num_register_tokens": 4}
    neco_ckpt, bare = tmp_path / "neco.ckpt", tmp_path / "bare.pth"
    torch.save({**ckpt, "teacher": state, "student": state}, neco_ckpt)
    torch.save(state, bare)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = model.forward_features(x)["x_norm_patchtokens"]
    for source, named in ((neco_ckpt, []), (bare, ["--backbone", "vit_tiny_reg"])):
        folder = tmp_path / f"hf_{source.stem}"
        assert main(["convert", str(source), "--format", "hf", *named, "-o", str(folder)]) == 0
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        hf = transformers.AutoModel.from_pretrained(str(folder)).eval()
        with torch.no_grad():
            theirs = hf(pixel_values=x).last_hidden_state[:, 1 + 4 :]
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    capsys.readouterr()
    unknown = tmp_path / "hf_unknown"
    assert main(["convert", str(bare), "--format", "hf", "-o", str(unknown)]) == 2
    assert "--backbone NAME" in capsys.readouterr().err and not unknown.exists()  # refused before writing
