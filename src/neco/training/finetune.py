"""Lightning training of `neco eval finetune`: backbone + Segmenter decoder, end to end.

Importing this module registers `train_segmenter` with the finetune protocol
(`neco.evaluation.protocols.finetune.set_finetuner`). A run trains on one device or DDP (gloo on
CPU, NCCL on GPUs), under the autocast of `--precision` (bf16 -> Lightning's bf16-mixed), and
writes atomic, resumable checkpoints to `<out>/checkpoints` (the same `PeriodicCheckpoint` and
`AtomicCheckpointIO` as `neco train`). The training stream is indexed by sample (see
`StepDataset`), the RNG state and the loss history travel in the checkpoint, so `--resume auto`
continues exactly where the run stopped. A checkpoint is also a backbone file: its `student` and
`teacher` entries are the fine-tuned backbone, so `neco eval --backbone FILE` and `neco export`
read it.
"""

from __future__ import annotations

import copy
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from neco.backbones.loading import state_dict_checksum
from neco.evaluation.blocks.seg_recipe import SegmenterTrainTransform, StepDataset
from neco.evaluation.blocks.segmenter import SegmenterModel, build_decoder, set_drop_path
from neco.evaluation.protocol import EvalData, RunContext
from neco.evaluation.protocols.finetune import FinetuneOutcome, FinetuneSettings, set_finetuner
from neco.training.module import _rng_state, _set_rng_state
from neco.utils.logging import get_logger

__all__ = ["FinetuneModule", "parameter_groups", "poly_factor", "train_segmenter"]

FINETUNE_FORMAT_VERSION = 1
# settings that may differ between a run and its resumption (the rest must match)
_RESUMABLE = {
    "resume",
    "overwrite",
    "devices",
    "ckpt_every",
    "keep_checkpoints",
    "test_scales",
    "test_flip",
    "window_stride",
}


def poly_factor(step: int, total: int, power: float, floor: float) -> float:
    """LR multiplier of the poly schedule: (1 - step / total)^power, rescaled to end at `floor` (min_lr / lr)."""
    progress = min(max(step, 0), total) / max(total, 1)
    return (1.0 - floor) * (1.0 - progress) ** power + floor


