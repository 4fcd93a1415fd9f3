"""Jaccard of thresholded CLS-attention foreground masks against GT foreground (`blocks/masks.py`).

Two scores:
- head-merged: heads averaged before thresholding (one mask per image);
- best-head: each head thresholded on its own, the dataset Jaccard computed per head, the best head
  reported (as in the DINO attention evaluation).

GT foreground = every label that is neither 0 (background, VOC format) nor the ignore label;
ignore pixels are left out of both intersection and union. The patch-level mask is
nearest-upsampled to the input size, the GT resized (nearest) to the same size. The headline
`jaccard` is the mean over images of the per-image Jaccard (an image with empty prediction and
empty GT scores 1); `jaccard_global` pools the pixel counts of all images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neco.evaluation.blocks.loading import Examples
from neco.evaluation.blocks.masks import foreground_masks, gt_foreground, jaccard_counts, jaccard_summary
from neco.evaluation.blocks.transforms import resize_ids
from neco.evaluation.features import Features
from neco.evaluation.options import option
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol

__all__ = ["MaskSettings", "Attention"]

# VOC-format datasets: label 0 is background, which "foreground" needs.
VOC_FORMAT = ("voc", "scenes")


@dataclass
class MaskSettings:
    """How CLS attention becomes a foreground mask (shared with the unsupervised protocol)."""

    mass: float = option(
        0.6, "attention mass kept as foreground", minimum=0, exclusive_minimum=True, maximum=1
    )
    sigma: float = option(0.6, "Gaussian blur sigma in patches (0: none)", minimum=0)
    min_component: int = option(0, "drop foreground components smaller than this many patches", minimum=0)


@register_protocol
class Attention(Protocol):
    """Jaccard of thresholded CLS attention against GT foreground, head-merged and best head."""

    name = "attention"
    summary = "Jaccard of thresholded CLS attention vs GT foreground"
    settings_class = MaskSettings
    datasets = VOC_FORMAT
    input_size = 448
    needs_attention = True

    def headline(self, metrics: dict[str, Any]) -> tuple[str, float]:
        """Head-merged Jaccard."""
        return "head_merged jaccard", float(metrics["head_merged"]["jaccard"])

    def run(
        self, features: Features, data: EvalData, settings: MaskSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Per-image and pooled Jaccard of the head-merged mask and of every single head."""
        val = data.val
        grid = (ctx.input_size // features.patch_size,) * 2
        size = (ctx.input_size,) * 2
        options = {"mass": settings.mass, "sigma": settings.sigma, "min_component": settings.min_component}
        regs = features.num_register_tokens
        counts = []  # (intersection, union) per batch, (B, 1 + heads) each: head-merged mask, then every head
        keeper = ctx.keeper()
        for images, masks, _ in ctx.batches(val, "attention"):
            attn = features.attention(images)  # (B, heads, T, T)
            fg, valid = gt_foreground(masks, val.ignore_index)
            merged = resize_ids(foreground_masks(attn, regs, grid, **options), size)
            heads = resize_ids(foreground_masks(attn, regs, grid, **options, per_head=True), size)
            counts.append(jaccard_counts(torch.cat([merged[:, None], heads], 1), fg[:, None], valid[:, None]))
            keeper.offer(images=images, masks=torch.where(valid, fg.long(), 255), predictions=merged.long())
        inter, union = (torch.cat(parts).numpy() for parts in zip(*counts))
        merged_summary, *heads_summary = [jaccard_summary(i, u) for i, u in zip(inter.T, union.T)]
        best = int(np.argmax([s["jaccard"] for s in heads_summary]))
        metrics = {
            "head_merged": merged_summary,
            "best_head": {**heads_summary[best], "head": best},
            "per_head": heads_summary,
        }
        resolved = {"grid": list(grid), "num_register_tokens": regs, "num_heads": len(heads_summary)}
        return ProtocolOutput(metrics=metrics, settings=resolved, examples=keeper.examples())

    def figures(self, output: ProtocolOutput, features: Features, data: EvalData, out_dir: Any) -> list[Any]:
        """image | GT foreground | attention foreground panels."""
        from neco.viz import save_overlay_figure

        ex: Examples | None = output.examples
        if ex is None:
            return []
        path = out_dir / "attention_masks.png"
        return [
            save_overlay_figure(ex.images, ex.masks, ex.predictions, path, num_classes=2, ignore_index=255)
        ]
