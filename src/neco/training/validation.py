"""Optional periodic validation during training: k-means mIoU of teacher features on a VOC-format split.

`PeriodicValidation` is the shared schedule (rank 0 evaluates the teacher every `every_steps`
optimizer steps on the first `max_images` images of a split, logs, the other ranks wait);
`KMeansValidation` and `neco.training.attention_callback.AttentionValidation` fill in `evaluate`.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from neco.training.config import ValidationConfig
from neco.utils.logging import get_logger

__all__ = ["KMeansValidation", "PeriodicValidation"]


class PeriodicValidation(L.Callback):
    """Evaluate the teacher every `every_steps` optimizer steps on rank 0 and log what `evaluate` returns."""

    def __init__(self, dataset: str, root: str, split: str, max_images: int, every_steps: int) -> None:
        super().__init__()
        self.dataset_name, self.root, self.split = dataset, root, split
        self.max_images, self.every_steps = max_images, every_steps
        self._val_set: Any = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def _dataset(self) -> Any:
        if self._val_set is None:
            from neco.data import build_segmentation_dataset

            dataset = build_segmentation_dataset(self.dataset_name, self.root, self.split)
            if len(dataset) > self.max_images:
                dataset = dataset.subset(list(range(self.max_images)))
            self._val_set = dataset
        return self._val_set

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Open the split once at start-up so that a wrong folder fails before training."""
        if trainer.is_global_zero:
            self._dataset()

    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Metric name -> value for the current teacher (subclasses)."""
        raise NotImplementedError

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Validate on schedule and log the metrics."""
        if trainer.global_step % self.every_steps != 0:
            return
        if trainer.is_global_zero:
            teacher = pl_module.teacher
            was_training = teacher.training
            try:
                values = self.evaluate(pl_module)
            finally:
                teacher.train(was_training)
            self.history.append((int(trainer.global_step), values))
            shown = ", ".join(f"{name} {value:.2f}" for name, value in values.items())
            get_logger("neco.training").info(f"step {trainer.global_step}: {shown}")
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
        trainer.strategy.barrier(f"neco-{type(self).__name__}")


class KMeansValidation(PeriodicValidation):
    """Every `every_steps` optimizer steps, cluster the teacher's patch features of a small VOC-format
    split (`max_images` images, K = `num_clusters`, one seed) and log the Hungarian-matched mIoU as
    `val/kmeans_miou`. Runs on rank 0; the other ranks wait.
    """

    def __init__(self, config: ValidationConfig) -> None:
        super().__init__("voc", str(config.root), config.split, config.max_images, config.every_steps)
        self.config = config

    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Matched mIoU (percent) of K-means on the teacher's patch features."""
        from neco.evaluation import EvalData, Features, evaluate
        from neco.evaluation.protocols.overcluster import OverclusterSettings

        teacher = pl_module.teacher
        settings = OverclusterSettings(
            ks=(self.config.num_clusters,), num_seeds=1, niter=20, nredo=1, pca_dim=min(50, teacher.embed_dim)
        )
        output = evaluate(
            "overcluster",
            Features.of_model(teacher, pl_module.device),
            EvalData(val=self._dataset()),
            settings,
            input_size=self.config.input_size - self.config.input_size % int(teacher.patch_size),
            seed=0,
            num_workers=0,
            num_figures=0,
            progress=False,
        )
        (metrics,) = output.result["metrics"].values()
        return {"val/kmeans_miou": float(metrics["miou_mean"])}
