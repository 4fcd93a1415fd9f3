"""End-to-end training runs on the tiny preset (CPU, tiny crops): resume, logging, bad input, DDP."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_runs import FAST, PRESET, write_small_scenes

from neco.training.config import load_config
from neco.training.run import train

FAST = [*FAST, "run.diagnostics_every=2"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated scenes shared by the runs of this module."""
    return write_small_scenes(tmp_path_factory.mktemp("scenes"))


def _config(out_dir: Path, scenes: Path, *extra: str):
    return load_config(PRESET, [*FAST, f"data.root={scenes}", f"run.out_dir={out_dir}", *extra])


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


_EXTRA_CALLBACK_STEPS: list[int] = []


class _RecordSteps(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        _EXTRA_CALLBACK_STEPS.append(int(trainer.global_step))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, scenes: Path):
    """One uninterrupted 4-step run (checkpoints at steps 2 and 4) shared by several tests."""
    out = tmp_path_factory.mktemp("full")
    return train(
        _config(out, scenes, "optim.max_steps=4", "run.ckpt_every_steps=2"), callbacks=[_RecordSteps()]
    )


def test_extra_callbacks_run_at_every_step(full_run) -> None:
    assert full_run.global_step == 4
    assert _EXTRA_CALLBACK_STEPS == [1, 2, 3, 4]


def test_ctrl_c_then_resume_is_exact(
    tmp_path: Path, scenes: Path, full_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during step 2 saves a resumable checkpoint; 2 steps + resume + 2 == 4 steps in one go
    (student, teacher, heads, queue, optimizer state, step)."""
    import signal

    from neco.training import module as module_mod

    original = module_mod.NeCoModule.training_step

    def interrupting(self, batch, batch_idx):
        if self.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_mod.NeCoModule, "training_step", interrupting)
    part = train(_config(tmp_path, scenes, "optim.max_steps=4", "run.ckpt_every_steps=3"))
    assert part.interrupted and part.global_step == 2
    assert _load(tmp_path / "checkpoints" / "last.ckpt")["step"] == 2
    monkeypatch.setattr(module_mod.NeCoModule, "training_step", original)
    resumed = train(_config(tmp_path, scenes, "optim.max_steps=4", "run.ckpt_every_steps=3"), resume="auto")
    assert not resumed.interrupted and resumed.global_step == 4

    a, b = _load(full_run.last_checkpoint), _load(resumed.last_checkpoint)
    assert a["step"] == b["step"] == 4
    for key in ("student", "teacher", "student_head", "teacher_head", "queue"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    # The run really moved: the teacher after 4 steps differs from the one after 2.
    mid = _load(full_run.checkpoint_dir / "step_00000002.ckpt")
    assert any(not torch.equal(mid["teacher"][k], a["teacher"][k]) for k in a["teacher"])
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_a[index][name], state_b[index][name])


def test_second_ctrl_c_aborts_without_a_mid_step_save(
    tmp_path: Path, scenes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C aborts the step at once and saves nothing (a mid-step state would not resume
    exactly); the last saved step stays `last.ckpt`."""
    import signal

    from neco.training import module as module_mod
    from neco.training.checkpoint import TrainingAborted

    original = module_mod.NeCoModule.training_step

    def interrupting(self, batch, batch_idx):
        if self.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_mod.NeCoModule, "training_step", interrupting)
    # A shell starts background jobs with SIGINT ignored: give the run the interactive default, and
    # check that it puts back exactly what it found.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(TrainingAborted) as aborted:
            train(_config(tmp_path, scenes, "optim.max_steps=4", "run.ckpt_every_steps=1"))
        assert aborted.value.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # our handler was removed
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.ckpt")) == ["step_00000001.ckpt"]
    assert _load(tmp_path / "checkpoints" / "last.ckpt")["step"] == 1


