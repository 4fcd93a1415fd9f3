"""Checkpoints: atomic writes, periodic saves with a `last.ckpt` link, signal saves, resume checks."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from neco.backbones.checkpoint import check_tensors_finite, key_problems, named_tensors, non_finite_tensors
from neco.backbones.checkpoint import read_training_checkpoint as read_checkpoint
from neco.utils.checksum import CHECKSUM_KEY, tensor_checksum
from neco.utils.io import atomic_torch_save
from neco.utils.logging import get_logger

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "DivergenceError",
    "NonFiniteWeightsError",
    "PeriodicCheckpoint",
    "TrainingAborted",
    "check_fresh_start",
    "check_free_space",
    "check_resume_compatible",
    "check_tensors_finite",
    "estimate_checkpoint_bytes",
    "read_checkpoint",
    "remove_orphan_temporaries",
    "resolve_resume",
    "LAST_NAME",
]

LAST_NAME = "last.ckpt"
STEP_GLOB = "step_*.ckpt"
# Checkpoints written after a divergence's last good step are renamed so: kept, but out of `--resume auto`.
DIVERGED_PREFIX = "diverged_"
# A checkpoint whose largest student weight grew past this factor of the run's start is not "good":
# a diverging run's weights explode (x1e5 in the issue-26 trial) a few steps before its loss turns NaN,
# while a sound run moves them by a few percent (benchmarks/faults.py, row `divergence`).
WEIGHT_GROWTH_LIMIT = 10.0


class DivergenceError(FloatingPointError):
    """The run diverged at `step` (a NaN / infinite loss or weights); `resume_from` names the last good file.

    `PeriodicCheckpoint` fills in `resume_from` and the advice when the run stops, so the message names
    the exact file to resume from.
    """

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step
        self.resume_from: Path | None = None
        self.advice = ""

    def __str__(self) -> str:
        return f"{self.args[0]}{self.advice}"


class NonFiniteWeightsError(DivergenceError):
    """The weights of a step hold NaN or infinity: its checkpoint is not written and the run stops."""


class TrainingAborted(BaseException):
    """A second Ctrl-C / SIGTERM: the run stops at once without saving (the last saved step is kept).

    A BaseException like KeyboardInterrupt, so no `except Exception` on the way swallows it, but not a
    KeyboardInterrupt, which Lightning turns into `sys.exit(1)`.
    """

    def __init__(self, signum: int, last_saved: Path | None) -> None:
        super().__init__(f"aborted by {signal.Signals(signum).name}; last checkpoint: {last_saved or 'none'}")
        self.signum = signum
        self.last_saved = last_saved


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, size limit, permissions); names the file and its size."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)  # one argument: str() is the message alone, without "[Errno N]"
        self.errno = code


def _mb(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def _write_error(path: Path, err: BaseException, needed: int | None) -> CheckpointWriteError:
    """A one-line error naming the checkpoint, the cause (ENOSPC / EFBIG found in the chain) and the space."""
    cause, seen = None, err
    while seen is not None and cause is None:
        if isinstance(seen, OSError) and seen.errno is not None:
            cause = seen
        seen = seen.__cause__ or seen.__context__
    text = f"{err}"
    if cause is not None:
        reason = os.strerror(cause.errno)
    elif "write failed" in text or "No space" in text:
        reason = "the file write failed (full disk or file size limit)"
    else:
        reason = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
    try:
        free = f"{_mb(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = "free space unknown"
    size = f"needs about {_mb(needed)}" if needed else "size unknown"
    code = cause.errno if cause is not None else errno.EIO
    return CheckpointWriteError(code, f"could not write checkpoint {path}: {reason} ({size}; {free})")


def _checkpoint_bytes(checkpoint: dict[str, Any]) -> int:
    # torch.save writes a storage shared by several tensors once
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for _, t in named_tensors(checkpoint)
    }
    return sum(storages.values())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO writing to a temporary file then `os.replace` (never a partial file)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Save `checkpoint` to `path` atomically; a failed write names the file and the space it needs."""
        checkpoint[CHECKSUM_KEY] = tensor_checksum({k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY})
        try:
            atomic_torch_save(checkpoint, path)
        except (OSError, RuntimeError) as err:
            raise _write_error(Path(path), err, _checkpoint_bytes(checkpoint)) from err

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
        shutil.copyfile(target, tmp)
        os.replace(tmp, link)


