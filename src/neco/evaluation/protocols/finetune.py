"""End-to-end segmentation: fine-tune the backbone with a Segmenter decoder, then score mIoU.

The defaults are Segmenter's published recipe (Strudel et al., ICCV 2021; docs/evaluation.md cites
each value): SGD lr 1e-3, momentum 0.9, weight decay 0, poly schedule (power 0.9) down to 1e-5,
batch 8, 512 crops (rounded to whole patches), drop path 0.1 in the backbone, a 2-layer mask
transformer (dropout 0.1), 160k iterations on ADE20k / COCO and 80k on the other datasets,
single-scale sliding-window inference with 512 windows. Every value is an option.

Training runs on Lightning, which lives above this package: `neco.training.finetune` registers
the trainer with `set_finetuner` when imported (`neco eval finetune` imports it). This module owns
the settings, the plan and the scoring, so the result has the schema of every other protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from neco.evaluation.blocks.metrics import ConfusionMatrix
from neco.evaluation.blocks.seg_recipe import predict_probabilities
from neco.evaluation.blocks.segmenter import DECODERS
from neco.evaluation.blocks.transforms import resize_ids, to_input
from neco.evaluation.features import Features
from neco.evaluation.options import option
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol

__all__ = ["FinetuneSettings", "Finetune", "FinetuneOutcome", "published_iterations", "set_finetuner"]

# Segmenter's schedules: 160k iterations on ADE20k (64 epochs of 20,210 images at batch 8) and on
# COCO-Stuff-164k; 80k on Pascal Context (256 epochs of 4,996 at batch 16) and VOC-aug.
_LONG_SCHEDULE = ("ade20k", "coco-stuff-164k", "coco-stuff", "coco-things", "coco-stuff27")


def published_iterations(dataset: str) -> int:
    """Segmenter's iteration count for `dataset`: 160k for ADE20k and COCO, else 80k."""
    return 160_000 if dataset in _LONG_SCHEDULE else 80_000


@dataclass
class FinetuneSettings:
    """Settings of the protocol; defaults are Segmenter's published recipe."""

    decoder: str = option("mask", "Segmenter decoder", choices=tuple(DECODERS))
    iterations: int | None = option(
        None, "optimizer steps (none: 160k for ade20k and coco-*, 80k for the others)", minimum=1
    )
    lr: float = option(1e-3, "SGD base learning rate", minimum=0, exclusive_minimum=True)
    min_lr: float = option(1e-5, "learning rate at the end of the poly schedule", minimum=0)
    poly_power: float = option(0.9, "power of the poly schedule", minimum=0)
    momentum: float = option(0.9, "SGD momentum", minimum=0)
    weight_decay: float = option(0.0, "SGD weight decay", minimum=0)
    decoder_lr_scale: float = option(
        1.0, "decoder learning rate / --lr (1: Segmenter's single rate)", minimum=0, exclusive_minimum=True
    )
    layer_decay: float = option(
        1.0, "layer-wise LR decay: block i of L gets lr * decay^(L - i) (1: none)", minimum=0, maximum=1
    )
    freeze_blocks: int = option(
        0, "freeze the patch embedding and the first N blocks (N >= depth: the whole backbone)", minimum=0
    )
    drop_path: float = option(
        0.1, "stochastic depth of the backbone, rising to this over the blocks", minimum=0
    )
    decoder_layers: int = option(2, "transformer layers of the mask decoder", minimum=0)
    decoder_dropout: float = option(0.1, "dropout of the mask decoder", minimum=0, maximum=1)
    short_side: int | None = option(
        None,
        "short side of the images before random rescaling and at test time (none: the crop size)",
        minimum=1,
    )
    ratio_range: tuple[float, float] = option((0.5, 2.0), "random rescale ratio range", minimum=0)
    photometric: bool = option(True, "photometric distortion of the training crops")
    window_stride: int | None = option(
        None, "sliding-window stride at test time (none: the window)", minimum=1
    )
    test_scales: tuple[float, ...] = option(
        (1.0,), "test scales (x short side); several average softmax", minimum=0
    )
    test_flip: bool = option(False, "also average horizontally flipped predictions at test time")
    devices: int = option(1, "processes (GPUs, or CPU processes over gloo) of a DDP run", minimum=1)
    resume: str | None = option(
        None, "continue a run: auto (newest checkpoint in --out) or a checkpoint file"
    )
    overwrite: bool = option(False, "delete the checkpoints of an earlier run in --out and start again")
    ckpt_every: int = option(1000, "save a resumable checkpoint every N steps (and at the end)", minimum=1)
    keep_checkpoints: int = option(2, "step checkpoints kept (newest)", minimum=1)

    def check(self) -> None:
        """Cross-field checks."""
        low, high = self.ratio_range
        if not 0 < low <= high:
            raise ValueError(f"`--ratio-range` must be 0 < low <= high but is {low} {high}")
        if not self.test_scales or min(self.test_scales) <= 0:
            raise ValueError(f"`--test-scales` must be positive but is {list(self.test_scales)}")
        if self.drop_path >= 1:
            raise ValueError(f"`--drop-path` must be < 1 but is {self.drop_path}")


