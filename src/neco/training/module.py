"""The NeCo LightningModule: student + EMA teacher, projection heads, loss, optimizer and schedules.

Shapes: B = images per batch (per process), V = views per image (globals first), G = global views,
D = backbone width, C = head output width, (h, w) = token grid of a view.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from neco.backbones.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from neco.training.checkpoint import DivergenceError
from neco.training.config import TrainConfig, config_to_dict

__all__ = ["NeCoModule", "NonFiniteLossError", "build_backbone", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]


class NonFiniteLossError(DivergenceError):
    """The loss became NaN or infinite; the run stops and its message names the last good checkpoint."""


def build_backbone(model_config: Any) -> nn.Module:
    """Create the student backbone from `model` options (registry name, weights, registers, drop-path)."""
    from pathlib import Path

    from neco.backbones import create

    weights = model_config.weights
    if weights is not None and "://" not in weights and not Path(weights).expanduser().exists():
        raise FileNotFoundError(f"`model.weights` {weights}: no such file")
    overrides: dict[str, Any] = {"drop_path_rate": model_config.drop_path_rate}
    if model_config.num_register_tokens is not None:
        overrides["num_register_tokens"] = model_config.num_register_tokens
    return create(
        model_config.backbone,
        pretrained=bool(model_config.pretrained and weights is None),
        weights=weights,
        which=model_config.weights_which,
        **overrides,
    )


def _rng_state() -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable objects (lists, ints, tensors)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_cached = state["numpy"]
    np.random.set_state((np_name, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class NeCoModule(L.LightningModule):
    """Student backbone + head trained by the NeCo loss against an EMA teacher backbone + head.

    The teacher is always in eval mode, has no gradients, and runs under `torch.no_grad`. The LR and
    weight decay follow per-step cosine schedules set before each step; the EMA update follows each
    optimizer step with a cosine momentum schedule.
    """

    def __init__(self, config: TrainConfig, student: nn.Module | None = None) -> None:
        super().__init__()
        from neco.method.head import ProjectionHead
        from neco.method.loss import NeCoLoss
        from neco.method.optim import apply_trainable_blocks

        self.config = config
        mc = config.model
        self.student = student if student is not None else build_backbone(mc)
        self.student_head = ProjectionHead(self.student.embed_dim, mc.head_hidden_dim, mc.head_out_dim)
        apply_trainable_blocks(self.student, mc.trainable_blocks)
        self.teacher = copy.deepcopy(self.student)
        self.teacher_head = copy.deepcopy(self.student_head)
        if mc.teacher_head_init == "independent":  # public NeCo code: a second random draw, not a copy
            fresh = ProjectionHead(self.student.embed_dim, mc.head_hidden_dim, mc.head_out_dim)
            self.teacher_head.load_state_dict(fresh.state_dict())
        for param in [*self.teacher.parameters(), *self.teacher_head.parameters()]:
            param.requires_grad_(False)
        lc = config.loss
        self.loss_fn = NeCoLoss(
            steepness_student=lc.steepness_student,
            steepness_teacher=lc.steepness_teacher,
            network=lc.network,
            distribution=lc.distribution,
            similarity=lc.similarity,
            reference_mode=lc.reference_mode,
            queue_size=lc.queue_size,
            roi_size=lc.roi_size,
            queue_gather=lc.queue_gather,
        )
        self.patch_size = int(self.student.patch_size)
        self.num_global = config.data.crops.num_global
        self._schedule_step = 0
        self._batch_start: float | None = None
        self._schedules: dict[str, Any] = {}
        self.data_position: tuple[int, int] = (0, 0)
        self._resume_position: tuple[int, int] | None = None
        self._loss_window: list[Tensor] = []
        # Largest |weight| of the student at the run's start (carried by checkpoints): divergence yardstick.
        self.start_weight_max = self.weight_max()
        # Count and list hash of the training images (set by the run), so a resume notices a changed set.
        self.data_identity: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------
    # modes and setup

    def train(self, mode: bool = True) -> NeCoModule:
        """Switch train/eval mode; the teacher stays in eval mode (no drop-path, frozen statistics)."""
        super().train(mode)
        self.teacher.eval()
        self.teacher_head.eval()
        return self

    @torch.no_grad()
    def weight_max(self) -> float:
        """The largest absolute value among the student's floating-point parameters."""
        values = [
            p.detach().abs().max() for p in self.student.parameters() if p.is_floating_point() and p.numel()
        ]
        return float(torch.stack(values).max()) if values else 0.0

    def configure_model(self) -> None:
        """Compile the student and teacher in place when `run.compile` is set (state-dict keys unchanged)."""
        if self.config.run.compile and not getattr(self, "_compiled", False):
            self.student.compile()
            self.teacher.compile()
            self._compiled = True

    def total_steps(self) -> int:
        """Number of optimizer steps of the whole run (the length of every schedule)."""
        if self.trainer is None:
            raise RuntimeError("total_steps() needs an attached Trainer")
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                f"cannot derive the schedule length from the data loader (estimated steps: {total})"
            )
        return int(total)

    def _schedule(self, name: str, start: float, end: float) -> Any:
        from neco.method.schedules import cosine_schedule

        key = f"{name}:{start}:{end}"
        if key not in self._schedules:
            self._schedules[key] = cosine_schedule(start, end, self.total_steps())
        return self._schedules[key]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over four groups: backbone / head, each with and without weight decay."""
        from neco.method.optim import build_param_groups

        oc = self.config.optim
        groups = build_param_groups(
            self.student,
            self.student_head,
            oc.lr_backbone,
            oc.lr_head,
            oc.weight_decay,
            decay_tokens=oc.decay_tokens,
        )
        groups = [g for g in groups if len(list(g["params"])) > 0]
        # Kept beside the optimizer: a resume restores the saved groups (their old `base_lr` included)
        # after this runs, and the current config's rates must win (a resume may change them).
        self._base_lrs = [group["lr"] for group in groups]
        return torch.optim.AdamW(groups, lr=oc.lr_backbone, weight_decay=oc.weight_decay)

    # ------------------------------------------------------------------------------------------
    # schedules, EMA, timing

    def current_momentum(self, step: int) -> float:
        """EMA momentum at optimizer step `step`."""
        oc = self.config.optim
        return float(self._schedule("momentum", oc.momentum, oc.momentum_end)(step))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set LR and weight decay of every group for this step, and start the step timer."""
        oc = self.config.optim
        step = self.global_step
        self._schedule_step = step
        wd = float(self._schedule("wd", oc.weight_decay, oc.weight_decay_end)(step))
        for optimizer in self.trainer.optimizers:
            for group, base_lr in zip(optimizer.param_groups, self._base_lrs, strict=True):
                group["base_lr"] = base_lr
                group["lr"] = float(
                    self._schedule(f"lr-{group['base_lr']}", group["base_lr"], oc.lr_end)(step)
                )
                group["weight_decay"] = wd if group.get("apply_wd", True) else 0.0
        self._batch_start = time.perf_counter()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """AdamW step followed immediately by the EMA update of teacher backbone and head."""
        from neco.method.ema import ema_update_

        super().optimizer_step(*args, **kwargs)
        momentum = self.current_momentum(self._schedule_step)
        ema_update_(self.teacher, self.student, momentum)
        ema_update_(self.teacher_head, self.student_head, momentum)

    # ------------------------------------------------------------------------------------------
    # forward

    def _embed(self, backbone: nn.Module, head: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images (N, 3, H, W) -> head grid (N, C, h, w) and backbone patch tokens (N, h*w, D)."""
        from neco.method.head import tokens_to_grid

        height, width = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        tokens = backbone.forward_features(images)["x_norm_patchtokens"]  # (N, h*w, D)
        return tokens_to_grid(head(tokens), height, width), tokens  # (N, C, h, w)

    def _forward_views(
        self, backbone: nn.Module, head: nn.Module, views: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """One backbone pass per run of same-sized views; returns per-view grids and tokens."""
        grids: list[Tensor] = []
        tokens: list[Tensor] = []
        for _, run in itertools.groupby(views, key=lambda view: view.shape[-2:]):
            run = list(run)
            grid, tok = self._embed(backbone, head, torch.cat(run))  # (len(run)*B, ...)
            grids.extend(grid.chunk(len(run)))
            tokens.extend(tok.chunk(len(run)))
        return grids, tokens

    @torch.no_grad()
    def _teacher_masks(self, global_views: list[Tensor]) -> list[Tensor] | None:
        """Foreground (or background) masks (B, h, w) of each global view from the teacher's last attention."""
        mode = self.config.loss.masks
        if mode == "none":
            return None
        from neco.method.masks import attention_foreground

        masks = []
        for view in global_views:
            attn = self.teacher.get_last_self_attention(view)  # (B, heads, T, T)
            grid = (view.shape[-2] // self.patch_size, view.shape[-1] // self.patch_size)
            fg = attention_foreground(attn.float(), self.teacher.num_register_tokens, grid)
            masks.append(fg if mode == "fg" else ~fg)
        return masks

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float], list[Tensor]]:
        """NeCo loss of one multi-crop batch; also returns diagnostics and the teacher's patch tokens."""
        views: list[Tensor] = batch["views"]
        if len(views) != self.config.data.crops.num_global + self.config.data.crops.num_local:
            raise ValueError(f"batch has {len(views)} views but the config asks for num_global + num_local")
        with torch.no_grad():
            teacher_grids, teacher_tokens = self._forward_views(
                self.teacher, self.teacher_head, views[: self.num_global]
            )
            teacher_masks = self._teacher_masks(views[: self.num_global])
        student_grids, _ = self._forward_views(self.student, self.student_head, views)
        # The soft sort at steepness ~100 needs fp32: bf16 similarities would collapse the ranks.
        with torch.autocast(device_type=self.device.type, enabled=False):
            output = self.loss_fn(
                [g.float() for g in student_grids],
                [g.float() for g in teacher_grids],
                batch["boxes"].float(),
                batch["valid"],
                self.patch_size,
                teacher_masks=teacher_masks,
            )
        return output.loss, dict(output.diagnostics), teacher_tokens

    # ------------------------------------------------------------------------------------------
    # training step and logging

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One NeCo step: loss, non-finite check across ranks, logging."""
        loss, diagnostics, teacher_tokens = self.compute_loss(batch)
        self._check_finite(loss, diagnostics, batch)
        if "position" in batch:
            self.data_position = (int(batch["epoch"][0]), int(batch["position"].max()) + 1)
        batch_size = batch["views"][0].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        # Logged every step: Lightning writes them every `run.log_every` steps (values logged only on
        # some steps would be repeated stale in between).
        self._log_schedules()
        for key, value in diagnostics.items():
            if key != "loss":  # already logged as train/loss
                self.log(f"train/{key}", float(value), batch_size=batch_size)
        if self.global_step % self.config.run.diagnostics_every == 0:
            self._log_collapse(teacher_tokens[0])
        self._log_window_mean(loss.detach())
        # The logged loss stays the NeCo loss; `loss.weight` = 0 (a control run) zeroes only its gradient.
        return loss * self.config.loss.weight if self.config.loss.weight != 1.0 else loss

    def _check_finite(self, loss: Tensor, diagnostics: dict[str, float], batch: dict[str, Any]) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0], device=loss.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            # Every rank must stop together, or the healthy ranks would hang in the next all-reduce.
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        if float(bad) > 0:
            views = ", ".join(
                f"{tuple(v.shape)} finite={bool(torch.isfinite(v).all())}" for v in batch["views"]
            )
            raise NonFiniteLossError(
                f"non-finite loss at step {self.global_step} (rank {self.global_rank}: loss={float(loss.detach())}); "
                f"views: {views}; diagnostics: {diagnostics}; lr_backbone={self.config.optim.lr_backbone}, "
                f"steepness={self.config.loss.steepness_student}/{self.config.loss.steepness_teacher}",
                self.global_step,
            )

    def _log_schedules(self) -> None:
        optimizer = self.trainer.optimizers[0]
        for group in optimizer.param_groups:
            if group.get("name", "").startswith("backbone") and group.get("apply_wd", True):
                self.log("train/lr_backbone", group["lr"])
                self.log("train/weight_decay", group["weight_decay"])
            if group.get("name", "").startswith("head") and group.get("apply_wd", True):
                self.log("train/lr_head", group["lr"])
        self.log("train/momentum", self.current_momentum(self._schedule_step))

    def _log_window_mean(self, loss: Tensor) -> None:
        """Every `run.log_every` steps write the mean loss of those steps (`train/loss_avg`, smoother)."""
        self._loss_window.append(loss)  # kept on the device: read to the host once per window
        if len(self._loss_window) >= self.config.run.log_every:
            mean = float(torch.stack([t.float() for t in self._loss_window]).mean())
            self._loss_window = []
            if self.trainer is not None and self.trainer.is_global_zero:
                for logger in self.loggers:
                    logger.log_metrics({"train/loss_avg": mean}, step=self.global_step)

    @torch.no_grad()
    def _log_collapse(self, tokens: Tensor) -> None:
        """Effective rank and mean pairwise cosine of teacher patch features (collapse diagnostics)."""
        from neco.method.diagnostics import effective_rank, mean_pairwise_cosine

        flat = tokens.reshape(-1, tokens.shape[-1]).float()  # (B*h*w, D)
        if flat.shape[0] > 2048:
            index = torch.linspace(0, flat.shape[0] - 1, 2048, device=flat.device).long()
            flat = flat[index]
        metrics = {
            "train/effective_rank": float(effective_rank(flat)),
            "train/mean_pairwise_cosine": float(mean_pairwise_cosine(flat)),
        }
        # Written straight to the loggers: these are computed only every `run.diagnostics_every` steps.
        if self.trainer is not None and self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log images/s over the whole step (all ranks)."""
        if self._batch_start is None:
            return
        elapsed = max(time.perf_counter() - self._batch_start, 1e-9)
        images = batch["views"][0].shape[0] * self.trainer.world_size
        self.log("train/images_per_s", images / elapsed, prog_bar=True, rank_zero_only=True)

    # ------------------------------------------------------------------------------------------
    # checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the neco checkpoint keys (backbones, heads, config, RNG of every rank, data position)."""
        from neco.utils import dist

        checkpoint["format"] = CHECKPOINT_FORMAT
        checkpoint["version"] = CHECKPOINT_VERSION
        checkpoint["backbone"] = self.config.model.backbone
        checkpoint["num_register_tokens"] = int(self.student.num_register_tokens)
        # No copies: these tensors share storage with Lightning's `state_dict`, and torch.save writes a
        # shared storage once, so the backbones and heads are not stored twice in the file.
        checkpoint["student"] = _detached(self.student.state_dict())
        checkpoint["teacher"] = _detached(self.teacher.state_dict())
        checkpoint["student_head"] = _detached(self.student_head.state_dict())
        checkpoint["teacher_head"] = _detached(self.teacher_head.state_dict())
        checkpoint["queue"] = _detached(self.loss_fn.state_dict())
        checkpoint["step"] = int(self.global_step)
        checkpoint["config"] = config_to_dict(self.config)
        states = [_rng_state()]
        # After a hard interrupt other ranks may be gone: no collective then (rank 0's state only).
        if (
            dist.is_distributed()
            and dist.world_size() > 1
            and not getattr(self, "single_process_save", False)
        ):
            states = [None] * dist.world_size()
            torch.distributed.all_gather_object(states, _rng_state())
        checkpoint["rng"] = {"per_rank": states}
        epoch, position = self.data_position
        checkpoint["data_position"] = {"epoch": epoch, "position": position}
        checkpoint["health"] = {"weight_max": self.weight_max(), "start_weight_max": self.start_weight_max}
        if self.data_identity is not None:
            checkpoint["data_identity"] = dict(self.data_identity)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore RNG states and remember where the data stream stopped."""
        rng = checkpoint.get("rng", {}).get("per_rank")
        if rng:
            _set_rng_state(rng[self.global_rank] if self.global_rank < len(rng) else rng[0])
        start = (checkpoint.get("health") or {}).get("start_weight_max")
        if start is not None:
            self.start_weight_max = float(start)
        position = checkpoint.get("data_position")
        if position is not None:
            self._resume_position = (int(position["epoch"]), int(position["position"]))
            self.data_position = self._resume_position

    def pop_resume_position(self) -> tuple[int, int] | None:
        """The (epoch, position) to continue the data stream from after a resume, once."""
        position, self._resume_position = self._resume_position, None
        return position


def _detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with detached tensors that keep their storage (saved once beside the Lightning state dict)."""
    return {k: v.detach() for k, v in state.items()}