class PeriodicCheckpoint(L.Callback):
    """Save `step_XXXXXXXX.ckpt` every `every_steps` optimizer steps and at the end; keep the newest few.

    `stop_at_step` ends the run early at that step (schedules keep the full run's length), as if it
    had been interrupted there; `--resume` continues it.

    `last.ckpt` always names the newest complete checkpoint. A NaN loss raises before the step's save,
    so the last good checkpoint stays. The first Ctrl-C or SIGTERM (SLURM preemption, `docker stop`)
    asks the run to stop after the current step and save a resumable checkpoint (`stop_signal` says
    which); a second one raises `TrainingAborted` at once and saves nothing, because a state taken
    mid-step would not resume exactly: the last saved step is kept.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

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
        self.last_saved: Path | None = None
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.interrupted = False
        # Settings changed on resume, carried in every checkpoint.
        self.config_changes: list[dict[str, Any]] = []
        self._previous_handlers: dict[int, Any] = {}

    # -- signals --------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise TrainingAborted(signum, self.last_saved)
        self.stop_requested = True
        self.stop_signal = signum
        name = signal.Signals(signum).name
        get_logger("neco.training").warning(
            f"{name}: stopping after this step and saving a resumable checkpoint "
            "(a second signal aborts at once and keeps the last saved step)"
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the SIGINT / SIGTERM handlers (main thread only; replaces Lightning's SIGTERM exit)."""
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handler(self) -> None:
        if self._previous_handlers and threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    # -- saving ---------------------------------------------------------------------------------

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Carry the history of settings changed on resume (step, {key: [old, new]})."""
        checkpoint["config_changes"] = list(self.config_changes)

    def save(self, trainer: L.Trainer) -> Path:
        """Write the checkpoint of the current step (every rank calls this; rank 0 writes)."""
        step = trainer.global_step
        path = self.directory / f"step_{step:08d}.ckpt"
        # Checked on every rank (DDP replicas hold the same weights), so all stop together.
        bad = non_finite_tensors(trainer.lightning_module.state_dict())
        if bad:
            raise NonFiniteWeightsError(
                f"checkpoint {path} not written: {len(bad)} tensor(s) of the weights after step {step} hold "
                f"NaN or infinite values, e.g. {bad[:3]} (the loss was still finite: the update diverged)",
                step,
            )
        trainer.save_checkpoint(path, weights_only=False)  # full state: resumable
        if trainer.is_global_zero:
            _point_last(self.directory, path)
            self._prune()
        trainer.strategy.barrier("neco-checkpoint")
        self.last_saved_step = step
        self.last_saved = path
        return path

    def _prune(self) -> None:
        steps = sorted(self.directory.glob(STEP_GLOB))
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
        """Save on schedule, or now when a signal asked to stop."""
        stop = self._sync_stop(trainer)
        planned_stop = self.stop_at_step is not None and trainer.global_step >= self.stop_at_step
        if stop or planned_stop or trainer.global_step % self.every_steps == 0:
            self.save(trainer)
        if stop:
            self.interrupted = True
            if self.stop_signal is None:  # another rank received it
                self.stop_signal = signal.SIGTERM
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
        """Any error or abort keeps the last saved checkpoint untouched (nothing is saved mid-step)."""
        self._restore_handler()
        if isinstance(exception, TrainingAborted | KeyboardInterrupt):
            self.interrupted = True
        if isinstance(exception, DivergenceError):
            good = last_good_before(self.directory, exception.step)
            if trainer.is_global_zero:
                set_aside_after(self.directory, good)
            exception.resume_from = good
            exception.advice = (
                f"; the last good checkpoint is {good}: resume from it with --resume {good} and a lower "
                "learning rate (later checkpoints are kept as diverged_step_*.ckpt)"
                if good is not None
                else "; no checkpoint before the divergence: start again with a lower learning rate"
            )


def _step_of(path: Path) -> int:
    return int(path.stem.split("_")[-1])


def _healthy(path: Path) -> bool:
    """Readable, finite, checksum intact, and its weights within WEIGHT_GROWTH_LIMIT of the run's start."""
    try:
        health = read_checkpoint(path).get("health") or {}
    except ValueError:
        return False
    start, now = health.get("start_weight_max"), health.get("weight_max")
    return start is None or now is None or now <= WEIGHT_GROWTH_LIMIT * max(start, 1e-12)


def last_good_before(checkpoint_dir: Path, step: int) -> Path | None:
    """The newest healthy `step_*` checkpoint saved before `step` (a diverged step's own save is not good)."""
    for path in step_checkpoints(checkpoint_dir):
        if _step_of(path) < step and _healthy(path):
            return path
    return None


def set_aside_after(checkpoint_dir: Path, good: Path | None) -> list[Path]:
    """Rename the checkpoints newer than `good` to `diverged_step_*.ckpt` and point `last.ckpt` at `good`.

    Renamed, not deleted: nothing is lost, but `--resume auto` and pruning no longer see them.
    """
    directory = Path(checkpoint_dir)
    newest_good = -1 if good is None else _step_of(good)
    moved = []
    for path in step_checkpoints(directory):
        if _step_of(path) > newest_good:
            target = path.with_name(DIVERGED_PREFIX + path.name)
            os.replace(path, target)
            moved.append(target)
    if good is not None:
        _point_last(directory, good)
    else:
        (directory / LAST_NAME).unlink(missing_ok=True)
    if moved:
        get_logger("neco.training").warning(
            f"divergence: set aside {len(moved)} checkpoint(s) after the last good one: "
            + ", ".join(p.name for p in moved)
        )
    return moved


