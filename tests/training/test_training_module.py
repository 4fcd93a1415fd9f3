"""NeCoModule and the data pipeline pieces: gradients, EMA, teacher mode, schedules, sampler, crops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_runs import SMALL

from neco.training.config import load_config
from neco.training.datamodule import EpochSampler, TrainImages, build_crop_sampler, collate_with_position
from neco.training.module import NeCoModule

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config():
    """The tiny preset shrunk to 32/16 px crops."""
    return load_config(ROOT / "configs/tiny_cpu.yaml", SMALL)


@pytest.fixture(scope="module")
def batch(config, tmp_path_factory: pytest.TempPathFactory):
    """A fixed batch of 3 multi-crop samples of generated scenes."""
    from neco.data import build_image_source
    from neco.data.synthetic import write_scenes

    root = write_scenes(tmp_path_factory.mktemp("scenes"), num_train=4, num_val=1, size=48, progress=False)
    dataset = TrainImages(
        build_image_source("voc", root, split="train"), build_crop_sampler(config.data), seed=0
    )
    return collate_with_position([dataset[(0, i, i)] for i in range(3)])


def test_gradients_reach_student_only(config, batch) -> None:
    """Every trainable student/head parameter gets a finite gradient; the teacher gets none."""
    torch.manual_seed(0)
    module = NeCoModule(config)
    module.train()
    assert not module.teacher.training and not module.teacher_head.training
    loss, diagnostics, tokens = module.compute_loss(batch)
    loss.backward()
    assert diagnostics["pairs"] > 0 and tokens[0].shape == (3, 16, module.student.embed_dim)
    for name, param in [*module.student.named_parameters(), *module.student_head.named_parameters()]:
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name
    for param in [*module.teacher.parameters(), *module.teacher_head.parameters()]:
        assert not param.requires_grad and param.grad is None


def test_trainable_blocks_freeze_the_rest(batch) -> None:
    """`model.trainable_blocks=3` leaves only the last block of the 4-block tiny ViT (and the final norm,
    which timm's `group_matcher` groups with it) trainable."""
    config = load_config(ROOT / "configs/tiny_cpu.yaml", [*SMALL, "model.trainable_blocks=3"])
    module = NeCoModule(config)
    trainable = {n for n, p in module.student.named_parameters() if p.requires_grad}
    last = {f"model.blocks.3.{n}" for n, _ in module.student.blocks[3].named_parameters()}
    assert last and trainable == last | {"model.norm.weight", "model.norm.bias"}


def test_fixed_batch_training_lowers_the_loss(config, batch) -> None:
    """AdamW steps of the module's optimizer on one batch lower the NeCo loss (teacher fixed)."""
    torch.manual_seed(0)
    module = NeCoModule(config)
    module.train()
    optimizer = module.configure_optimizers()
    assert {g["name"] for g in optimizer.param_groups} == {
        "backbone_decay",
        "backbone_no_decay",
        "head_decay",
        "head_no_decay",
    }
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    losses = []
    for _ in range(5):
        torch.manual_seed(1)  # the same references every step
        loss = module.compute_loss(batch)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05, losses


def test_optimizer_step_then_ema(config) -> None:
    """`optimizer_step` steps the optimizer, then sets teacher = m * teacher + (1 - m) * student."""
    torch.manual_seed(0)
    module = NeCoModule(config)
    module._schedules["momentum:0.9995:1.0"] = lambda step: 0.9  # stand-in schedule (needs no trainer)
    module._schedule_step = 0
    before_teacher = {k: v.clone() for k, v in module.teacher_head.state_dict().items()}
    calls = []

    class _Optimizer:
        def step(self, closure=None):
            calls.append(closure)
            with torch.no_grad():
                for param in module.student_head.parameters():
                    param.add_(1.0)

    module.optimizer_step(0, 0, _Optimizer(), None)
    assert len(calls) == 1
    student = module.student_head.state_dict()
    for key, value in module.teacher_head.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before_teacher[key] + 0.1 * student[key])


def test_sampler_shards_and_resumes() -> None:
    """Ranks get disjoint shards of a seeded order; resume(epoch, position) continues exactly there."""
    ranks = [EpochSampler(10, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(1)
    items = [list(s) for s in ranks]
    assert all(len(i) == len(ranks[0]) == 4 for i in items)  # 10 // (2*2) = 2 steps of 2 per rank
    indices = [index for shard in items for _, _, index in shard]
    assert len(set(indices)) == 8
    assert items[0] == list(ranks[0])  # same epoch, same order
    ranks[0].set_epoch(2)
    assert [i for _, _, i in ranks[0]] != [i for _, _, i in items[0]]
    resumed = EpochSampler(10, batch_size=2, seed=3, rank=0, world_size=2)
    resumed.set_epoch(1)
    resumed.resume(1, 2)
    assert list(resumed) == items[0][2:]
    assert list(resumed) == items[0]  # the skip applies once


def test_crops_are_a_function_of_the_key(config, tmp_path: Path) -> None:
    """The same (epoch, index) gives the same views; another epoch gives other crops."""
    from neco.data import build_image_source
    from neco.data.synthetic import write_scenes

    root = write_scenes(tmp_path / "s", num_train=2, num_val=1, size=48, progress=False)
    dataset = TrainImages(
        build_image_source("voc", root, split="train"), build_crop_sampler(config.data), seed=0
    )
    a, b, c = dataset[(0, 0, 1)], dataset[(0, 5, 1)], dataset[(1, 0, 1)]
    assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))
    assert not torch.equal(a["crops"], c["crops"])
    assert b["position"] == 5


def test_small_images_are_counted_and_reported(
    config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An image smaller than the global crop is upsampled, counted and reported once with its path."""
    import logging

    from PIL import Image

    from neco.data import build_image_source

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (12, 10), (200, 10, 10)).save(folder / "tiny.png")
    dataset = TrainImages(build_image_source("folder", folder), build_crop_sampler(config.data), seed=0)
    logger = logging.getLogger("neco")
    logger.addHandler(caplog.handler)
    try:
        sample = dataset[(0, 0, 0)]
        dataset[(0, 1, 0)]
    finally:
        logger.removeHandler(caplog.handler)
    assert sample["views"][0].shape == (3, 32, 32)
    assert dataset.num_small == 2
    assert (
        sum("tiny.png (12x10) is smaller than the global crop" in r.getMessage() for r in caplog.records) == 1
    )