def test_stop_at_step_keeps_schedules(tmp_path: Path, scenes: Path, full_run) -> None:
    """`run.stop_at_step` ends early with the full run's schedules: step 2 equals the full run's step 2."""
    part = train(
        _config(tmp_path, scenes, "optim.max_steps=4", "run.ckpt_every_steps=3", "run.stop_at_step=2")
    )
    assert part.global_step == 2 and not part.interrupted
    a = _load(full_run.checkpoint_dir / "step_00000002.ckpt")
    b = _load(part.last_checkpoint)
    assert all(torch.equal(v, b["student"][k]) for k, v in a["student"].items())


def test_checkpoint_contract_and_logs(full_run) -> None:
    """The checkpoint carries the neco keys (weights_only load); config and CSV logs are written."""
    checkpoint = _load(full_run.last_checkpoint)
    assert checkpoint["format"] == "neco-checkpoint" and checkpoint["version"] == 1
    assert checkpoint["backbone"] == "vit_tiny" and checkpoint["num_register_tokens"] == 0
    assert (
        "model.blocks.0.attn.qkv.weight" in checkpoint["teacher"]
        and "model.norm.weight" in checkpoint["student"]
    )
    assert set(checkpoint["data_position"]) == {"epoch", "position"}
    resolved = load_config(full_run.out_dir / "config.yaml")
    assert resolved.data.batch_size == 2 and resolved.run.out_dir == str(full_run.out_dir)
    from neco.backbones import create

    teacher = create("vit_tiny", weights=full_run.last_checkpoint)  # the weights loader reads the teacher
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in checkpoint["teacher"].items())

    (metrics,) = (full_run.out_dir / "csv").glob("version_*/metrics.csv")
    with open(metrics) as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    lrs = [float(r["train/lr_backbone"]) for r in rows if r.get("train/lr_backbone")]
    assert lrs[0] > lrs[-1] > 0  # cosine decay towards 0
    momenta = [float(r["train/momentum"]) for r in rows if r.get("train/momentum")]
    assert momenta[0] == pytest.approx(0.9995) and momenta[-1] > momenta[0]
    assert sum(1 for r in rows if r.get("train/effective_rank")) == 2  # steps 0 and 2
    assert any(r.get("train/images_per_s") for r in rows) and any(r.get("train/loss_avg") for r in rows)
    assert not (full_run.out_dir / "tensorboard").exists()  # CSV only was asked for


def test_checkpoint_stores_each_weight_once(full_run) -> None:
    """neco's student / teacher / head copies share storage with Lightning's state dict in the file."""
    checkpoint = _load(full_run.last_checkpoint)

    def storages(tree: dict) -> dict[int, int]:
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tree.values()}

    lightning = storages(checkpoint["state_dict"])
    for key in ("student", "teacher", "student_head", "teacher_head", "queue"):
        assert set(storages(checkpoint[key])) <= set(lightning), f"{key} is stored a second time"
    # The file is the state dict plus AdamW's moments, not a third of it again.
    moments = [t for state in checkpoint["optimizer_states"][0]["state"].values() for t in state.values()]
    unique = sum(lightning.values()) + sum(t.untyped_storage().nbytes() for t in moments)
    assert full_run.last_checkpoint.stat().st_size < 1.1 * unique + 200_000


