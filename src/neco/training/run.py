"""Assemble and run a NeCo training run: output folder, Trainer (devices, precision, loggers), fit."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neco.training.config import TrainConfig, save_config
from neco.utils.logging import get_logger

__all__ = [
    "TrainResult",
    "train",
    "resolve_precision",
    "build_trainer",
    "lightning_trainer",
    "resolve_accelerator",
    "device_count",
    "is_launching_rank",
    "trained_metrics",
    "LIGHTNING_PRECISION",
]


@dataclass
class TrainResult:
    """What a run produced: where, how far, and whether it was interrupted."""

    out_dir: Path
    checkpoint_dir: Path
    last_checkpoint: Path | None
    global_step: int
    interrupted: bool
    metrics: dict[str, float]
    stop_signal: int | None = None
    config_changes: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    # Unreadable images skipped by this process in this run (its own shard under DDP), sorted paths.
    skipped_images: list[str] = dataclasses.field(default_factory=list)


# `run` below is `TrainConfig.run` or a `TextAlignConfig`: both name these settings alike.
def resolve_accelerator(run: Any) -> str:
    """`cpu` or `gpu`: `auto` is the GPU when CUDA has one."""
    choice = run.accelerator
    if choice == "gpu" and not torch.cuda.is_available():
        raise ValueError("`run.accelerator` is 'gpu' but no CUDA device is available; use 'cpu' or 'auto'")
    if choice == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return choice


# neco's precision names -> Lightning's (fp16 only where a setting offers it: `neco eval finetune`)
LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def resolve_precision(run: Any, accelerator: str) -> str:
    """Lightning precision string: `auto` is bf16 autocast on CUDA and fp32 on CPU."""
    precision = run.precision
    if precision == "auto":
        precision = "bf16" if accelerator == "gpu" else "fp32"
    return LIGHTNING_PRECISION[precision]


def _loggers(run: Any, out_dir: Path) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = []
    for name in run.loggers:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=str(out_dir), name="tensorboard"))
        elif name == "csv":
            loggers.append(CSVLogger(save_dir=str(out_dir), name="csv"))
        elif name == "wandb":
            try:
                import wandb  # noqa: F401
                from lightning.pytorch.loggers import WandbLogger
            except ImportError as err:
                raise ValueError(
                    "`run.loggers` includes 'wandb' but wandb is not installed (pip install 'neco[wandb]')"
                ) from err
            loggers.append(WandbLogger(save_dir=str(out_dir), project="neco"))
    return loggers


def device_count(run: Any, accelerator: str) -> int:
    """Processes the run spans: devices per node (auto: every visible GPU, one CPU process) times nodes."""
    devices = run.devices
    if devices == "auto":
        devices = max(1, torch.cuda.device_count()) if accelerator == "gpu" else 1
    return int(devices) * run.num_nodes


def _strategy(run: Any, accelerator: str) -> Any:
    strategy = run.strategy
    multi = device_count(run, accelerator) > 1
    if multi and strategy not in ("auto", "ddp"):
        raise ValueError(
            f"`run.strategy` must be 'auto' or 'ddp' for a multi-device run (neco's DDP keeps each rank's "
            f"reference queue) but is {strategy!r}"
        )
    if strategy == "ddp" or multi:
        from lightning.pytorch.strategies import DDPStrategy

        # Per-rank reference queues are the method's design: do not overwrite them with rank 0's.
        return DDPStrategy(
            broadcast_buffers=False, process_group_backend="nccl" if accelerator == "gpu" else "gloo"
        )
    return strategy


class _DropAdvert(logging.Filter):
    """Lightning 2.6 prints an advert for its cloud logger at every Trainer start; it is not run information."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_ADVERT_FILTER = _DropAdvert()


