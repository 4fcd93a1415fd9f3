"""CLS-attention foreground masks for evaluation, and their Jaccard against GT foreground.

Masks come from `neco.method.masks.attention_foreground` (CLS row of the last block, register and
CLS columns dropped, blur, mass threshold) and may have their small connected components removed.
Two protocols:
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

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neco.evaluation.common import EvalOutput, Examples, check_divisible, iterate, make_loader
from neco.evaluation.transforms import EvalResize

__all__ = [
    "AttentionFn",
    "AttentionConfig",
    "model_attention_fn",
    "remove_small_components",
    "foreground_masks",
    "gt_foreground",
    "jaccard_counts",
    "upsample_masks",
    "run_attention",
]

AttentionFn = Callable[[torch.Tensor], torch.Tensor]

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class AttentionConfig:
    """Settings of the attention-map evaluation."""

    input_size: int = 448
    mass: float = 0.6
    sigma: float = 0.6
    min_component: int = 0
    batch_size: int = 16
    num_workers: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if int(self.input_size) < 1 or int(self.batch_size) < 1:
            raise ValueError(
                f"`input_size` and `batch_size` must be >= 1 but are {self.input_size}, {self.batch_size}"
            )
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"`mass` must be in (0, 1] but is {self.mass}")
        if self.sigma < 0:
            raise ValueError(f"`sigma` must be >= 0 but is {self.sigma}")
        if self.min_component < 0:
            raise ValueError(f"`min_component` must be >= 0 patches but is {self.min_component}")


def model_attention_fn(
    model: torch.nn.Module, device: torch.device | str = "cpu", precision: str = "fp32"
) -> AttentionFn:
    """An attention function images (B,3,H,W) -> last-block attention (B, heads, T, T) float32 on CPU."""
    if precision not in _PRECISIONS:
        raise ValueError(f"`precision` must be one of {sorted(_PRECISIONS)} but is {precision!r}")
    if not hasattr(model, "get_last_self_attention"):
        raise ValueError(f"`model` must have get_last_self_attention() but {type(model).__name__} has not")
    device = torch.device(device)
    model = model.to(device).eval()
    dtype = _PRECISIONS[precision]

    @torch.no_grad()
    def attention(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            attn = model.get_last_self_attention(images.to(device, non_blocking=True))
        return attn.float().cpu()

    return attention


def remove_small_components(masks: torch.Tensor, min_size: int) -> torch.Tensor:
    """Drop 8-connected foreground components smaller than `min_size` patches from bool masks (..., h, w)."""
    if min_size <= 1:
        return masks
    from scipy import ndimage

    flat = masks.reshape(-1, *masks.shape[-2:]).cpu().numpy()
    out = np.zeros_like(flat)
    structure = np.ones((3, 3), dtype=bool)
    for i, mask in enumerate(flat):
        labels, count = ndimage.label(mask, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False  # label 0 is the background of `ndimage.label`
        out[i] = keep[labels]
    return torch.from_numpy(out).reshape(masks.shape).to(masks.device)


def foreground_masks(
    attn: torch.Tensor,
    num_register_tokens: int,
    grid: tuple[int, int],
    *,
    mass: float = 0.6,
    sigma: float = 0.6,
    min_component: int = 0,
    per_head: bool = False,
) -> torch.Tensor:
    """Bool foreground masks (B, h, w), or (B, heads, h, w) with `per_head`, from (B, heads, T, T) attention."""
    from neco.method.masks import attention_foreground

    if per_head:
        heads = [
            attention_foreground(attn[:, i : i + 1], num_register_tokens, grid, mass=mass, sigma=sigma)
            for i in range(attn.shape[1])
        ]
        masks = torch.stack(heads, dim=1)  # (B, heads, h, w)
    else:
        masks = attention_foreground(attn, num_register_tokens, grid, mass=mass, sigma=sigma)  # (B, h, w)
    return remove_small_components(masks, min_component)


def gt_foreground(masks: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground, valid) bool maps of int masks: foreground = not 0 and not ignore; valid = not ignore."""
    valid = torch.ones_like(masks, dtype=torch.bool) if ignore_index is None else masks != ignore_index
    return (masks != 0) & valid, valid


def upsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling of bool masks (..., h, w) to (..., *size)."""
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="nearest-exact")[:, 0] > 0.5
    return out.reshape(*lead, *size)


def jaccard_counts(
    pred: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image intersection and union (B,) of bool maps (B, H, W), counting valid pixels only."""
    pred = pred & valid
    inter = (pred & fg).flatten(1).sum(1)
    union = (pred | fg).flatten(1).sum(1)
    return inter.to(torch.int64), union.to(torch.int64)


def _jaccard_summary(inter: np.ndarray, union: np.ndarray) -> dict[str, float]:
    per_image = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {
        "jaccard": 100.0 * float(per_image.mean()),
        "jaccard_global": 100.0 * float(inter.sum() / max(union.sum(), 1)),
    }


def run_attention(
    attention_fn: AttentionFn,
    val_set: Any,
    config: AttentionConfig | None = None,
    *,
    patch_size: int,
    num_register_tokens: int,
    progress: bool = True,
    num_examples: int = 4,
) -> EvalOutput:
    """Jaccard of thresholded CLS attention against GT foreground, head-merged and best-head."""
    config = config or AttentionConfig()
    config.validate()
    check_divisible(config.input_size, patch_size)
    if num_register_tokens < 0:
        raise ValueError(f"`num_register_tokens` must be >= 0 but is {num_register_tokens}")
    grid = (config.input_size // patch_size,) * 2
    size = (config.input_size,) * 2
    loader = make_loader(
        val_set,
        EvalResize(config.input_size),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        seed=0,
    )
    merged_i, merged_u, head_i, head_u = [], [], [], []
    kept: dict[str, list[torch.Tensor]] = {"images": [], "masks": [], "predictions": []}
    num_heads = None
    settings = {"mass": config.mass, "sigma": config.sigma, "min_component": config.min_component}
    for images, masks, _ in iterate(loader, progress, "attention"):
        attn = attention_fn(images).float().cpu()  # (B, heads, T, T)
        num_heads = attn.shape[1]
        fg, valid = gt_foreground(masks, val_set.ignore_index)
        merged = upsample_masks(foreground_masks(attn, num_register_tokens, grid, **settings), size)
        inter, union = jaccard_counts(merged, fg, valid)
        merged_i.append(inter)
        merged_u.append(union)
        heads = upsample_masks(
            foreground_masks(attn, num_register_tokens, grid, **settings, per_head=True), size
        )
        per_head = [jaccard_counts(heads[:, h], fg, valid) for h in range(num_heads)]
        head_i.append(torch.stack([p[0] for p in per_head], 1))  # (B, heads)
        head_u.append(torch.stack([p[1] for p in per_head], 1))
        if sum(x.shape[0] for x in kept["images"]) < num_examples:
            kept["images"].append(images[:num_examples])
            kept["masks"].append(torch.where(valid, fg.long(), 255)[:num_examples])
            kept["predictions"].append(merged.long()[:num_examples])
    if num_heads is None:
        raise ValueError("`val_set` must hold at least one image but is empty")
    merged_summary = _jaccard_summary(torch.cat(merged_i).numpy(), torch.cat(merged_u).numpy())
    inter_h, union_h = torch.cat(head_i).numpy(), torch.cat(head_u).numpy()
    heads_summary = [_jaccard_summary(inter_h[:, h], union_h[:, h]) for h in range(num_heads)]
    best = int(np.argmax([s["jaccard"] for s in heads_summary]))
    result = {
        "protocol": "attention",
        "settings": {
            **asdict(config),
            "grid": list(grid),
            "num_register_tokens": int(num_register_tokens),
            "num_heads": int(num_heads),
            "gt_foreground": "labels not 0 and not ignore; ignore pixels excluded",
            "evaluation_resolution": "input size (patch mask nearest-upsampled)",
            "jaccard": "mean over images of per-image Jaccard (empty/empty = 1); jaccard_global pools pixels",
        },
        "dataset": {"val": val_set.describe()},
        "metrics": {
            "head_merged": merged_summary,
            "best_head": {**heads_summary[best], "head": best},
            "per_head": heads_summary,
        },
    }
    examples = None
    if kept["images"]:
        examples = Examples(**{k: torch.cat(v)[:num_examples] for k, v in kept.items()})
    return EvalOutput(result=result, examples=examples)