def test_non_finite_loss_stops_and_keeps_checkpoint(
    tmp_path: Path, scenes: Path, full_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN loss raises a diagnostic error; last.ckpt names the step before the one whose weights gave it."""
    import shutil

    from neco.training import module as module_mod

    shutil.copytree(full_run.checkpoint_dir, tmp_path / "checkpoints", symlinks=True)
    original = module_mod.NeCoModule.compute_loss

    def poisoned(self, batch):
        loss, diagnostics, tokens = original(self, batch)
        return loss * float("nan"), diagnostics, tokens

    monkeypatch.setattr(module_mod.NeCoModule, "compute_loss", poisoned)
    with pytest.raises(
        module_mod.NonFiniteLossError,
        match="non-finite loss at step 4.*last good checkpoint is .*step_00000002.ckpt",
    ):
        train(_config(tmp_path, scenes, "optim.max_steps=6", "run.ckpt_every_steps=1"), resume="auto")
    # step 4's weights produced the NaN: set aside (kept), not resumed from
    assert _load(tmp_path / "checkpoints" / "last.ckpt")["step"] == 2
    assert (tmp_path / "checkpoints" / "diverged_step_00000004.ckpt").is_file()


def test_resume_wrong_architecture(tmp_path: Path, scenes: Path, full_run) -> None:
    """Resuming with a config that builds another architecture names the checkpoint and the mismatch."""
    other = _config(tmp_path / "other", scenes, "optim.max_steps=2", "model.backbone=vit_tiny_reg")
    with pytest.raises(ValueError, match=r"--resume .*step_00000004.ckpt: checkpoint of .*vit_tiny"):
        train(other, resume=str(full_run.last_checkpoint))
    head = _config(tmp_path / "other2", scenes, "optim.max_steps=2", "model.head_out_dim=16")
    with pytest.raises(ValueError, match="shape mismatch"):
        train(head, resume=str(full_run.last_checkpoint))


def _folder_with_two_bad_images(tmp_path: Path, scenes: Path) -> tuple[Path, list[str]]:
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(scenes / "images", folder)
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated JPEG
    (folder / "garbage.png").write_bytes(b"not an image at all")
    return folder, sorted([str(victim), str(folder / "garbage.png")])


def test_corrupt_image_does_not_stop_training(tmp_path: Path, scenes: Path) -> None:
    """A truncated image in the folder is skipped and counted; the run completes."""
    folder, bad = _folder_with_two_bad_images(tmp_path, scenes)
    config = _config(
        tmp_path / "run",
        scenes,
        "data.kind=folder",
        f"data.root={folder}",
        "optim.max_steps=5",  # one epoch of the 10 files: every file is tried
        "data.max_bad_images=0.5",
    )
    with pytest.warns(RuntimeWarning, match="skipping unreadable image"):
        result = train(config)
    assert result.global_step == 5
    assert result.skipped_images == bad


def test_closing_line_counts_images_skipped_in_loader_workers(tmp_path: Path, scenes: Path, capsys) -> None:
    """With DataLoader workers the skips happen in other processes; the run still counts each file once."""
    from neco.cli import main

    folder, bad = _folder_with_two_bad_images(tmp_path, scenes)
    argv = ["train", "--config", str(PRESET), "--out", str(tmp_path / "run"), "--max-steps", "5"]
    overrides = [*FAST, "data.kind=folder", f"data.root={folder}", "data.max_bad_images=0.5"]
    assert main([*argv, *overrides, "data.num_workers=2"]) == 0
    closing = capsys.readouterr().err.strip().splitlines()[-1]
    assert "done, 5 steps" in closing and "2 unreadable images skipped" in closing, closing


def test_too_many_bad_images_fail(tmp_path: Path, scenes: Path) -> None:
    """When more images than allowed are unreadable the run fails naming the limit and a file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        (folder / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff broken")
    config = _config(tmp_path / "run", scenes, "data.kind=folder", f"data.root={folder}", "optim.max_steps=2")
    from neco.data.images import UnreadableImagesError

    with pytest.raises(
        UnreadableImagesError, match=r"6 of 6 image files tried could not be read.*bad\d\.jpg"
    ):
        train(config)


@pytest.mark.slow
def test_ddp_two_processes_keep_teacher_identical(tmp_path: Path, scenes: Path) -> None:
    """`neco train --devices 2 --strategy ddp` on CPU (gloo): both ranks end with the same teacher."""
    script = tmp_path / "hook.py"
    # Each rank writes its teacher checksum when training ends (the checkpoint is written by rank 0 only).
    script.write_text(
        "import os, torch, lightning as L\n"
        "from neco.training import module as m\n"
        "orig = m.NeCoModule.on_train_end if hasattr(m.NeCoModule, 'on_train_end') else None\n"
        "def on_train_end(self):\n"
        "    vec = torch.cat([p.detach().flatten() for p in self.teacher.parameters()])\n"
        "    out = os.environ['NECO_TEST_OUT']\n"
        "    torch.save(vec, os.path.join(out, f'teacher_rank{self.global_rank}.pt'))\n"
        "m.NeCoModule.on_train_end = on_train_end\n"
        "import sys\n"
        "from neco.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = dict(os.environ, NECO_TEST_OUT=str(tmp_path), OMP_NUM_THREADS="1")
    args = [
        sys.executable,
        str(script),
        "train",
        "--config",
        str(PRESET),
        *FAST,
        f"data.root={scenes}",
        f"run.out_dir={tmp_path / 'run'}",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
        "--max-steps",
        "3",
        "--no-progress",
    ]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    t0 = torch.load(tmp_path / "teacher_rank0.pt")
    t1 = torch.load(tmp_path / "teacher_rank1.pt")
    assert torch.equal(t0, t1)
    checkpoint = _load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["step"] == 3 and len(checkpoint["rng"]["per_rank"]) == 2
    first = torch.cat(
        [v.flatten() for v in _load(tmp_path / "run" / "checkpoints" / "last.ckpt")["teacher"].values()]
    )
    assert first.numel() == t0.numel()


def test_periodic_kmeans_validation(tmp_path: Path, scenes: Path) -> None:
    """`run.validation` logs a k-means mIoU (percent) on a VOC-format split every N steps."""
    config = _config(
        tmp_path,
        scenes,
        "optim.max_steps=2",
        "run.validation.enabled=true",
        f"run.validation.root={scenes}",
        "run.validation.every_steps=2",
        "run.validation.max_images=4",
        "run.validation.input_size=48",
        "run.validation.num_clusters=4",
    )
    train(config)
    (metrics,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    with open(metrics) as handle:
        values = [float(r["val/kmeans_miou"]) for r in csv.DictReader(handle) if r.get("val/kmeans_miou")]
    assert len(values) == 1 and 0.0 < values[0] <= 100.0


def test_control_run_zeroes_only_the_loss_gradient(tmp_path: Path, scenes: Path, full_run) -> None:
    """`loss.weight=0`: the NeCo loss is logged but moves nothing; weight decay still shrinks the decayed weights."""
    result = train(
        _config(
            tmp_path,
            scenes,
            "optim.max_steps=4",
            "run.ckpt_every_steps=2",
            "loss.weight=0",
            "optim.weight_decay=0.5",
            "optim.weight_decay_end=0.5",
            "optim.lr_backbone=1e-2",
        )
    )
    a = _load(result.checkpoint_dir / "step_00000002.ckpt")["student"]
    b = _load(result.last_checkpoint)["student"]
    factors = {}
    for key, value in a.items():
        ratio = b[key][value != 0] / value[value != 0]
        # Every tensor is scaled by one factor: no gradient step, only the decoupled weight decay.
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.mean())), rtol=0, atol=1e-5)
        factors[key] = float(ratio.mean())
    assert factors["model.blocks.0.norm1.weight"] == pytest.approx(1.0, abs=1e-6)  # no-decay group: untouched
    assert factors["model.blocks.0.attn.qkv.weight"] < 0.999  # decayed group: shrunk
    # The NeCo run with the same start moves the no-decay weights too.
    full_a = _load(full_run.checkpoint_dir / "step_00000002.ckpt")["student"]
    full_b = _load(full_run.last_checkpoint)["student"]
    assert not torch.equal(full_a["model.blocks.0.norm1.weight"], full_b["model.blocks.0.norm1.weight"])
    (metrics,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    with open(metrics) as handle:
        losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(x) and x > 0 for x in losses)  # still the NeCo loss
    with pytest.raises(ValueError, match="loss.weight"):
        _config(tmp_path, scenes, "loss.weight=-1")