def lightning_trainer(out_dir: Path, callbacks: list[Any], **options: Any) -> Any:
    """A Trainer with what every neco run shares; `options` are the run's own Trainer arguments.

    Checkpoints are written by `PeriodicCheckpoint` through `AtomicCheckpointIO`, the samplers are
    neco's (they resume mid-epoch), and there is no validation loop.
    """
    import lightning as L

    from neco.training.checkpoint import AtomicCheckpointIO

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_ADVERT_FILTER)  # idempotent
    # Our samplers resume mid-epoch from the position stored in the checkpoint, so Lightning's
    # "dataloader is not resumable" warning does not apply.
    warnings.filterwarnings(
        "ignore", message="You're resuming from a checkpoint that ended before the epoch ended"
    )
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    return L.Trainer(
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=str(out_dir),
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **options,
    )


def build_trainer(
    run: Any,
    out_dir: Path,
    callbacks: list[Any],
    max_steps: int | None,
    epochs: int = -1,
    grad_clip: Any = None,
) -> Any:
    """A Lightning Trainer for the `run` settings: devices, strategy, precision, loggers, progress."""
    accelerator = resolve_accelerator(run)
    return lightning_trainer(
        out_dir,
        callbacks,
        accelerator=accelerator,
        devices=run.devices,
        strategy=_strategy(run, accelerator),
        num_nodes=run.num_nodes,
        precision=resolve_precision(run, accelerator),
        max_epochs=-1 if max_steps is not None else epochs,
        max_steps=max_steps if max_steps is not None else -1,
        logger=_loggers(run, out_dir) or False,
        enable_progress_bar=run.progress,
        log_every_n_steps=run.log_every,
        gradient_clip_val=grad_clip,
    )


def trained_metrics(trainer: Any) -> dict[str, float]:
    """The last logged scalar of every metric of a finished fit."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def is_launching_rank() -> bool:
    """True in the process that starts the run (Lightning launches the other ranks later with RANK set)."""
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def train(
    config: TrainConfig,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    allow_config_change: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train NeCo as `config` says; `resume` is None, 'auto' or a checkpoint path. Returns a summary.

    The run folder is locked for the run (a second `neco train` into it is refused). A new run refuses a
    folder that already holds checkpoints unless `overwrite` (which deletes them). On resume, settings
    that may change (see `neco.training.resume`) are applied from the resume step and recorded; others,
    and a changed set of training images, are refused unless `allow_config_change`. A run that fails
    before its first step removes the folders it created. `callbacks` are extra Lightning callbacks
    (the k-means and attention validations of `run.validation` / `run.attention_validation` are added here).
    """
    import shutil

    from neco.training.lock import RunLock
    from neco.utils.io import ensure_writable_dir

    if progress is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, progress=progress))
    requested = Path(config.run.out_dir).expanduser()
    created = [p for p in (requested, requested / "checkpoints") if not p.exists()]
    out_dir = ensure_writable_dir(config.run.out_dir, "run.out_dir").resolve()
    lock = RunLock(out_dir)
    fitting: list[bool] = []
    try:
        if is_launching_rank():
            lock.acquire()
        return _train_in(
            config, out_dir, resume, overwrite, allow_config_change, callbacks, lambda: fitting.append(True)
        )
    except BaseException:
        if not fitting and is_launching_rank():
            # Nothing ran: leave no empty run folder behind (only what this call created is removed).
            lock.release()
            for folder in created:
                shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        lock.release()


