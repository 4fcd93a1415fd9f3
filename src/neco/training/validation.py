"""Optional periodic validation during training: k-means mIoU of teacher features on a VOC-format split."""

from __future__ import annotations

from typing import Any

import lightning as L

from neco.training.config import ValidationConfig
from neco.utils.logging import get_logger

__all__ = ["KMeansValidation"]


class KMeansValidation(L.Callback):
    """Every `every_steps` optimizer steps, cluster the teacher's patch features of a small VOC-format
    split (`max_images` images, K = `num_clusters`, one seed) and log the Hungarian-matched mIoU as
    `val/kmeans_miou`. Runs on rank 0; the other ranks wait.
    """

    def __init__(self, config: ValidationConfig) -> None:
        super().__init__()
        self.config = config
        self._val_set: Any = None

    def _dataset(self) -> Any:
        if self._val_set is None:
            from neco.data import build_segmentation_dataset

            dataset = build_segmentation_dataset("voc", self.config.root, self.config.split)
            if len(dataset) > self.config.max_images:
                dataset = dataset.subset(list(range(self.config.max_images)))
            self._val_set = dataset
        return self._val_set

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Open the split once at start-up so that a wrong folder fails before training."""
        if trainer.is_global_zero:
            self._dataset()

    def evaluate(self, pl_module: L.LightningModule) -> float:
        """Matched mIoU (percent) of K-means on the teacher's patch features."""
        from neco.evaluation.backbone import model_features_fn
        from neco.evaluation.overcluster import OverclusterConfig, run_overcluster

        teacher = pl_module.teacher
        was_training = teacher.training
        features = model_features_fn(teacher, device=pl_module.device)
        size = self.config.input_size - self.config.input_size % int(teacher.patch_size)
        settings = OverclusterConfig(
            input_size=size,
            ks=(self.config.num_clusters,),
            seeds=(0,),
            niter=20,
            nredo=1,
            pca_dim=min(50, teacher.embed_dim),
        )
        output = run_overcluster(
            features, self._dataset(), settings, patch_size=int(teacher.patch_size), progress=False
        )
        teacher.train(was_training)
        (metrics,) = output.result["metrics"].values()
        return float(metrics["miou_mean"])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Validate on schedule and log `val/kmeans_miou`."""
        if trainer.global_step % self.config.every_steps != 0:
            return
        if trainer.is_global_zero:
            miou = self.evaluate(pl_module)
            get_logger("neco.training").info(f"step {trainer.global_step}: k-means mIoU {miou:.2f}")
            for logger in trainer.loggers:
                logger.log_metrics({"val/kmeans_miou": miou}, step=trainer.global_step)
        trainer.strategy.barrier("neco-validation")
