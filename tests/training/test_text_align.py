"""`neco text-align` on generated scenes: the mapping learns, zero-shot segmentation beats chance, resume is exact."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from text_align_data import SIZE, TEXT_CONFIG, config, write_caption_scenes


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 100-step run on 64 tinted scenes (shared by the tests of this module)."""
    from neco.training.text_align import train_text_align

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("text_align")
    scenes, captions = write_caption_scenes(root)
    result = train_text_align(config(captions, root / "run"))
    return scenes, captions, result


def _losses(run_dir):
    (path,) = run_dir.glob("csv/version_*/metrics.csv")
    with open(path) as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle) if row.get("loss")]


def test_loss_falls_and_checkpoint_is_small(trained):
    _, _, result = trained
    losses = _losses(result.out_dir)
    assert result.global_step == 100
    # in-batch InfoNCE over 64 pairs starts near log(64) = 4.16
    assert sum(losses[:10]) / 10 > 3.5
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["format"] == "neco-text-align"
    assert not any(
        k.startswith("backbone") for k in checkpoint["state_dict"]
    )  # the frozen backbone is not stored
    assert set(checkpoint["state_dict"]) == {
        "mapping.inner.weight",
        "mapping.inner.bias",
        "mapping.outer.weight",
        "mapping.outer.bias",
        "loss_fn.logit_scale",
    }
    meta = json.loads((result.out_dir / "text_align.json").read_text())
    assert meta["backbone"]["name"] == "vit_tiny_scenes" and meta["patch_dim"] == 192


def test_zero_shot_miou_well_above_chance(trained):
    from neco import backbones
    from neco.data import build_segmentation_dataset
    from neco.evaluation import Features, evaluate
    from neco.evaluation.protocol import EvalData
    from neco.evaluation.protocols.openvocab import OpenVocabSettings, chance_miou

    scenes, _, result = trained
    val = build_segmentation_dataset("scenes", scenes, "val")
    model = backbones.create("vit_tiny_scenes", pretrained=True)
    settings = OpenVocabSettings(mapping=str(result.last_checkpoint), background="drop", templates="identity")
    evaluation = evaluate(
        "openvocab",
        Features.of_model(model),
        EvalData(val=val, name="scenes"),
        settings,
        input_size=SIZE,
        progress=False,
        num_workers=0,
    )
    chance = chance_miou(val)
    assert 4 < chance < 10
    assert evaluation.headline > 2 * chance, (evaluation.headline, chance)
    assert "background" not in evaluation.result["metrics"]["per_class_iou"]  # dropped, not scored


def test_resume_continues_exactly(trained, tmp_path):
    from neco.training.text_align import train_text_align

    _, captions, _ = trained
    straight = train_text_align(config(captions, tmp_path / "straight", max_steps=6, ckpt_every_steps=3))
    first = train_text_align(
        config(captions, tmp_path / "split", max_steps=6, ckpt_every_steps=3, stop_at_step=3)
    )
    assert first.global_step == 3 and first.interrupted is False
    second = train_text_align(
        config(captions, tmp_path / "split", max_steps=6, ckpt_every_steps=3), resume="auto"
    )
    assert second.global_step == 6
    a = torch.load(straight.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(second.last_checkpoint, weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    with pytest.raises(FileExistsError, match="--resume auto"):
        train_text_align(config(captions, tmp_path / "split", max_steps=6))


def test_resume_auto_skips_a_damaged_last_checkpoint(trained, tmp_path):
    """`--resume auto` takes the newest checkpoint that reads back, as `neco train` does."""
    import shutil

    from neco.training.text_align import train_text_align

    _, captions, result = trained
    copy = tmp_path / "run"
    shutil.copytree(result.out_dir, copy, symlinks=True)  # last.ckpt stays a link to step 100
    (copy / "checkpoints" / "step_00000100.ckpt").write_bytes(b"cut short by a crash")
    resumed = train_text_align(config(captions, copy), resume="auto")
    assert resumed.global_step == 100  # continued from step 50, not refused nor restarted
    assert (copy / "checkpoints" / "last.ckpt").resolve().name == "step_00000100.ckpt"


def test_resume_refuses_another_text_tower(trained, tmp_path):
    from neco.method.text_encoder import tiny_text_config
    from neco.training.text_align import train_text_align

    _, captions, result = trained
    other = config(captions, tmp_path / "other", max_steps=2, text_config=tiny_text_config(width=32))
    with pytest.raises(ValueError, match="--resume .*text_sha256|--resume .*text_dim"):
        train_text_align(other, resume=str(result.last_checkpoint))


def test_uncached_path_matches_cached_features(trained):
    """Cached pooled features equal the backbone's features at training time (same loss on one batch)."""
    from neco import backbones
    from neco.data.captions import build_caption_folder
    from neco.evaluation.blocks.transforms import to_input
    from neco.method.text_align import cls_patch_attention, head_pooled_embeddings

    _, captions, result = trained
    cached = torch.load(result.out_dir / "image_features.pt", weights_only=True)["pooled"]
    pairs = build_caption_folder(captions)
    model = backbones.create("vit_tiny_scenes", pretrained=True).eval()
    images = torch.stack([to_input(pairs[i][0], SIZE) for i in range(0, 6, 2)])
    with torch.no_grad():
        weights = cls_patch_attention(model.get_last_self_attention(images), 0)
        pooled = head_pooled_embeddings(model.forward_features(images)["x_norm_patchtokens"], weights)
    torch.testing.assert_close(pooled, cached[pairs.image_of[[0, 2, 4]]].float(), atol=2e-3, rtol=1e-2)
    assert TEXT_CONFIG["text_cfg"]["width"] == 64


def test_bad_config_values_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="--batch-size"):
        config(tmp_path, tmp_path / "o", batch_size=1).check()
    with pytest.raises(ValueError, match="--layout"):
        config(tmp_path, tmp_path / "o", layout="tar").check()
    with pytest.raises(
        ValueError, match=r"`loggers` must be one of \['csv', 'tensorboard'\] but holds 'wandb'"
    ):
        config(tmp_path, tmp_path / "o", loggers=["csv", "wandb"])
