"""Round three of "no silent loss, no silent change" (issue 26): non-finite settings and weights,
divergence, concurrent runs, duplicate YAML keys, checksums, changed training images. Tiny preset."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from tiny_runs import FAST, PRESET, write_small_scenes

from neco.training.config import load_config
from neco.training.run import train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_scenes(tmp_path_factory.mktemp("scenes"))


def _config(out_dir: Path, scenes: Path, *extra: str):
    return load_config(PRESET, [*FAST, f"data.root={scenes}", f"run.out_dir={out_dir}", *extra])


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- 1. non-finite settings and weights ----------------------------------------------------------


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan", "1e999"])
@pytest.mark.parametrize("key", ["optim.lr_backbone", "loss.steepness_student", "optim.momentum"])
def test_non_finite_float_settings_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"`{key}` must be a finite number but is .*tiny_cpu.yaml"):
        load_config(PRESET, [f"{key}={value}"])


def test_cli_refuses_nan_before_creating_the_run_folder(tmp_path: Path, capsys) -> None:
    from neco.cli import main

    out = tmp_path / "run"
    assert main(["train", "--config", str(PRESET), "optim.lr_backbone=.nan", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "`optim.lr_backbone` must be a finite number but is nan" in err and "Traceback" not in err
    assert not out.exists()


def test_training_never_writes_a_checkpoint_with_non_finite_weights(tmp_path: Path, scenes: Path) -> None:
    """Weights that turn infinite after an optimizer step (the loss was still finite) are not saved."""
    from neco.training.checkpoint import NonFiniteWeightsError

    config = _config(tmp_path, scenes, "optim.max_steps=3", "run.ckpt_every_steps=1")
    import neco.training.module as module

    original = module.NeCoModule.optimizer_step

    def step(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.global_step >= 1:  # the update of step 2 (global_step counts from 0 before the update)
            with torch.no_grad():
                next(iter(self.teacher.parameters())).fill_(float("inf"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module.NeCoModule, "optimizer_step", step)
        with pytest.raises(NonFiniteWeightsError, match=r"step_00000002.ckpt.*not written.*teacher"):
            train(config)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*.ckpt")) == ["step_00000001.ckpt"]
    assert (checkpoints / "last.ckpt").resolve().name == "step_00000001.ckpt"
    assert not list(checkpoints.glob(".*.tmp"))


# -- 5. duplicate YAML keys ----------------------------------------------------------------------


def test_duplicate_yaml_section_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    preset = tmp_path / "dup.yaml"
    preset.write_text(PRESET.read_text() + "optim:\n  lr_backbone: 2.0e-4\n")
    line = len(PRESET.read_text().splitlines()) + 1
    with pytest.raises(ValueError, match=rf"dup.yaml:{line}: duplicate key `optim`.*first at line \d+"):
        load_config(preset)
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  epochs: 1\n  max_steps: 50\n  epochs: 3\n")
    with pytest.raises(ValueError, match=r"nested.yaml:4: duplicate key `optim.epochs`"):
        load_config(nested)


# -- 2. divergence: the advice names a checkpoint that resumes ------------------------------------


def test_divergence_points_last_at_the_step_before_it_and_that_resume_works(
    tmp_path: Path, scenes: Path
) -> None:
    """lr 1000 from step 2: steps 3.. are saved finite but exploded (max |w| 1e3, 4e4, ...) before the loss
    turns NaN; `last.ckpt` must end on step 2, and the advice (resume from it, normal lr) must work."""
    from neco.training.module import NonFiniteLossError

    base = ["optim.max_steps=8", "run.ckpt_every_steps=1", "run.keep_checkpoints=10"]
    assert train(_config(tmp_path, scenes, *base, "run.stop_at_step=2")).global_step == 2
    huge = ["optim.lr_backbone=1000", "optim.lr_head=1000"]
    with pytest.raises(NonFiniteLossError) as info:
        train(_config(tmp_path, scenes, *base, *huge), resume="auto")
    checkpoints = tmp_path / "checkpoints"
    good = checkpoints / "step_00000002.ckpt"
    assert info.value.resume_from == good
    assert f"the last good checkpoint is {good}: resume from it with --resume {good}" in str(info.value)
    assert (checkpoints / "last.ckpt").resolve() == good
    assert sorted(p.name for p in checkpoints.glob("step_*.ckpt")) == [
        "step_00000001.ckpt",
        "step_00000002.ckpt",
    ]
    diverged = sorted(checkpoints.glob("diverged_step_*.ckpt"))
    assert diverged and all(_load(p)["health"]["weight_max"] > 100 for p in diverged)  # kept, set aside
    resumed = train(_config(tmp_path, scenes, *base), resume="auto")
    assert resumed.global_step == 8 and resumed.last_checkpoint.name == "step_00000008.ckpt"


# -- 3. one run per folder -----------------------------------------------------------------------


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path: Path, scenes: Path, capsys) -> None:
    import json
    import socket
    import subprocess

    from neco.cli import main
    from neco.training.lock import LOCK_NAME

    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # stands for a live `neco train` on this host
    try:
        owner = {"host": socket.gethostname(), "pid": other.pid, "started": "2026-01-01 00:00:00"}
        (out / LOCK_NAME).write_text(json.dumps(owner))
        args = ["train", "--config", str(PRESET), *FAST, f"data.root={scenes}", "optim.max_steps=1"]
        assert main([*args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert f"in use by another neco train (process {other.pid} on {owner['host']}" in err[-1]
        assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
    finally:
        other.kill()
        other.wait()
    # The same lock of a process that is gone is stale: taken over, and released at the end.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(_config(out, scenes, "optim.max_steps=1"))
    assert result.global_step == 1 and not (out / LOCK_NAME).exists()
    # 16. no Lightning warning about an overridden data hook at every run
    assert not [w for w in caught if "on_before_batch_transfer" in str(w.message)]


# -- 6. checksums ----------------------------------------------------------------------------------


def test_finite_garbage_in_a_checkpoint_fails_its_checksum_and_falls_back(
    tmp_path: Path, scenes: Path
) -> None:
    from neco.utils.checksum import CHECKSUM_KEY

    train(_config(tmp_path, scenes, "optim.max_steps=2", "run.ckpt_every_steps=1"))
    newest = tmp_path / "checkpoints" / "step_00000002.ckpt"
    checkpoint = _load(newest)
    assert len(checkpoint[CHECKSUM_KEY]) == 32
    generator = torch.Generator().manual_seed(0)
    pos_embed = checkpoint["student"]["model.pos_embed"]  # timm-built backbone: `model.` + timm names
    pos_embed.copy_(torch.randn(pos_embed.shape, generator=generator))  # finite, plausible, wrong
    torch.save(checkpoint, newest)
    with pytest.raises(ValueError, match=r"step_00000002.ckpt: the tensors do not match the checksum"):
        train(_config(tmp_path, scenes, "optim.max_steps=3"), resume=str(newest))
    result = train(_config(tmp_path, scenes, "optim.max_steps=2", "run.ckpt_every_steps=1"), resume="auto")
    assert result.global_step == 2 and _load(result.last_checkpoint)["step"] == 2  # redone from step 1


# -- 8. changed training images ------------------------------------------------------------------


def test_resume_after_the_training_images_changed_is_refused_unless_allowed(
    tmp_path: Path, scenes: Path
) -> None:
    import shutil

    from neco.training.resume import ConfigChangeError

    data = shutil.copytree(scenes / "images", tmp_path / "images")
    run = tmp_path / "run"
    base = [*FAST, "data.kind=folder", f"data.root={data}", f"run.out_dir={run}", "optim.max_steps=3"]
    train(load_config(PRESET, [*base, "run.ckpt_every_steps=1", "run.stop_at_step=1"]))
    images = sorted(data.rglob("*.jpg"))
    images[0].rename(images[0].with_name("renamed_" + images[0].name))  # one removed, one added
    config = load_config(PRESET, base)
    with pytest.raises(
        ConfigChangeError, match=r"training images changed .*same number of files \(\d+\) but other"
    ):
        train(config, resume="auto")
    images[-1].unlink()
    with pytest.raises(ConfigChangeError, match=r"(\d+) image files then, (\d+) now.*--allow-config-change"):
        train(config, resume="auto")
    result = train(config, resume="auto", allow_config_change=True)
    assert result.global_step == 3 and "data.images" in result.config_changes
    assert "data.images" in (run / "config_changes.yaml").read_text()


# -- 17. a failed start leaves no empty run folder ------------------------------------------------


def test_a_failed_start_removes_the_folder_it_created(tmp_path: Path, scenes: Path) -> None:
    out = tmp_path / "new" / "run"
    bad = load_config(
        PRESET, [*FAST, "data.kind=folder", f"data.root={tmp_path / 'missing'}", f"run.out_dir={out}"]
    )
    with pytest.raises(FileNotFoundError, match="data.root"):
        train(bad)
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError):
        train(
            load_config(
                PRESET, [*FAST, "data.kind=folder", f"data.root={tmp_path / 'x'}", f"run.out_dir={kept}"]
            )
        )
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