def _train_in(
    config: TrainConfig,
    out_dir: Path,
    resume: str | None,
    overwrite: bool,
    allow_config_change: bool,
    callbacks: Sequence[Any],
    on_fit: Any,
) -> TrainResult:
    """The body of `train` in the locked run folder; `on_fit()` is called just before the first step."""
    import lightning as L

    from neco.training import checkpoint as ckpt
    from neco.training.datamodule import NeCoDataModule
    from neco.training.module import NeCoModule
    from neco.training.preflight import check_crop_sizes, check_sort_memory
    from neco.training.resume import (
        check_config_change,
        check_dataset_identity,
        dataset_identity,
        record_changes,
    )
    from neco.utils.io import ensure_writable_dir

    checkpoint_dir = ensure_writable_dir(out_dir / "checkpoints", "run.out_dir (its checkpoints folder)")
    accelerator = resolve_accelerator(config.run)
    _strategy(config.run, accelerator)  # a bad strategy fails before anything is built
    launching = is_launching_rank()
    if launching:
        ckpt.remove_orphan_temporaries(checkpoint_dir)
    ckpt_path = ckpt.resolve_resume(resume, checkpoint_dir)
    if ckpt_path is None and launching:
        ckpt.check_fresh_start(checkpoint_dir, overwrite)
    L.seed_everything(config.run.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    datamodule = NeCoDataModule(config, out_dir)
    if config.data.kind != "synthetic" or launching:
        # Lists the images: a missing / empty data folder fails before the model is built. Synthetic
        # scenes are generated here by the launching process only (the other ranks start later).
        datamodule.setup()
    identity = dataset_identity(datamodule.dataset.source.files) if datamodule.dataset is not None else None
    module = NeCoModule(config)
    module.data_identity = identity
    check_crop_sizes(config, module.patch_size)
    check_sort_memory(config, "cuda" if accelerator == "gpu" else "cpu")
    changes: dict[str, tuple[Any, Any]] = {}
    resume_step = 0
    if ckpt_path is not None:
        stored = ckpt.check_resume_compatible(ckpt_path, module)
        changes = check_config_change(stored.get("config"), config, ckpt_path, allow=allow_config_change)
        changes.update(
            check_dataset_identity(
                stored.get("data_identity"), identity, ckpt_path, allow=allow_config_change
            )
        )
        resume_step = int(stored.get("step", 0))
        history = list(stored.get("config_changes", []))
        del stored
    else:
        history = []
    ckpt.check_free_space(checkpoint_dir, ckpt.estimate_checkpoint_bytes(module))
    checkpointer = ckpt.PeriodicCheckpoint(
        checkpoint_dir, config.run.ckpt_every_steps, config.run.keep_checkpoints, config.run.stop_at_step
    )
    significant = {k: v for k, v in changes.items() if k not in ("run.out_dir", "run.progress")}
    if significant:
        history.append({"step": resume_step, "changes": {k: list(v) for k, v in significant.items()}})
    checkpointer.config_changes = history
    all_callbacks: list[Any] = [checkpointer, *callbacks]
    if config.run.validation.enabled:
        from neco.training.validation import KMeansValidation

        all_callbacks.append(KMeansValidation(config.run.validation))
    if config.run.attention_validation.enabled:
        from neco.training.attention_callback import AttentionValidation

        all_callbacks.append(AttentionValidation(config.run.attention_validation))
    optim = config.optim
    trainer = build_trainer(
        config.run, out_dir, all_callbacks, optim.max_steps, optim.epochs, optim.grad_clip
    )
    if trainer.is_global_zero:
        save_config(config, out_dir / "config.yaml")
        log = get_logger("neco.training")
        if significant:
            record_changes(out_dir, resume_step, significant)
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in significant.items())
            log.warning(f"settings changed on resume at step {resume_step} (applied from here on): {listed}")
        where = f"resuming from {ckpt_path}" if ckpt_path else "new run"
        log.info(f"training into {out_dir} ({where}); checkpoints in {checkpoint_dir}")
    on_fit()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    last = checkpoint_dir / "last.ckpt"
    return TrainResult(
        out_dir=out_dir,
        checkpoint_dir=checkpoint_dir,
        last_checkpoint=last.resolve() if last.exists() else None,
        global_step=int(trainer.global_step),
        interrupted=checkpointer.interrupted,
        metrics=trained_metrics(trainer),
        stop_signal=checkpointer.stop_signal,
        config_changes=significant,
        skipped_images=sorted(datamodule.skipped_images),
    )
