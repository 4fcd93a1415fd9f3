"""`timm:<name>`: any timm ViT as a neco backbone — interface, optimizer groups, training, export, demo, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from neco.backbones import create, get_config
from neco.cli import main
from neco.method.head import ProjectionHead
from neco.method.optim import apply_trainable_blocks, build_param_groups

ROOT = Path(__file__).resolve().parents[2]
# DeiT with a distillation token: two prefix tokens (CLS + dist), a learned position table; tiny shape.
DEIT_KWARGS = {"depth": 2, "embed_dim": 64, "num_heads": 2}
DEIT = "timm:deit_tiny_distilled_patch16_224," + ",".join(f"{k}={v}" for k, v in DEIT_KWARGS.items())


def test_name_carries_timm_kwargs_and_the_config_reads_the_model() -> None:
    config = get_config(DEIT)
    assert (config.family, config.patch_size, config.embed_dim, config.depth, config.num_heads) == (
        "timm",
        16,
        64,
        2,
        2,
    )
    assert config.num_register_tokens == 1  # the distillation token sits between CLS and the patches
    with pytest.raises(ValueError, match="timm has no model 'no_such_vit'"):
        get_config("timm:no_such_vit")
    with pytest.raises(ValueError, match="must be key=value"):
        get_config("timm:test_vit,depth")


def test_patch_grid_and_attention_equal_timm() -> None:
    torch.manual_seed(0)
    model = create(DEIT).eval()
    x = torch.randn(2, 3, 48, 80)  # non-square; the position table is resampled by timm
    with torch.no_grad():
        expected = model.model.forward_features(x)
        out = model.forward_features(x)
        attn = model.get_last_self_attention(x)
    assert out["x_norm_patchtokens"].shape == (2, 3 * 5, 64)
    torch.testing.assert_close(out["x_norm_patchtokens"], expected[:, 2:], atol=1e-6, rtol=0)
    # The same attention recomputed from the last block's input: softmax(q k^T / sqrt(d)).
    block, captured = model.model.blocks[-1], {}
    handle = block.register_forward_hook(lambda _m, inputs, _o: captured.update(x=inputs[0]))
    with torch.no_grad():
        model.forward_features(x)
        handle.remove()
        qkv = block.attn.qkv(block.norm1(captured["x"])).reshape(2, 17, 3, 2, 32).permute(2, 0, 3, 1, 4)
        manual = ((qkv[0] @ qkv[1].transpose(-2, -1)) * 32**-0.5).softmax(-1)
    torch.testing.assert_close(attn, manual, atol=1e-6, rtol=0)
    # A crop that is not a patch multiple drops the remainder, like neco's own ViT.
    with torch.no_grad():
        cropped = model.forward_features(torch.nn.functional.pad(x, (0, 7, 0, 9)))["x_norm_patchtokens"]
    assert cropped.shape == out["x_norm_patchtokens"].shape


def test_attention_error_names_a_model_without_cls_token() -> None:
    model = create("timm:test_vit,class_token=false,global_pool=avg,depth=1").eval()
    with pytest.raises(ValueError, match="has no CLS token"):
        model.get_last_self_attention(torch.randn(1, 3, 32, 32))


def test_param_groups_and_trainable_blocks_follow_timm_declarations() -> None:
    model = create(DEIT)
    head = ProjectionHead(64, 16, 8)
    groups = build_param_groups(model, head, 1e-5, 1e-4, 0.04)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert {"pos_embed", "cls_token", "dist_token"} <= set(model.model.no_weight_decay())
    assert {"model.pos_embed", "model.cls_token", "model.dist_token", "model.norm.weight"} <= no_decay
    assert "model.blocks.0.attn.qkv.weight" in decay and "model.blocks.0.attn.qkv.bias" in no_decay
    apply_trainable_blocks(model, -1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # timm's group_matcher puts the final norm into the last block's group.
    assert all(n.startswith(("model.blocks.1.", "model.norm.")) for n in trainable)
    assert "model.blocks.1.attn.qkv.weight" in trainable and "model.patch_embed.proj.weight" not in trainable


def test_timm_model_trains_on_tiny_preset_and_exports_to_timm(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from neco.data.synthetic import write_scenes
    from neco.training.config import load_config
    from neco.training.run import train

    scenes = write_scenes(tmp_path / "scenes", num_train=8, num_val=2, size=64, progress=False)
    config = load_config(
        ROOT / "configs" / "tiny_cpu.yaml",
        [
            f"model.backbone={DEIT}",
            "model.head_hidden_dim=32",
            "model.head_out_dim=16",
            "data.kind=voc",
            f"data.root={scenes}",
            "data.batch_size=2",
            "data.crops.num_local=2",
            "loss.roi_size=3",
            "loss.queue_size=32",
            "optim.max_steps=3",
            "optim.lr_backbone=1e-3",
            "run.ckpt_every_steps=3",
            "run.loggers=[csv]",
            "run.log_every=1",
            "run.progress=false",
            f"run.out_dir={tmp_path / 'run'}",
        ],
    )
    start = create(DEIT, weights=None)  # shapes only; the run starts from its own random init
    result = train(config, progress=False)
    assert result.last_checkpoint is not None
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["backbone"] == DEIT and checkpoint["step"] == 3
    assert checkpoint["student"].keys() == start.state_dict().keys()

    out = tmp_path / "teacher_timm.safetensors"
    assert main(["export", str(result.last_checkpoint), "--format", "timm", "-o", str(out)]) == 0
    from safetensors.torch import load_file

    reference = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=0, **DEIT_KWARGS).eval()
    reference.load_state_dict(load_file(out), strict=True)
    teacher = create(DEIT, weights=result.last_checkpoint).eval()  # the teacher by default
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            reference.forward_features(x)[:, 2:],
            teacher.forward_features(x)["x_norm_patchtokens"],
            rtol=0,
            atol=0,
        )
    capsys.readouterr()
    assert (
        main(["export", str(result.last_checkpoint), "--format", "official", "-o", str(tmp_path / "x.pth")])
        != 0
    )
    assert "--format official is not available" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_demo_runs_with_a_random_timm_vit(tmp_path: Path) -> None:
    from neco.demo.run import DemoConfig, run_demo

    cfg = DemoConfig.quick(
        out=str(tmp_path / "demo"),
        backbone="timm:test_vit",
        random_init=True,
        eval_seeds=(0,),
        num_train=12,
        num_val=4,
        train_steps=2,
        progress=False,
    )
    results = run_demo(cfg)
    assert results["backbone"]["name"] == "timm:test_vit" and results["backbone"]["patch_size"] == 16
    assert (tmp_path / "demo" / "report.html").is_file()
    for evaluation in results["evaluations"].values():
        assert 0.0 <= evaluation["before"]["miou_mean"] <= 100.0


def test_eval_hummingbird_on_random_dinov3(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scenes = tmp_path / "scenes"
    assert (
        main(
            [
                "make-scenes",
                str(scenes),
                "--num-train",
                "6",
                "--num-val",
                "2",
                "--size",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "hummingbird",
            "--dataset",
            "scenes",
            "--data-root",
            str(scenes),
            "--backbone",
            "dinov3_vits16",
            "--random-init",
            "--input-size",
            "64",
            "--memory-size",
            "500",
            "--aug-epochs",
            "1",
            "--num-workers",
            "0",
            "--batch-size",
            "4",
            "--num-figures",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads((out / "hummingbird.json").read_text())
    assert result["backbone"]["name"] == "dinov3_vits16"
    assert (result["backbone"]["patch_size"], result["backbone"]["num_register_tokens"]) == (16, 4)
    assert 0.0 <= result["metrics"]["miou"] <= 100.0