@dataclass
class FinetuneOutcome:
    """What the trainer hands back: the trained model (backbone + decoder, eval mode) and the run's facts."""

    model: torch.nn.Module
    info: dict[str, Any]


Finetuner = Callable[
    [torch.nn.Module, EvalData, FinetuneSettings, RunContext, dict[str, Any]], FinetuneOutcome
]
_FINETUNER: list[Finetuner] = []


def set_finetuner(finetuner: Finetuner) -> None:
    """Register the training function (called by `neco.training.finetune` on import)."""
    _FINETUNER[:] = [finetuner]


@register_protocol
class Finetune(Protocol):
    """Fine-tune the backbone end to end with a Segmenter decoder."""

    name = "finetune"
    summary = "end-to-end fine-tuning with a Segmenter decoder (linear or mask transformer), then mIoU"
    settings_class = FinetuneSettings
    needs_train = True
    input_size = 512

    def plan(self, data: EvalData, settings: FinetuneSettings, ctx: RunContext) -> dict[str, Any]:
        """The resolved recipe: every value the run uses (for the trainer and the result file)."""
        crop = ctx.input_size
        return {
            "iterations": settings.iterations or published_iterations(data.name),
            "batch_size": ctx.run.batch_size,
            "crop_size": crop,
            "short_side": settings.short_side or crop,
            "window": crop,
            "window_stride": settings.window_stride or crop,
        }

    def run(
        self, features: Features, data: EvalData, settings: FinetuneSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Train backbone + decoder on the training split, then score the validation split at full resolution."""
        backbone = getattr(features, "model", None)
        if backbone is None:
            raise ValueError(
                "the finetune protocol trains the backbone itself: pass `Features.of_model(model)` "
                "(features built from a function have no weights to train)"
            )
        if not _FINETUNER:
            raise RuntimeError(
                "the finetune protocol trains with Lightning: `import neco.training.finetune` first "
                "(`neco eval finetune` does)"
            )
        plan = self.plan(data, settings, ctx)
        with ctx.timer("train"):
            outcome = _FINETUNER[0](backbone, data, settings, ctx, plan)
        model = outcome.model.to(ctx.device).eval()
        val = data.val
        confusion = ConfusionMatrix(val.num_classes, val.ignore_index, device=ctx.device)
        keeper = ctx.keeper()
        with ctx.timer("eval"):
            for index in ctx.iterate(range(len(val)), "finetune: validation"):
                image, mask = val.load(index)
                probabilities = predict_probabilities(
                    model,
                    image,
                    mask.shape,
                    scale=plan["short_side"],
                    window=plan["window"],
                    stride=plan["window_stride"],
                    scales=settings.test_scales,
                    flip=settings.test_flip,
                    device=ctx.device,
                    precision=ctx.run.precision,
                )
                prediction = probabilities.argmax(0)  # (H, W)
                target = torch.from_numpy(mask).to(ctx.device)
                confusion.update(prediction[None], target[None])
                if keeper.count < keeper.limit:
                    self._keep(keeper, model, image, target, prediction, ctx)
        metrics = {**confusion.summary(val.class_names), "training": outcome.info}
        return ProtocolOutput(metrics=metrics, settings=plan, examples=keeper.examples())

    @staticmethod
    @torch.no_grad()
    def _keep(keeper: Any, model: Any, image: Any, target: Any, prediction: Any, ctx: RunContext) -> None:
        """A square copy of one validation item for the figures, with the fine-tuned backbone's patch grid."""
        size = ctx.input_size
        pixels = to_input(image, size)[None]
        tokens = model.backbone.forward_features(pixels.to(ctx.device))["x_norm_patchtokens"]
        grid = size // model.patch_size
        features = tokens.transpose(1, 2).reshape(1, -1, grid, grid).float()  # (1, D, h, w)
        keeper.offer(
            images=pixels,
            masks=resize_ids(target[None].cpu(), size),
            predictions=resize_ids(prediction[None].cpu(), size),
            features=features,
        )
