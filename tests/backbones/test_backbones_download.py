"""Weight downloads: cache layout, cache hits without network, and the offline error message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neco.backbones import create, get_config
from neco.backbones import download as download_module
from neco.backbones.download import cache_dir, cached_path, download_weights, weight_source
from neco.backbones.registry import WeightSource


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NECO_CACHE", str(tmp_path / "cache"))
    calls = []

    def refuse(source, target, progress):  # the network is never touched in tests
        calls.append(source)
        raise OSError("network is unreachable")

    monkeypatch.setattr(download_module, "_fetch", refuse)
    return tmp_path / "cache"


def test_cache_layout(offline: Path) -> None:
    assert cache_dir() == offline
    official = get_config("dinov2_vits14_reg").weights
    assert (
        official.download_url()
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"
    )
    assert cached_path(official) == offline / "checkpoints" / "dinov2_vits14_reg4_pretrain.pth"
    neco_small, neco_base = get_config("neco_vits14_reg").weights, get_config("neco_vitb14_reg").weights
    assert neco_small.download_url().startswith(
        "https://huggingface.co/FunAILab/NeCo/resolve/main/vit-small/"
    )
    # Same file name in both sizes: the cache keeps the repository path so they cannot collide.
    assert neco_small.filename == neco_base.filename
    assert cached_path(neco_small) != cached_path(neco_base)


def test_offline_error_names_the_file_and_where_to_put_it(offline: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        create("dinov2_vits14", pretrained=True, depth=1)
    message = str(err.value)
    assert "dinov2_vits14_pretrain.pth" in message
    assert str(offline / "checkpoints" / "dinov2_vits14_pretrain.pth") in message
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth" in message


def test_cached_file_is_used_without_downloading(offline: Path) -> None:
    torch.manual_seed(0)
    weights = create("vit_tiny").state_dict()
    source = WeightSource(filename="tiny.pth", hf_repo="someone/tiny", hf_filename="a/tiny.pth")
    target = cached_path(source)
    target.parent.mkdir(parents=True)
    torch.save(weights, target)
    assert download_weights(source) == target  # `_fetch` would raise
    model = create("vit_tiny", weights=download_weights(source))
    assert torch.equal(model.blocks[0].attn.qkv.weight, weights["model.blocks.0.attn.qkv.weight"])


def test_backbone_without_weights_refuses_pretrained() -> None:
    with pytest.raises(ValueError, match="no pretrained weights .* pass --weights FILE .* or --random-init"):
        create("vit_tiny", pretrained=True)  # the hint names both ways out, in Python too


def test_timm_and_hf_hub_sources(offline: Path) -> None:
    config = get_config("dinov2_vits14_reg")
    timm_source, hf_source = weight_source(config, "timm"), weight_source(config, "hf")
    assert timm_source.download_url() == (
        "https://huggingface.co/timm/vit_small_patch14_reg4_dinov2.lvd142m/resolve/main/model.safetensors"
    )
    assert hf_source.download_url() == (
        "https://huggingface.co/facebook/dinov2-with-registers-small/resolve/main/model.safetensors"
    )
    with pytest.raises(FileNotFoundError, match=str(offline / "hub" / "timm")):
        create("dinov2_vits14_reg", pretrained="timm", depth=1)
    with pytest.raises(ValueError, match="`hub` must be one of"):
        create("dinov2_vits14_reg", pretrained="onnx", depth=1)
    with pytest.raises(ValueError, match="no pretrained weights on the 'timm' hub"):
        weight_source(get_config("neco_vits14"), "timm")


def test_hub_mirror_is_the_address_fetched_and_named(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example/")
    source = get_config("neco_vits14").weights
    url = "http://mirror.example/FunAILab/NeCo/resolve/main/vit-small/dinov2-architectures/neco_on_dinov2_vit14_teacher.ckpt"
    assert source.download_url() == url
    with pytest.raises(FileNotFoundError, match=f"from {url} "):
        download_weights(source, progress=False)
    assert cached_path(source) == offline / "hub" / "FunAILab" / "NeCo" / url.split("/resolve/main/")[1]
