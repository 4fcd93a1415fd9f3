"""Checkpoint helpers: atomic IO, last.ckpt link, pruning, --resume resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neco.training.checkpoint import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    PeriodicCheckpoint,
    _point_last,
    resolve_resume,
)


def test_atomic_io_roundtrip_and_no_partial_file(tmp_path: Path) -> None:
    """Saved checkpoints load back with weights_only; a failing save leaves the old file intact."""
    io = AtomicCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"x": torch.arange(3), "step": 1}, path)
    assert torch.equal(io.load_checkpoint(path)["x"], torch.arange(3))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(
        CheckpointWriteError, match=r"could not write checkpoint .*a.ckpt: RuntimeError: boom"
    ):
        io.save_checkpoint({"bad": Unpicklable()}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


def test_last_link_and_pruning(tmp_path: Path) -> None:
    """`last.ckpt` names the newest checkpoint; only the newest `keep` step files survive."""
    callback = PeriodicCheckpoint(tmp_path, every_steps=1, keep=2)
    for step in range(1, 5):
        path = tmp_path / f"step_{step:08d}.ckpt"
        torch.save({"step": step}, path)
        _point_last(tmp_path, path)
        callback._prune()
    assert sorted(p.name for p in tmp_path.glob("step_*.ckpt")) == [
        "step_00000003.ckpt",
        "step_00000004.ckpt",
    ]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["step"] == 4


def test_resolve_resume(tmp_path: Path) -> None:
    """None -> None; auto without a checkpoint -> None; a missing path -> FileNotFoundError naming it."""
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="--resume .*nope.ckpt"):
        resolve_resume(str(tmp_path / "nope.ckpt"), tmp_path)
    target = tmp_path / "step_00000007.ckpt"
    torch.save(_fake_checkpoint(7), target)
    _point_last(tmp_path, target)
    assert resolve_resume("auto", tmp_path) == target.resolve()
    with pytest.raises(ValueError, match="every_steps|ckpt_every_steps"):
        PeriodicCheckpoint(tmp_path, every_steps=0)


def _fake_checkpoint(step: int) -> dict:
    return {"format": "neco-checkpoint", "state_dict": {"w": torch.full((4,), float(step))}, "step": step}


def test_resume_auto_falls_back_to_the_newest_readable_file(tmp_path: Path) -> None:
    """A dangling `last.ckpt`, a truncated or a NaN-filled newest file: the previous one is used."""
    for step in (1, 2, 3):
        torch.save(_fake_checkpoint(step), tmp_path / f"step_{step:08d}.ckpt")
    (tmp_path / "last.ckpt").symlink_to("step_00000009.ckpt")  # dangling
    assert resolve_resume("auto", tmp_path) == (tmp_path / "step_00000003.ckpt").resolve()
    newest = tmp_path / "step_00000003.ckpt"
    newest.write_bytes(newest.read_bytes()[:100])
    assert resolve_resume("auto", tmp_path) == (tmp_path / "step_00000002.ckpt").resolve()
    poisoned = _fake_checkpoint(2)
    poisoned["state_dict"]["w"][1] = float("nan")
    torch.save(poisoned, tmp_path / "step_00000002.ckpt")
    assert resolve_resume("auto", tmp_path) == (tmp_path / "step_00000001.ckpt").resolve()
    (tmp_path / "step_00000001.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of the 3 checkpoint"):
        resolve_resume("auto", tmp_path)


def test_fresh_start_and_orphans(tmp_path: Path) -> None:
    from neco.training.checkpoint import check_fresh_start, remove_orphan_temporaries

    check_fresh_start(tmp_path, overwrite=False)  # empty: fine
    torch.save(_fake_checkpoint(1), tmp_path / "step_00000001.ckpt")
    with pytest.raises(FileExistsError, match="--resume auto"):
        check_fresh_start(tmp_path, overwrite=False)
    check_fresh_start(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".step_00000002.ckpt.abc.tmp").write_bytes(b"half")
    assert [p.name for p in remove_orphan_temporaries(tmp_path)] == [".step_00000002.ckpt.abc.tmp"]
    assert list(tmp_path.iterdir()) == []
