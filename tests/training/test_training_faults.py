"""Faults a demanding user meets: signals, reruns into old folders, changed settings on resume, corrupt
or unwritable checkpoints, settings that cannot run. Tiny preset, few steps; signals in subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import FAST, PRESET, write_small_scenes

from neco.training.checkpoint import CheckpointWriteError
from neco.training.config import load_config
from neco.training.resume import ConfigChangeError
from neco.training.run import train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_scenes(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory: pytest.TempPathFactory, scenes: Path) -> Path:
    """A finished 2-step run with checkpoints at steps 1 and 2 (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("two")
    train(_config(out, scenes, "optim.max_steps=2", "run.ckpt_every_steps=1"))
    return out


def _config(out_dir: Path, scenes: Path, *extra: str):
    return load_config(PRESET, [*FAST, f"data.root={scenes}", f"run.out_dir={out_dir}", *extra])


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


# -- 1. changed settings on resume ---------------------------------------------------------------


def test_resume_applies_a_changed_learning_rate_and_records_it(tmp_path: Path, scenes: Path) -> None:
    from neco.method.schedules import cosine_schedule

    base = ["optim.max_steps=4", "run.ckpt_every_steps=2"]
    assert train(_config(tmp_path, scenes, *base, "run.stop_at_step=2")).global_step == 2
    resumed = train(_config(tmp_path, scenes, *base, "optim.lr_backbone=0.002"), resume="auto")
    assert resumed.global_step == 4
    checkpoint = _load(resumed.last_checkpoint)
    backbone = [
        g for g in checkpoint["optimizer_states"][0]["param_groups"] if g["name"].startswith("backbone")
    ]
    assert backbone and all(g["base_lr"] == 0.002 for g in backbone)
    assert all(g["lr"] == pytest.approx(cosine_schedule(0.002, 0.0, 4)(3)) for g in backbone)
    assert resumed.config_changes["optim.lr_backbone"] == (1e-4, 0.002)
    (entry,) = yaml.safe_load((tmp_path / "config_changes.yaml").read_text())
    assert entry["step"] == 2 and entry["changes"]["optim.lr_backbone"] == {"from": 1e-4, "to": 0.002}
    assert checkpoint["config_changes"][0]["changes"]["optim.lr_backbone"] == [1e-4, 0.002]
    assert load_config(tmp_path / "config.yaml").optim.lr_backbone == 0.002

    more = [*base[1:], "optim.max_steps=5", "optim.lr_backbone=0.002", "loss.steepness_student=50"]
    with pytest.raises(
        ConfigChangeError, match=r"`loss.steepness_student`: 100.0 -> 50.0.*--allow-config-change"
    ):
        train(_config(tmp_path, scenes, *more), resume="auto")
    assert _load(tmp_path / "checkpoints" / "last.ckpt")["step"] == 4  # nothing was touched
    allowed = train(_config(tmp_path, scenes, *more), resume="auto", allow_config_change=True)
    assert allowed.global_step == 5 and "loss.steepness_student" in allowed.config_changes
    assert len(yaml.safe_load((tmp_path / "config_changes.yaml").read_text())) == 2


# -- 2. reruns into an existing folder -----------------------------------------------------------


def test_new_run_refuses_a_folder_with_checkpoints(tmp_path: Path, scenes: Path, two_steps: Path) -> None:
    out = _copy_run(two_steps, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").glob("step_*.ckpt")}
    with pytest.raises(FileExistsError, match=r"already holds checkpoints.*--resume auto.*--overwrite"):
        train(_config(out, scenes, "optim.max_steps=1"))
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").glob("step_*.ckpt")} == before
    train(_config(out, scenes, "optim.max_steps=1"), overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt", "step_00000001.ckpt"]


def test_resume_auto_skips_a_dangling_link_and_a_corrupt_newest_file(
    tmp_path: Path, scenes: Path, two_steps: Path
) -> None:
    out = _copy_run(two_steps, tmp_path / "run")
    ckpts = out / "checkpoints"
    (ckpts / "last.ckpt").unlink()
    (ckpts / "last.ckpt").symlink_to("step_00000009.ckpt")  # dangling
    newest = ckpts / "step_00000002.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    result = train(_config(out, scenes, "optim.max_steps=3", "run.ckpt_every_steps=1"), resume="auto")
    assert result.global_step == 3 and _load(ckpts / "step_00000003.ckpt")["step"] == 3
    assert _logged_steps(out) == 2  # continued from step 1 (a new run would log 3 steps)


def _logged_steps(out: Path) -> int:
    """Training steps logged by the newest CSV log of a run."""
    import csv

    newest = max((out / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    with open(newest) as handle:
        return sum(1 for row in csv.DictReader(handle) if row.get("train/loss"))


# -- 8. garbage inside a checkpoint --------------------------------------------------------------


def test_garbage_inside_a_checkpoint_is_refused(tmp_path: Path, scenes: Path, two_steps: Path) -> None:
    out = _copy_run(two_steps, tmp_path / "run")
    newest = out / "checkpoints" / "step_00000002.ckpt"
    data = bytearray(newest.read_bytes())
    # Inside the largest tensor record (not a zip header): torch.save stores records uncompressed.
    import zipfile

    record = max(zipfile.ZipFile(newest).infolist(), key=lambda info: info.file_size)
    header = (
        30
        + len(record.filename.encode())
        + int.from_bytes(data[record.header_offset + 28 : record.header_offset + 30], "little")
    )
    middle = record.header_offset + header + record.file_size // 2 // 4 * 4
    size = min(4096, record.file_size // 4)
    data[middle : middle + size] = b"\xff" * size  # 0xFFFFFFFF is a float32 NaN
    newest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"step_00000002.ckpt: .*NaN or infinite"):
        train(_config(out, scenes, "optim.max_steps=3"), resume=str(newest))
    # --resume auto says so and takes the previous checkpoint.
    result = train(_config(out, scenes, "optim.max_steps=2", "run.ckpt_every_steps=1"), resume="auto")
    assert result.global_step == 2 and _load(result.last_checkpoint)["step"] == 2


# -- 9. disk full ----------------------------------------------------------------------------------


def test_checkpoint_write_failure_names_file_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neco.training.checkpoint import AtomicCheckpointIO

    def failing(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/3: file write failed")  # fmt: skip

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(
        CheckpointWriteError, match=r"could not write checkpoint .*a.ckpt: .*needs about 4.0 MB"
    ):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1024, 1024)}, tmp_path / "a.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_reported_in_one_line(tmp_path: Path, scenes: Path) -> None:
    """A file size limit (like a full disk) at the first checkpoint: one message naming the file, exit 1."""
    hook = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
    )
    proc = _cli(tmp_path, scenes, tmp_path / "run", "--max-steps", "1", hook=hook)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "could not write checkpoint" in proc.stderr and "step_00000001.ckpt" in proc.stderr
    assert "File too large" in proc.stderr and "needs about" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


def test_start_checks_free_space_and_removes_orphaned_writes(
    tmp_path: Path, scenes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collections

    from neco.training import checkpoint as ckpt

    orphan = tmp_path / "checkpoints" / ".step_00000001.ckpt.x1y2.tmp"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half a checkpoint")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**5, 10**5))
    with pytest.raises(CheckpointWriteError, match=r"one checkpoint needs about [\d.]+ MB but only 0.1 MB"):
        train(_config(tmp_path, scenes, "optim.max_steps=1"))
    assert not orphan.exists()
    assert not list((tmp_path / "checkpoints").iterdir())


# -- 10. checked before the first step ---------------------------------------------------------


def test_settings_that_cannot_run_fail_before_the_first_step(tmp_path: Path, scenes: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "checkpoints").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="checkpoints"):
        train(_config(tmp_path / "a", scenes, "optim.max_steps=1"))
    with pytest.raises(ValueError, match=r"`data.crops.global_size` must be at least one patch \(8 px.*is 7"):
        train(_config(tmp_path / "b", scenes, "optim.max_steps=1", "data.crops.global_size=7"))
    with pytest.raises(MemoryError, match=r"`loss.roi_size`=32 .* needs about \d+\.\d GiB .*roi_size<=\d+"):
        train(_config(tmp_path / "c", scenes, "optim.max_steps=1", "loss.roi_size=32"))
    for run in ("b", "c"):
        assert not (tmp_path / run).exists()  # a failed start removes the folder it created


def test_sort_memory_estimate_narrows_to_what_fits() -> None:
    from neco.training.preflight import check_sort_memory, sort_memory_bytes

    config = load_config(PRESET)  # batch 8, 2 global + 4 local crops
    assert sort_memory_bytes(config) == 5 * (2 * 5 * 8 * 25) * 25 * 25 * 4
    check_sort_memory(config, "cpu", available=10**9)
    with pytest.raises(MemoryError, match=r"use loss.roi_size<=4 "):
        check_sort_memory(config, "cpu", available=sort_memory_bytes(config) - 1)


# -- 3. signals ------------------------------------------------------------------------------------

SIGNAL_HOOK = """
import os, signal
from neco.training import module as m
_orig = m.NeCoModule.training_step
def step(self, batch, batch_idx):
    if self.global_step == {at}:
        for _ in range({times}):
            os.kill(os.getpid(), signal.{name})
    return _orig(self, batch, batch_idx)
m.NeCoModule.training_step = step
"""


def _cli(tmp_path: Path, scenes: Path, out: Path, *extra: str, hook: str = "") -> subprocess.CompletedProcess:
    """`neco train` on the fast tiny settings in a subprocess, after running `hook`."""
    script = tmp_path / f"cli_{len(list(tmp_path.glob('cli_*.py')))}.py"
    script.write_text(hook + "\nimport sys\nfrom neco.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]  # positional: before the flags
    flags = [e for e in extra if e not in overrides]
    args = [sys.executable, str(script), "train", "--config", str(PRESET), *FAST, f"data.root={scenes}"]
    args += [f"run.out_dir={out}", *overrides, "--no-progress", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = _load(path)
    return {
        f"{k}.{n}": t
        for k in ("student", "teacher", "student_head", "teacher_head")
        for n, t in checkpoint[k].items()
    }


def test_sigterm_saves_after_the_step_and_resumes_exactly(tmp_path: Path, scenes: Path) -> None:
    steps = ["--max-steps", "3", "run.ckpt_every_steps=5"]
    full = _cli(tmp_path, scenes, tmp_path / "full", *steps)
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = _cli(
        tmp_path, scenes, tmp_path / "run", *steps, hook=SIGNAL_HOOK.format(at=1, times=1, name="SIGTERM")
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at step 2; resume with --resume" in stopped.stderr
    assert _load(tmp_path / "run" / "checkpoints" / "last.ckpt")["step"] == 2
    resumed = _cli(tmp_path, scenes, tmp_path / "run", *steps, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _weights(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = _weights(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_second_ctrl_c_exits_130_without_a_mid_step_checkpoint(tmp_path: Path, scenes: Path) -> None:
    hook = SIGNAL_HOOK.format(at=2, times=2, name="SIGINT")
    proc = _cli(tmp_path, scenes, tmp_path / "run", "--max-steps", "4", "run.ckpt_every_steps=1", hook=hook)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "aborted by SIGINT" in proc.stderr and "step_00000002.ckpt" in proc.stderr
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_00000001.ckpt", "step_00000002.ckpt"]
    assert _load(tmp_path / "run" / "checkpoints" / "last.ckpt")["step"] == 2


# -- 4. several devices ----------------------------------------------------------------------------


def test_multi_device_runs_use_neco_ddp_without_buffer_broadcast() -> None:
    from lightning.pytorch.strategies import DDPStrategy

    from neco.training.run import _strategy

    for extra in (
        ["run.devices=2"],
        ["run.devices=1", "run.num_nodes=2"],
        ["run.devices=2", "run.strategy=ddp"],
    ):
        strategy = _strategy(load_config(PRESET, extra).run, "cpu")
        assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["broadcast_buffers"] is False
    assert _strategy(load_config(PRESET).run, "cpu") == "auto"  # one device: plain
    with pytest.raises(ValueError, match="`run.strategy` must be 'auto' or 'ddp' for a multi-device run"):
        _strategy(load_config(PRESET, ["run.devices=2", "run.strategy=fsdp"]).run, "cpu")


@pytest.mark.slow
def test_two_ranks_keep_their_own_queues(tmp_path: Path, scenes: Path) -> None:
    """`--devices 2` without `--strategy`: gloo DDP, no buffer broadcast, each rank's queue its own."""
    hook = (
        "import os, torch\n"
        "from neco.training import module as m\n"
        "_orig = m.NeCoModule.training_step\n"
        "def step(self, batch, batch_idx):\n"
        "    if self.global_step == 2:\n"
        "        kw = self.trainer.strategy._ddp_kwargs\n"
        "        queue = self.loss_fn.queue.queue.detach().clone()\n"
        "        torch.save({'broadcast': kw.get('broadcast_buffers', True), 'queue': queue},\n"
        "                   os.path.join(os.environ['NECO_TEST_OUT'], f'rank{self.global_rank}.pt'))\n"
        "    return _orig(self, batch, batch_idx)\n"
        "m.NeCoModule.training_step = step\n"
    )
    os.environ["NECO_TEST_OUT"] = str(tmp_path)
    try:
        proc = _cli(tmp_path, scenes, tmp_path / "run", "--devices", "2", "--accelerator", "cpu",
                    "--max-steps", "3", hook=hook)  # fmt: skip
    finally:
        del os.environ["NECO_TEST_OUT"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _load(tmp_path / "rank0.pt"), _load(tmp_path / "rank1.pt")
    assert r0["broadcast"] is False and r1["broadcast"] is False
    assert r0["queue"].abs().sum() > 0 and not torch.equal(r0["queue"], r1["queue"])
