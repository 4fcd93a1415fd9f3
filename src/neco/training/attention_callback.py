"""Optional periodic attention-map validation during training: Jaccard of the teacher's CLS attention.

Not wired into `TrainConfig`; attach it in Python, e.g.

    from neco.training.attention_callback import AttentionValidation, AttentionValidationConfig
    callback = AttentionValidation(AttentionValidationConfig(root="data/VOCdevkit/VOC2012", every_steps=500))
    result = neco.training.run.train(config, callbacks=[callback])
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L

from neco.training.validation import PeriodicValidation

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


class AttentionValidation(PeriodicValidation):
    """Every `every_steps` optimizer steps, log the teacher's head-merged and best-head attention Jaccard
    (`val/attention_jaccard`, `val/attention_jaccard_best_head`) on the first `max_images` images of a
    VOC-format split. Runs on rank 0; the other ranks wait. Registers are excluded from the attention.
    """

    def __init__(self, config: AttentionValidationConfig) -> None:
        super().__init__(config.dataset, config.root, config.split, config.max_images, config.every_steps)
        self.config = config

    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Head-merged and best-head Jaccard (percent) of the teacher's attention masks."""
        from neco.evaluation import EvalData, Features, evaluate
        from neco.evaluation.protocols.attention import MaskSettings

        teacher = pl_module.teacher
        patch = int(teacher.patch_size)
        settings = MaskSettings(
            mass=self.config.mass, sigma=self.config.sigma, min_component=self.config.min_component
        )
        output = evaluate(
            "attention",
            Features.of_model(teacher, pl_module.device),
            EvalData(val=self._dataset()),
            settings,
            input_size=self.config.input_size - self.config.input_size % patch,
            batch_size=self.config.batch_size,
            num_workers=0,
            num_figures=0,
            progress=False,
        )
        metrics = output.result["metrics"]
        return {
            "val/attention_jaccard": metrics["head_merged"]["jaccard"],
            "val/attention_jaccard_best_head": metrics["best_head"]["jaccard"],
        }
