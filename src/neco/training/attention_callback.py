"""Optional periodic attention-map validation during training: Jaccard of the teacher's CLS attention.

Set `run.attention_validation.enabled=true` and `run.attention_validation.root=DIR` (a VOC-format
split; see `neco.training.config.AttentionValidationConfig`); `neco train` then attaches it.
"""

from __future__ import annotations

import lightning as L

from neco.training.config import AttentionValidationConfig
from neco.training.validation import PeriodicValidation

__all__ = ["AttentionValidationConfig", "AttentionValidation"]


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
