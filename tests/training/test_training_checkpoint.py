"""Checkpoint helpers: atomic IO, last.ckpt link, pruning, --resume resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neco.training.checkpoint import AtomicCheckpointIO, PeriodicCheckpoint, _point_last, resolve_resume


def test_atomic_io_roundtrip_and_no_partial_file(tmp_path: Path) -> None:
    """Saved checkpoints load back with weights_only; a failing save leaves the old file intact."""
    io = AtomicCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"x": torch.arange(3), "step": 1}, path)
    assert torch.equal(io.load_checkpoint(path)["x"], torch.arange(3))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
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
    torch.save({}, target)
    _point_last(tmp_path, target)
    assert resolve_resume("auto", tmp_path) == target.resolve()
    with pytest.raises(ValueError, match="every_steps|ckpt_every_steps"):
        PeriodicCheckpoint(tmp_path, every_steps=0)
