"""DINO-style image-level self-distillation of the tiny demo backbone on synthetic scenes.

The paper's largest NeCo gains come from DINO ViT-S/16, a start pretrained by image-level
self-distillation rather than supervision. This module builds such a start at toy scale, with the
ingredients of DINO (Caron et al., 2021): multi-crop views (2 global + local crops, the crop sampler
of NeCo training), an EMA teacher that sees only the global crops, a projection head with a
weight-normalised prototype layer, teacher centering and sharpening, and a cross-entropy between the
teacher's and the student's prototype distributions over every pair of different views. No label is
used anywhere. Deterministic for a given seed and thread count.

Measured (docs/benchmarks.md, "6."): the defaults (1200 steps, 1497 s on 1 thread) reach Hummingbird
19.4 ± 0.7 on the demo scenes, the level of a random init (19.0): at this scale and budget the
self-distillation learns no dense semantics, so the demo keeps the multi-label start.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from neco.backbones import create
from neco.demo.pretrain import make_scene_pool, save_tiny_asset, warmup_cosine_lr
from neco.method.crops import MultiCropSampler, collate_multicrop
from neco.method.ema import ema_update_, make_teacher
from neco.method.head import ProjectionHead
from neco.method.optim import build_param_groups
from neco.method.schedules import cosine_schedule

__all__ = ["DinoHead", "DinoLoss", "TinyDinoConfig", "pretrain_tiny_dino"]


@dataclass(frozen=True)
class TinyDinoConfig:
    """Settings of the tiny DINO-style pretraining (`neco pretrain-tiny --method dino`)."""

    backbone: str = "vit_tiny"
    scene_size: int = 96
    global_size: int = 48
    local_size: int = 24
    num_local: int = 4
    global_scale: tuple[float, float] = (0.14, 0.6)  # 48 px at scale 0.25 is 1:1 with the scene
    local_scale: tuple[float, float] = (0.03, 0.14)
    num_scenes: int = 2048
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-4  # 5e-4 (8x DINO's lr scaled to batch 32) collapsed to uniform outputs
    weight_decay: float = 0.04
    warmup_steps: int = 100
    out_dim: int = 256
    teacher_temp: float = 0.02  # at 0.04 the teacher drifted toward uniform within 300 steps
    student_temp: float = 0.1
    center_momentum: float = 0.9
    ema_start: float = 0.996
    freeze_last_layer_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("global_size", "local_size"):
            if getattr(self, name) % 8 != 0 or getattr(self, name) < 16:
                raise ValueError(f"`{name}` must be a multiple of 8 and >= 16 but is {getattr(self, name)}")
        for name in ("num_scenes", "steps", "batch_size", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {getattr(self, name)}")
        for name in ("teacher_temp", "student_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0 but is {getattr(self, name)}")
        if not 0.0 <= self.ema_start <= 1.0:
            raise ValueError(f"`ema_start` must be in [0, 1] but is {self.ema_start}")


class DinoHead(nn.Module):
    """NeCo's projection MLP (`D -> hidden -> hidden -> bottleneck`, L2-normalised), then weight-normalised prototypes.

    Example:
        >>> head = DinoHead(192, out_dim=256)
        >>> head(torch.randn(4, 192)).shape
        torch.Size([4, 256])
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 128) -> None:
        super().__init__()
        self.projection = ProjectionHead(in_dim, hidden_dim, bottleneck_dim)
        # The prototypes' norms are fixed at 1 (DINO's norm_last_layer): only their directions are learnt.
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) image embeddings -> (B, out_dim) prototype logits."""
        return self.last_layer(self.projection(x))


class DinoLoss(nn.Module):
    """Cross-entropy from the centred, sharpened teacher to the student over all pairs of different views.

    Example:
        >>> loss_fn = DinoLoss(out_dim=8)
        >>> teacher = [torch.randn(4, 8) for _ in range(2)]            # global views only
        >>> student = [torch.randn(4, 8) for _ in range(6)]            # global views first
        >>> loss = loss_fn(student, teacher, teacher_temp=0.04)
        >>> loss.ndim
        0
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: list[Tensor], teacher: list[Tensor], teacher_temp: float) -> Tensor:
        """Mean over (teacher view, other student view) pairs; updates the centre from the teacher batch."""
        targets = [F.softmax((t - self.center) / teacher_temp, dim=-1).detach() for t in teacher]
        log_probs = [F.log_softmax(s / self.student_temp, dim=-1) for s in student]
        total, pairs = student[0].new_zeros(()), 0
        for i, target in enumerate(targets):
            for j, log_prob in enumerate(log_probs):
                if i != j:  # global view i is compared with every other view
                    total = total - (target * log_prob).sum(dim=-1).mean()
                    pairs += 1
        with torch.no_grad():
            batch_center = torch.cat(teacher).mean(dim=0, keepdim=True)
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        return total / pairs


