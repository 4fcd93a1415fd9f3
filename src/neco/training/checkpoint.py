"""Checkpoints: atomic writes, periodic saves with a `last.ckpt` link, Ctrl-C saves, resume checks."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from neco.utils.io import atomic_torch_save
from neco.utils.logging import get_logger

__all__ = [
    "AtomicCheckpointIO",
    "PeriodicCheckpoint",
    "resolve_resume",
    "check_resume_compatible",
    "LAST_NAME",
]

LAST_NAME = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO writing to a temporary file then `os.replace` (never a partial file)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Save `checkpoint` to `path` atomically."""
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict:
        """Load with `weights_only=True`: neco checkpoints hold only tensors and plain containers."""
        return torch.load(
            path,
            map_location=map_location or "cpu",
            weights_only=True if weights_only is None else weights_only,
        )


def _point_last(directory: Path, target: Path) -> None:
    """Atomically make `last.ckpt` a relative symlink to `target` (a copy where links are impossible)."""
    link = directory / LAST_NAME
    tmp = directory / f".{LAST_NAME}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target.name, tmp)
        os.replace(tmp, link)
    except OSError:
        import shutil

        shutil.copyfile(target, tmp)
        os.replace(tmp, link)


class PeriodicCheckpoint(L.Callback):
    """Save `step_XXXXXXXX.ckpt` every `every_steps` optimizer steps and at the end; keep the newest few.

    `stop_at_step` ends the run early at that step (schedules keep the full run's length), as if it
    had been interrupted there; `--resume` continues it.

    `last.ckpt` always names the newest complete checkpoint. A NaN loss raises before the step's save,
    so the last good checkpoint stays. The first Ctrl-C asks the run to stop after the current step and
    save a resumable checkpoint; a second Ctrl-C interrupts at once (a checkpoint is still attempted).
    """

    def __init__(
        self, directory: str | Path, every_steps: int, keep: int = 3, stop_at_step: int | None = None
    ) -> None:
        super().__init__()
        if every_steps < 1:
            raise ValueError(f"`run.ckpt_every_steps` must be >= 1 but is {every_steps}")
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.keep = keep
        self.stop_at_step = stop_at_step
        self.last_saved_step: int | None = None
        self.stop_requested = False
        self.interrupted = False
        self._previous_handler: Any = None

    # -- Ctrl-C ---------------------------------------------------------------------------------

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        get_logger("neco.training").warning(
            "Ctrl-C: stopping after this step and saving a resumable checkpoint (press again to abort now)"
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the Ctrl-C handler (main thread only)."""
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    # -- saving ---------------------------------------------------------------------------------

    def save(self, trainer: L.Trainer) -> Path:
        """Write the checkpoint of the current step (every rank calls this; rank 0 writes)."""
        step = trainer.global_step
        path = self.directory / f"step_{step:08d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # full state: resumable
        if trainer.is_global_zero:
            _point_last(self.directory, path)
            self._prune()
        trainer.strategy.barrier("neco-checkpoint")
        self.last_saved_step = step
        return path

    def _prune(self) -> None:
        steps = sorted(self.directory.glob("step_*.ckpt"))
        newest = (
            os.readlink(self.directory / LAST_NAME) if (self.directory / LAST_NAME).is_symlink() else None
        )
        for old in steps[: max(0, len(steps) - self.keep)]:
            if old.name != newest:
                old.unlink(missing_ok=True)

    def _sync_stop(self, trainer: L.Trainer) -> bool:
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        return bool(flag.item() > 0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Save on schedule, or now when a Ctrl-C asked to stop."""
        stop = self._sync_stop(trainer)
        planned_stop = self.stop_at_step is not None and trainer.global_step >= self.stop_at_step
        if stop or planned_stop or trainer.global_step % self.every_steps == 0:
            self.save(trainer)
        if stop:
            self.interrupted = True
        if stop or planned_stop:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the final state unless this step was just saved."""
        if self.last_saved_step != trainer.global_step:
            self.save(trainer)
        self._restore_handler()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A second Ctrl-C: try to save; any other error keeps the last good checkpoint untouched."""
        self._restore_handler()
        if isinstance(exception, KeyboardInterrupt) and self.last_saved_step != trainer.global_step:
            self.interrupted = True
            if not trainer.is_global_zero:
                return
            try:
                path = self.directory / f"step_{trainer.global_step:08d}.ckpt"
                # Single-process write: other ranks may be gone after an interrupt.
                pl_module.single_process_save = True
                trainer.strategy.checkpoint_io.save_checkpoint(
                    trainer._checkpoint_connector.dump_checkpoint(), path
                )
                _point_last(self.directory, path)
            except Exception as err:  # noqa: BLE001 - best effort on the way out
                get_logger("neco.training").warning(f"could not save a checkpoint after Ctrl-C: {err}")


def resolve_resume(resume: str | None, checkpoint_dir: Path) -> Path | None:
    """`--resume` value -> checkpoint path: None, 'auto' (last.ckpt if present) or an existing file."""
    if resume is None:
        return None
    if resume == "auto":
        last = checkpoint_dir / LAST_NAME
        return last.resolve() if last.exists() else None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / LAST_NAME if (path / LAST_NAME).exists() else path / "checkpoints" / LAST_NAME
    if not path.exists():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    return path.resolve()


def check_resume_compatible(path: Path, module: L.LightningModule) -> None:
    """Fail with a clear message when `path` is not a neco training checkpoint of this architecture."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any load failure means an unusable file
        raise ValueError(f"--resume {path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if checkpoint.get("format") != "neco-checkpoint" or "state_dict" not in checkpoint:
        raise ValueError(
            f"--resume {path}: not a neco training checkpoint (no `format: neco-checkpoint` / state_dict)"
        )
    config = module.config
    mine = {"backbone": config.model.backbone, "num_register_tokens": int(module.student.num_register_tokens)}
    theirs = {
        "backbone": checkpoint.get("backbone"),
        "num_register_tokens": checkpoint.get("num_register_tokens"),
    }
    if mine != theirs:
        raise ValueError(f"--resume {path}: checkpoint of {theirs} but the config builds {mine}")
    expected = module.state_dict()
    stored = checkpoint["state_dict"]
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    # The reference queue is sized lazily at the first step (it loads any shape), so skip its buffers.
    wrong = [
        k
        for k in expected
        if k in stored and not k.startswith("loss_fn.") and tuple(stored[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}")
        if wrong:
            details.append(
                "shape mismatch "
                + ", ".join(f"{k}: {tuple(stored[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5])
            )
        raise ValueError(
            f"--resume {path}: checkpoint does not match the configured architecture: {'; '.join(details)}"
        )
