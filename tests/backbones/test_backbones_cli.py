"""`neco export`, `neco convert`, `neco features` and `neco backbones` end to end on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from official_dinov2 import official_state_dict
from PIL import Image

from neco.backbones import convert, create
from neco.cli import main


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    torch.manual_seed(0)
    teacher = {k: torch.randn_like(v) for k, v in official_state_dict("vit_tiny_reg").items()}
    student = {k: torch.randn_like(v) for k, v in teacher.items()}
    path = tmp_path_factory.mktemp("ckpt") / "neco.ckpt"
    torch.save(
        {
            "format": "neco-checkpoint",
            "version": 1,
            "backbone": "vit_tiny_reg",
            "num_register_tokens": 4,
            "student": student,
            "teacher": teacher,
            "student_head": {},
            "teacher_head": {},
            "step": 1,
        },
        path,
    )
    return path, teacher, student


def _same(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_export_teacher_official_and_student_timm(tiny_ckpt, tmp_path: Path, capsys) -> None:
    path, teacher, student = tiny_ckpt
    out = tmp_path / "teacher.pth"
    assert main(["export", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "teacher" in printed and "better model" in printed and "verified" in printed
    assert _same(torch.load(out, weights_only=True), teacher)
    out_timm = tmp_path / "student_timm.safetensors"
    assert main(["export", str(path), "--which", "student", "--format", "timm", "-o", str(out_timm)]) == 0
    from safetensors.torch import load_file

    assert _same(load_file(str(out_timm)), convert(student, to="timm"))


def test_convert_round_trip_through_files(tiny_ckpt, tmp_path: Path) -> None:
    _, teacher, _ = tiny_ckpt
    official = tmp_path / "official.pth"
    torch.save(teacher, official)
    hf, back = tmp_path / "hf.pth", tmp_path / "back.pth"
    assert main(["convert", str(official), "--to", "hf", "--backbone", "vit_tiny_reg", "-o", str(hf)]) == 0
    assert any(k.startswith("encoder.layer.") for k in torch.load(hf, weights_only=True))
    assert main(["convert", str(hf), "--to", "official", "-o", str(back)]) == 0
    assert _same(torch.load(back, weights_only=True), teacher)


def test_cli_errors_are_reported_without_traceback(tmp_path: Path, capsys) -> None:
    assert (
        main(["convert", str(tmp_path / "missing.pth"), "--to", "timm", "-o", str(tmp_path / "x.pth")]) == 2
    )
    assert "missing.pth" in capsys.readouterr().err
    assert main(["features", str(tmp_path), "--backbone", "nope", "-o", str(tmp_path / "f.pt")]) == 2
    assert "vit_tiny" in capsys.readouterr().err


def test_features_command(tiny_ckpt, tmp_path: Path) -> None:
    path, teacher, _ = tiny_ckpt
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.jpg", "c.png"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "feats.pt"
    args = [
        "features",
        str(images),
        "--backbone",
        "vit_tiny_reg",
        "--weights",
        str(path),
        "--input-size",
        "32",
    ]
    assert main(args + ["--batch-size", "2", "-o", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["features"].shape == (3, 192, 4, 4)
    assert [Path(f).name for f in saved["files"]] == ["a.png", "c.png", "b.jpg"]
    # Same numbers as running the model on the resized, normalised image by hand.
    from torchvision.transforms import functional as TF

    from neco.data.base import load_rgb

    model = create("vit_tiny_reg", weights=teacher).eval()
    image = TF.resize(load_rgb(images / "a.png"), [32, 32], antialias=True)
    x = TF.normalize(TF.to_tensor(image), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[None]
    with torch.no_grad():
        tokens = model.forward_features(x)["x_norm_patchtokens"]
    torch.testing.assert_close(saved["features"][0], tokens[0].T.reshape(192, 4, 4))
    assert main(args[:-1] + ["30", "-o", str(tmp_path / "f30.pt")]) == 2  # not a multiple of the patch size
    assert saved["backbone"]["name"] == "vit_tiny_reg" and saved["input_size"] == 32


def test_features_command_loads_pretrained_weights_unless_told_otherwise(tmp_path: Path, capsys) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    base = [
        "features",
        str(image),
        "--backbone",
        "vit_tiny",
        "--input-size",
        "16",
        "-o",
        str(tmp_path / "f.pt"),
    ]
    assert main(base) == 2  # no silent random network: vit_tiny has no pretrained weights
    assert "--random-init" in capsys.readouterr().err
    assert main([*base, "--random-init"]) == 0


def test_backbones_listing(capsys) -> None:
    assert main(["backbones", "--urls"]) == 0
    printed = capsys.readouterr().out
    assert "dinov2_vitg14_reg" in printed and "neco_vits14_reg" in printed
    assert "https://huggingface.co/FunAILab/NeCo/resolve/main/vit-small/dinov2-architectures/" in printed