def _entropy(p: Tensor) -> Tensor:
    """Entropy (nats) over the last dimension."""
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1)


def _views(
    images: np.ndarray,
    sampler: MultiCropSampler,
    batch_size: int,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> list[Tensor]:
    """One batch of multi-crop views: a list of V tensors (B, 3, H_v, W_v), global views first."""
    samples = [sampler(Image.fromarray(images[i]), gen) for i in rng.integers(0, len(images), batch_size)]
    return collate_multicrop(samples)["views"]


def pretrain_tiny_dino(
    cfg: TinyDinoConfig = TinyDinoConfig(), out_path: str | Path | None = None, progress: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Self-distil the tiny backbone DINO-style; optionally save the teacher; return (teacher, log)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    images, _ = make_scene_pool(cfg.num_scenes, cfg.scene_size, cfg.seed, progress)  # labels unused
    sampler = MultiCropSampler(
        global_size=cfg.global_size,
        local_size=cfg.local_size,
        num_local=cfg.num_local,
        global_scale=cfg.global_scale,
        local_scale=cfg.local_scale,
        min_overlap=0.0,
        min_overlap_second_global=0.0,
    )  # views need only touch (area > 0): DINO itself asks nothing of their overlap
    backbone = create(cfg.backbone)
    student = nn.ModuleDict({"backbone": backbone, "head": DinoHead(backbone.embed_dim, cfg.out_dim)})
    teacher = make_teacher(student)
    loss_fn = DinoLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum)
    optimizer = torch.optim.AdamW(
        build_param_groups(student["backbone"], student["head"], cfg.lr, cfg.lr, cfg.weight_decay), lr=cfg.lr
    )
    ema_at = cosine_schedule(cfg.ema_start, 1.0, cfg.steps)
    last_layer = [
        p for n, p in student["head"].named_parameters() if n.startswith("last_layer") and p.requires_grad
    ]

    def embed(net: nn.Module, views: list[Tensor]) -> list[Tensor]:
        # Views of one size go through the backbone together, as in DINO's multi-crop wrapper.
        out: list[Tensor] = []
        for size in dict.fromkeys(v.shape[-1] for v in views):
            batch = torch.cat([v for v in views if v.shape[-1] == size])
            cls = net["backbone"].forward_features(batch)["x_norm_clstoken"]
            out.extend(net["head"](cls).chunk(sum(v.shape[-1] == size for v in views)))
        return out

    student.train()
    losses: list[float] = []
    entropies: list[float] = []
    batch_entropies: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain-tiny (dino)", disable=not progress)
    for step in bar:
        views = _views(images, sampler, cfg.batch_size, rng, gen)
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        with torch.no_grad():
            teacher_out = embed(teacher, views[:2])
        student_out = embed(student, views)
        loss = loss_fn(student_out, teacher_out, cfg.teacher_temp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        if step < cfg.freeze_last_layer_steps:
            for p in last_layer:
                p.grad = None
        optimizer.step()
        ema_update_(teacher, student, ema_at(step))
        with torch.no_grad():
            targets = F.softmax((teacher_out[0] - loss_fn.center) / cfg.teacher_temp, dim=-1)
            # Healthy: sharp per image (low entropy), spread over prototypes across the batch (high entropy of
            # the mean). Both near ln(out_dim) is the uniform collapse; both near 0, collapse to one prototype.
            entropies.append(_entropy(targets).mean().item())
            batch_entropies.append(_entropy(targets.mean(dim=0)).item())
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(
                loss=f"{np.mean(losses[-20:]):.3f}",
                entropy=f"{np.mean(entropies[-20:]):.2f}",
                batch_entropy=f"{np.mean(batch_entropies[-20:]):.2f}",
            )
    backbone = teacher["backbone"].eval()
    log = {
        "config": {"method": "dino", **asdict(cfg)},
        "seconds": time.perf_counter() - start,
        "final_loss": float(np.mean(losses[-50:])),
        "final_teacher_entropy": float(np.mean(entropies[-50:])),
        "final_teacher_batch_entropy": float(np.mean(batch_entropies[-50:])),
        "loss_curve": [float(v) for v in losses],
        "teacher_entropy_curve": entropies,
        "teacher_batch_entropy_curve": batch_entropies,
    }
    if out_path is not None:
        save_tiny_asset(backbone, log, out_path)
    return backbone, log