def step_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The `step_*.ckpt` files of a run, newest first."""
    return sorted(Path(checkpoint_dir).glob(STEP_GLOB), reverse=True)


def check_fresh_start(checkpoint_dir: Path, overwrite: bool) -> None:
    """Refuse a new run where checkpoints exist (a forgotten `--resume`); `overwrite` deletes them instead."""
    existing = step_checkpoints(checkpoint_dir)
    last = Path(checkpoint_dir) / LAST_NAME
    if not existing and not last.is_symlink() and not last.exists():
        return
    if not overwrite:
        names = ", ".join(p.name for p in existing[:3]) or LAST_NAME
        raise FileExistsError(
            f"{checkpoint_dir} already holds checkpoints of a run ({names}); pass --resume auto to continue "
            "it, --overwrite to delete them and start again, or choose another --out"
        )
    for old in [*existing, last]:
        old.unlink(missing_ok=True)
    get_logger("neco.training").warning(
        f"--overwrite: deleted {len(existing)} old checkpoint(s) in {checkpoint_dir}"
    )


def remove_orphan_temporaries(checkpoint_dir: Path) -> list[Path]:
    """Delete the `.*.tmp` files that killed checkpoint writes leave behind; return them."""
    orphans = [p for p in Path(checkpoint_dir).glob(".*.tmp") if p.is_file() or p.is_symlink()]
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    if orphans:
        get_logger("neco.training").info(
            f"removed {len(orphans)} unfinished checkpoint write(s) in {checkpoint_dir}"
        )
    return orphans


def estimate_checkpoint_bytes(module: L.LightningModule) -> int:
    """Size of one full checkpoint: the state dict (the backbone / head keys share it) and AdamW's 2 moments."""
    state = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return state + 2 * trainable


def check_free_space(checkpoint_dir: Path, needed: int) -> None:
    """Refuse to start when the checkpoint folder's disk cannot hold one more checkpoint."""
    free = shutil.disk_usage(checkpoint_dir).free
    if free < needed:
        raise CheckpointWriteError(
            errno.ENOSPC,
            f"checkpoint folder {checkpoint_dir}: one checkpoint needs about {_mb(needed)} but only "
            f"{_mb(free)} are free there; free some space or choose another --out",
        )


def _newest_readable(checkpoint_dir: Path, read: Callable[[Path], Any]) -> Path | None:
    """`last.ckpt`'s target, else the newest `step_*` file that reads back whole; None when there is none."""
    last = checkpoint_dir / LAST_NAME
    candidates: list[Path] = []
    if last.exists():
        candidates.append(last.resolve())
    elif last.is_symlink():
        get_logger("neco.training").warning(f"--resume auto: {last} points to a missing file; ignoring it")
    candidates += [p.resolve() for p in step_checkpoints(checkpoint_dir) if p.resolve() not in candidates]
    problems = []
    for candidate in candidates:
        try:
            read(candidate)
        except ValueError as err:
            problems.append(str(err))
            get_logger("neco.training").warning(f"--resume auto: skipping {candidate}: {err}")
            continue
        if problems:
            get_logger("neco.training").warning(f"--resume auto: using the previous checkpoint {candidate}")
        return candidate
    if problems:
        raise ValueError(
            f"--resume auto: none of the {len(problems)} checkpoint(s) in {checkpoint_dir} is readable: "
            + "; ".join(problems[:3])
        )
    return None


def resolve_resume(
    resume: str | None, checkpoint_dir: Path, read: Callable[[Path], Any] = read_checkpoint
) -> Path | None:
    """`--resume` value -> checkpoint path: None, 'auto' (newest checkpoint that `read` accepts, if any) or a file."""
    if resume is None:
        return None
    if resume == "auto":
        return _newest_readable(Path(checkpoint_dir), read)
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / LAST_NAME if (path / LAST_NAME).exists() else path / "checkpoints" / LAST_NAME
    if not path.exists():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    return path.resolve()


def check_resume_compatible(path: Path, module: L.LightningModule) -> dict[str, Any]:
    """Fail with a clear message when `path` is not a sound neco checkpoint of this architecture.

    Returns the loaded checkpoint (every tensor checked finite).
    """
    try:
        checkpoint = read_checkpoint(path)
    except ValueError as err:
        raise ValueError(f"--resume {err}") from err
    config = module.config
    mine = {"backbone": config.model.backbone, "num_register_tokens": int(module.student.num_register_tokens)}
    theirs = {
        "backbone": checkpoint.get("backbone"),
        "num_register_tokens": checkpoint.get("num_register_tokens"),
    }
    if mine != theirs:
        raise ValueError(f"--resume {path}: checkpoint of {theirs} but the config builds {mine}")
    # The reference queue is sized lazily at the first step (it loads any shape), so skip its buffers.
    problems = key_problems(module.state_dict(), checkpoint["state_dict"], lambda k: k.startswith("loss_fn."))
    if problems:
        raise ValueError(
            f"--resume {path}: checkpoint does not match the configured architecture: {problems}"
        )
    return checkpoint