def _layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for what follows the blocks (final norm)."""
    name = name.removeprefix("model.")  # neco's Backbone wraps the timm ViT as `model`
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.split(".")[0] in (
        "patch_embed",
        "cls_token",
        "pos_embed",
        "register_tokens",
        "reg_token",
        "mask_token",
    ):
        return 0
    return depth + 1


def parameter_groups(model: SegmenterModel, settings: FinetuneSettings) -> list[dict[str, Any]]:
    """SGD parameter groups: frozen backbone parts left out, layer-wise LR decay, no decay on class embeddings.

    Freezing sets `requires_grad=False` on the patch embedding and the first `freeze_blocks` blocks
    (the whole backbone when `freeze_blocks` >= its depth).
    """
    depth = len(getattr(model.backbone, "blocks", []))
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.backbone.named_parameters():
        layer = _layer_id(name, depth)
        if settings.freeze_blocks >= depth or (
            settings.freeze_blocks > 0 and layer <= settings.freeze_blocks
        ):
            param.requires_grad_(False)
            continue
        scale = settings.layer_decay ** (depth + 1 - layer)
        groups.setdefault((scale, settings.weight_decay), []).append(param)
    no_decay = getattr(model.decoder, "no_weight_decay", lambda: set())()
    for name, param in model.decoder.named_parameters():
        decay = 0.0 if name in no_decay else settings.weight_decay
        groups.setdefault((settings.decoder_lr_scale, decay), []).append(param)
    return [
        {"params": params, "lr": settings.lr * scale, "weight_decay": decay, "lr_scale": scale}
        for (scale, decay), params in groups.items()
        if params
    ]


class _RankSampler(Sampler[int]):
    """Stream samples of this rank: step s, rank r, item j -> s * total_batch + r * local_batch + j."""

    def __init__(self, start_step: int, stop_step: int, total_batch: int, rank: int, world: int) -> None:
        self.start_step, self.stop_step = start_step, stop_step
        self.total, self.local, self.rank = total_batch, total_batch // world, rank

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step) * self.local

    def __iter__(self):
        for step in range(self.start_step, self.stop_step):
            base = step * self.total + self.rank * self.local
            yield from range(base, base + self.local)


class FinetuneModule(L.LightningModule):
    """A `SegmenterModel` trained by pixel cross-entropy with SGD and a per-step poly schedule."""

    def __init__(
        self,
        model: SegmenterModel,
        data: EvalData,
        settings: FinetuneSettings,
        plan: dict[str, Any],
        *,
        seed: int,
        num_workers: int,
        backbone_name: str,
    ) -> None:
        super().__init__()
        self.model, self.data, self.settings, self.plan = model, data, settings, plan
        self.seed, self.num_workers, self.backbone_name = int(seed), int(num_workers), backbone_name
        self.ignore_index = int(data.train.ignore_index)
        self.losses: list[float] = []
        self._resume_step = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the upsampled logits against the crop's labels (ignore index left out)."""
        images, masks = batch
        logits = self.model(images)
        # float32: the softmax of a bf16 autocast is too coarse for a loss averaged over every pixel
        loss = F.cross_entropy(logits.float(), masks, ignore_index=self.ignore_index)
        if not bool(torch.isfinite(loss)):
            if bool((masks != self.ignore_index).any()):
                raise FloatingPointError(
                    f"the loss is {loss.item()} at step {self.global_step}: training diverged"
                )
            loss = (
                logits.sum() * 0.0
            )  # a batch of ignored pixels only: no signal, but DDP needs every gradient
        self.losses.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        """SGD over `parameter_groups` with the poly schedule stepped every iteration."""
        settings, total = self.settings, self.plan["iterations"]
        optimizer = torch.optim.SGD(
            parameter_groups(self.model, settings), lr=settings.lr, momentum=settings.momentum
        )
        floor = settings.min_lr / settings.lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: poly_factor(step, total, settings.poly_power, floor)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        """The rest of the sample stream from the resumed step, this rank's share of every batch."""
        plan, world = self.plan, self.trainer.world_size
        total = plan["batch_size"]
        if total % world:
            raise ValueError(f"`--batch-size` {total} must be a multiple of the {world} processes of the run")
        transform = SegmenterTrainTransform(
            plan["crop_size"],
            plan["short_side"],
            ratio_range=self.settings.ratio_range,
            photometric=self.settings.photometric,
            ignore_index=self.ignore_index,
        )
        stream = StepDataset(self.data.train, transform, self.seed, 0, plan["iterations"] * total)
        sampler = _RankSampler(self._resume_step, plan["iterations"], total, self.trainer.global_rank, world)
        return DataLoader(
            stream,
            batch_size=total // world,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=False,
            # its own generator: a loader drawing its base seed from the global RNG would shift the
            # dropout / drop-path draws of a resumed run (its loader is made after the RNG is restored)
            generator=torch.Generator().manual_seed(self.seed),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The neco checkpoint keys: the fine-tuned backbone as student and teacher, decoder, recipe, RNG."""
        backbone = {k: v.detach() for k, v in self.model.backbone.state_dict().items()}
        checkpoint.update(
            format="neco-checkpoint",
            version=FINETUNE_FORMAT_VERSION,
            backbone=self.backbone_name,
            num_register_tokens=int(getattr(self.model.backbone, "num_register_tokens", 0)),
            student=backbone,
            teacher=backbone,  # the same tensors: torch.save stores them once
            decoder={k: v.detach() for k, v in self.model.decoder.state_dict().items()},
            finetune={"settings": _settings_dict(self.settings), "plan": dict(self.plan)},
            step=int(self.global_step),
            losses=list(self.losses),
            rng=_rng_state(),
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the RNG, the loss history and the stream position."""
        _set_rng_state(checkpoint["rng"])
        self.losses = list(checkpoint.get("losses", []))
        self._resume_step = int(checkpoint["step"])


def _settings_dict(settings: FinetuneSettings) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def _check_resumable(path: Path, module: FinetuneModule) -> None:
    """Refuse a checkpoint of another model or recipe (decoder, schedule, crop, ...), naming the differences."""
    from neco.training.checkpoint import read_checkpoint

    try:
        stored = read_checkpoint(path)
    except ValueError as err:
        raise ValueError(f"--resume {err}") from err
    if "finetune" not in stored:
        raise ValueError(f"--resume {path}: not a checkpoint of `neco eval finetune` (a `neco train` run?)")
    mine = {
        "settings": _settings_dict(module.settings),
        "plan": dict(module.plan),
        "backbone": module.backbone_name,
    }
    theirs = {**stored["finetune"], "backbone": stored.get("backbone")}
    differences = [
        f"{key}: {theirs['settings'].get(key)!r} -> {value!r}"
        for key, value in mine["settings"].items()
        if key not in _RESUMABLE and theirs["settings"].get(key) != value
    ]
    differences += [
        f"{k}: {theirs['plan'].get(k)!r} -> {v!r}"
        for k, v in mine["plan"].items()
        if theirs["plan"].get(k) != v
    ]
    if theirs["backbone"] != mine["backbone"]:
        differences.append(f"backbone: {theirs['backbone']!r} -> {mine['backbone']!r}")
    expected = module.state_dict()
    if set(expected) != set(stored["state_dict"]):
        differences.append("the model's parameters differ")
    if differences:
        raise ValueError(
            f"--resume {path}: the checkpoint's run used other settings ({'; '.join(differences)}); resume "
            "with the same options, or start a new run (--overwrite, or another --out)"
        )


def _trainer(
    settings: FinetuneSettings, ctx: RunContext, out_dir: Path, iterations: int, callbacks: list[Any]
) -> L.Trainer:
    from lightning.pytorch.loggers import CSVLogger

    from neco.training.run import LIGHTNING_PRECISION, lightning_trainer

    gpu = ctx.device.type == "cuda"
    devices: Any = settings.devices
    if gpu and ctx.device.index is not None and settings.devices == 1:
        devices = [ctx.device.index]
    strategy: Any = "auto"
    if settings.devices > 1:
        from lightning.pytorch.strategies import DDPStrategy

        # backbones hold parameters the forward never uses (DINOv2's mask token), as in Segmenter's own DDP
        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="nccl" if gpu else "gloo")
    return lightning_trainer(
        out_dir,
        callbacks,
        accelerator="gpu" if gpu else "cpu",
        devices=devices,
        strategy=strategy,
        precision=LIGHTNING_PRECISION[ctx.run.precision],
        max_steps=int(iterations),
        max_epochs=-1,
        logger=CSVLogger(save_dir=str(out_dir), name="csv"),
        enable_progress_bar=ctx.progress,
        log_every_n_steps=10,
    )


