"""Optional periodic attention-map validation during training: Jaccard of the teacher's CLS attention.

Not wired into `TrainConfig`; attach it in Python, e.g.

    from neco.training.attention_callback import AttentionValidation, AttentionValidationConfig
    callback = AttentionValidation(AttentionValidationConfig(root="data/VOCdevkit/VOC2012", every_steps=500))
    trainer = build_trainer(config, out_dir, [checkpointer, callback])  # or trainer.callbacks.append(callback)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L

from neco.utils.logging import get_logger

__all__ = ["AttentionValidationConfig", "AttentionValidation"]

_DATASETS = {"voc": "Pascal VOC 2012 folder", "scenes": "a `neco make-scenes` folder"}


@dataclass(frozen=True)
class AttentionValidationConfig:
    """Where and how often to score the teacher's attention masks (VOC-format split, background = 0)."""

    root: str
    dataset: str = "voc"
    split: str = "val"
    every_steps: int = 1000
    max_images: int = 100
    input_size: int = 448
    mass: float = 0.6
    sigma: float = 0.6
    min_component: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError(f"`root` must be a VOC-format folder but is {self.root!r}")
        if self.dataset not in _DATASETS:
            raise ValueError(f"`dataset` must be one of {sorted(_DATASETS)} but is {self.dataset!r}")
        for name in ("every_steps", "max_images", "input_size", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {getattr(self, name)}")
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"`mass` must be in (0, 1] but is {self.mass}")
        if self.sigma < 0 or self.min_component < 0:
            raise ValueError(
                f"`sigma` and `min_component` must be >= 0 but are {self.sigma}, {self.min_component}"
            )


class AttentionValidation(L.Callback):
    """Every `every_steps` optimizer steps, log the teacher's head-merged and best-head attention Jaccard
    (`val/attention_jaccard`, `val/attention_jaccard_best_head`) on the first `max_images` images of a
    VOC-format split. Runs on rank 0; the other ranks wait. Registers are excluded from the attention.
    """

    def __init__(self, config: AttentionValidationConfig) -> None:
        super().__init__()
        self.config = config
        self._val_set: Any = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def _dataset(self) -> Any:
        if self._val_set is None:
            from neco.data import build_segmentation_dataset

            dataset = build_segmentation_dataset(self.config.dataset, self.config.root, self.config.split)
            if len(dataset) > self.config.max_images:
                dataset = dataset.subset(list(range(self.config.max_images)))
            self._val_set = dataset
        return self._val_set

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Open the split once at start-up so that a wrong folder fails before training."""
        if trainer.is_global_zero:
            self._dataset()

    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Head-merged and best-head Jaccard (percent) of the teacher's attention masks."""
        from neco.evaluation.attention import AttentionConfig, model_attention_fn, run_attention

        teacher = pl_module.teacher
        was_training = teacher.training
        patch = int(teacher.patch_size)
        settings = AttentionConfig(
            input_size=self.config.input_size - self.config.input_size % patch,
            mass=self.config.mass,
            sigma=self.config.sigma,
            min_component=self.config.min_component,
            batch_size=self.config.batch_size,
        )
        try:
            output = run_attention(
                model_attention_fn(teacher, pl_module.device),
                self._dataset(),
                settings,
                patch_size=patch,
                num_register_tokens=int(getattr(teacher, "num_register_tokens", 0)),
                progress=False,
                num_examples=0,
            )
        finally:
            teacher.train(was_training)
        metrics = output.result["metrics"]
        return {
            "val/attention_jaccard": metrics["head_merged"]["jaccard"],
            "val/attention_jaccard_best_head": metrics["best_head"]["jaccard"],
        }

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Validate on schedule and log the two Jaccards."""
        if trainer.global_step % self.config.every_steps != 0:
            return
        if trainer.is_global_zero:
            values = self.evaluate(pl_module)
            self.history.append((int(trainer.global_step), values))
            get_logger("neco.training").info(
                f"step {trainer.global_step}: attention Jaccard {values['val/attention_jaccard']:.2f} "
                f"(best head {values['val/attention_jaccard_best_head']:.2f})"
            )
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
        trainer.strategy.barrier("neco-attention-validation")