def train_segmenter(
    backbone: nn.Module, data: EvalData, settings: FinetuneSettings, ctx: RunContext, plan: dict[str, Any]
) -> FinetuneOutcome:
    """Fine-tune a copy of `backbone` with a Segmenter decoder on `data.train` as `plan` says.

    Under DDP, the ranks other than 0 leave the process after training (Lightning started them as
    copies of the command); rank 0 returns the trained model for scoring.
    """
    from neco.training import checkpoint as ckpt
    from neco.training.run import is_launching_rank
    from neco.utils.io import ensure_writable_dir

    log = get_logger("neco.finetune")
    temporary = None
    if ctx.out_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="neco-finetune-")
        ctx.warn(
            "no output folder: the fine-tuned checkpoints were written to a temporary folder and deleted"
        )
    out_dir = ensure_writable_dir(ctx.out_dir or temporary.name, "--out").resolve()
    checkpoint_dir = ensure_writable_dir(out_dir / "checkpoints", "--out (its checkpoints folder)")
    launching = is_launching_rank()
    if launching:
        ckpt.remove_orphan_temporaries(checkpoint_dir)
    resume = ckpt.resolve_resume(settings.resume, checkpoint_dir)
    if resume is None and launching:
        ckpt.check_fresh_start(checkpoint_dir, settings.overwrite)
    L.seed_everything(ctx.seed, workers=True, verbose=False)
    model = copy.deepcopy(backbone).train()
    for param in model.parameters():
        param.requires_grad_(True)
    if settings.drop_path > 0 and not set_drop_path(model, settings.drop_path):
        ctx.warn(
            f"--drop-path {settings.drop_path}: the backbone has no stochastic-depth slots; none applied"
        )
    dim = int(getattr(model, "embed_dim", 0) or model.num_features)
    decoder = build_decoder(
        settings.decoder,
        dim,
        data.train.num_classes,
        num_layers=settings.decoder_layers,
        dropout=settings.decoder_dropout,
    )
    name = str(getattr(getattr(backbone, "config", None), "name", type(backbone).__name__))
    module = FinetuneModule(
        SegmenterModel(model, decoder),
        data,
        settings,
        plan,
        seed=ctx.seed,
        num_workers=ctx.run.num_workers,
        backbone_name=name,
    )
    if resume is not None:
        _check_resumable(resume, module)
    checkpointer = ckpt.PeriodicCheckpoint(checkpoint_dir, settings.ckpt_every, settings.keep_checkpoints)
    trainer = _trainer(settings, ctx, out_dir, plan["iterations"], [checkpointer])
    if trainer.is_global_zero:
        where = f"resuming from {resume}" if resume else "new run"
        log.info(
            f"finetune: {plan['iterations']} steps of batch {plan['batch_size']} into {checkpoint_dir} ({where})"
        )
    trainer.fit(module, ckpt_path=str(resume) if resume else None)
    if checkpointer.interrupted:
        raise KeyboardInterrupt(f"finetune stopped at step {trainer.global_step}; --resume auto continues it")
    if not trainer.is_global_zero:
        torch.distributed.destroy_process_group()
        sys.exit(0)  # the copy of the command Lightning started for this rank: rank 0 scores and writes
    last = checkpoint_dir / ckpt.LAST_NAME
    window = max(1, len(module.losses) // 100)
    curve = [
        sum(module.losses[i : i + window]) / len(module.losses[i : i + window])
        for i in range(0, len(module.losses), window)
    ]
    info = {
        "steps": int(trainer.global_step),
        "resumed_from": None if resume is None else str(resume),
        "checkpoint": str(last.resolve()) if last.exists() and temporary is None else None,
        "world_size": int(trainer.world_size),
        "loss_first": module.losses[0] if module.losses else math.nan,
        "loss_last": module.losses[-1] if module.losses else math.nan,
        "loss_curve": curve,
        "loss_curve_window": window,
        "finetuned_sha256": state_dict_checksum(module.model.backbone),
        "trainable_parameters": int(sum(p.numel() for p in module.model.parameters() if p.requires_grad)),
    }
    module.model.eval()
    if temporary is not None:
        temporary.cleanup()
    return FinetuneOutcome(model=module.model, info=info)


set_finetuner(train_segmenter)
