"""Patch features of a backbone: `extract_features` for users, `Features` for the protocols.

`extract_features(model, images) -> (N, D, h, w)` computes dense patch-feature grids of images
(tensors, PIL images or uint8 arrays); `neco features` and the explorer call it. `Features` wraps a
frozen backbone (or, in tests, any function of images) behind what every protocol reads:
`features(images (B, 3, H, W)) -> (B, D, H/p, W/p)` float32 patch grids (final-LayerNorm patch
tokens, no CLS or registers), `features.attention(images) -> (B, heads, T, T)` and the shape
attributes the protocols need. Backbones are loaded and named by `neco.backbones.loading`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from neco.backbones.model import patch_grid
from neco.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from neco.utils.precision import autocast

__all__ = ["Features", "extract_features"]

ImagesFn = Callable[[torch.Tensor], torch.Tensor]


class Features:
    """Patch grids and attention of a frozen backbone, computed without gradients under `precision` autocast.

    Args:
        grid_fn: images (B, 3, H, W) on `device` -> patch grids (B, D, H/p, W/p).
        patch_size: pixels per patch side.
        attention_fn: images -> last-block attention (B, heads, T, T), or None when not available.
        num_register_tokens: register tokens between CLS and the patches (excluded from attention masks).
        device: where the images are sent.
        precision: fp32, bf16 or fp16 autocast.
        name: shown in error messages.
    """

    def __init__(
        self,
        grid_fn: ImagesFn,
        patch_size: int,
        *,
        attention_fn: ImagesFn | None = None,
        num_register_tokens: int = 0,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        name: str = "features",
    ) -> None:
        if int(patch_size) < 1:
            raise ValueError(f"`patch_size` must be >= 1 but is {patch_size}")
        if int(num_register_tokens) < 0:
            raise ValueError(f"`num_register_tokens` must be >= 0 but is {num_register_tokens}")
        autocast(device, precision)  # validates the precision name
        self.grid_fn, self.attention_fn = grid_fn, attention_fn
        self.patch_size, self.num_register_tokens = int(patch_size), int(num_register_tokens)
        self.device, self.precision, self.name = torch.device(device), precision, name
        self.model: torch.nn.Module | None = None

    @classmethod
    def of_model(
        cls, model: torch.nn.Module, device: torch.device | str = "cpu", precision: str = "fp32"
    ) -> Features:
        """Features of a neco backbone (anything with `forward_features`, `patch_size`), moved to `device`."""
        model = model.to(device).eval()
        features = cls(
            lambda images: patch_grid(model, images),
            int(model.patch_size),
            attention_fn=getattr(model, "get_last_self_attention", None),
            num_register_tokens=int(getattr(model, "num_register_tokens", 0)),
            device=device,
            precision=precision,
            name=str(getattr(getattr(model, "config", None), "name", type(model).__name__)),
        )
        features.model = model  # the module itself, for the protocols that train it (finetune)
        return features

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Patch grids (B, D, H/p, W/p) float32 of normalised images (B, 3, H, W)."""
        return self._forward(self.grid_fn, images).float()

    def require_attention(self) -> None:
        """Raise a ValueError naming the backbone when it exposes no last-block attention."""
        if self.attention_fn is None:
            raise ValueError(
                f"backbone {self.name} exposes no last-block attention (get_last_self_attention): "
                "the attention-based protocols (attention, unsupervised) cannot run on it"
            )

    def attention(self, images: torch.Tensor) -> torch.Tensor:
        """Last-block attention probabilities (B, heads, T, T) float32 on the CPU; tokens [CLS, registers, patches]."""
        self.require_attention()
        return self._forward(self.attention_fn, images).float().cpu()

    @torch.no_grad()
    def _forward(self, fn: ImagesFn, images: torch.Tensor) -> torch.Tensor:
        """`fn` of the images sent to the device, without gradients, under the `precision` autocast."""
        with autocast(self.device, self.precision):
            return fn(images.to(self.device, non_blocking=True))


def _pixels(images: Any) -> torch.Tensor | None:
    """PIL images / uint8 arrays (H, W, 3) or (N, H, W, 3) as one uint8 (N, 3, H, W) tensor; None for others."""
    items = images if isinstance(images, list | tuple) else [images]
    if not items or not all(isinstance(i, Image.Image | np.ndarray) for i in items):
        return None
    arrays = [np.asarray(i.convert("RGB")) if isinstance(i, Image.Image) else i for i in items]
    arrays = [a[None] if a.ndim == 3 else a for a in arrays]
    if any(a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 for a in arrays):
        raise TypeError(
            "`images` arrays must be uint8 RGB, (H, W, 3) or (N, H, W, 3), but got "
            f"{sorted({f'{a.dtype} {a.shape}' for a in arrays})}"
        )
    if len({a.shape[1:3] for a in arrays}) > 1:
        raise ValueError(
            f"all images must have one size but have {sorted({a.shape[1:3] for a in arrays})}; resize them"
        )
    return torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2)


def _batches(images: Any, batch_size: int, model: nn.Module) -> tuple[Iterable[torch.Tensor], int | None]:
    pixels = _pixels(images)
    if pixels is not None:
        # normalised batch by batch: a float copy of every image at once would take 4x the uint8 memory
        config = getattr(model, "config", None)
        mean = torch.tensor(getattr(config, "mean", IMAGENET_MEAN)).view(1, 3, 1, 1)
        std = torch.tensor(getattr(config, "std", IMAGENET_STD)).view(1, 3, 1, 1)
        batches = ((batch.contiguous().float() / 255 - mean) / std for batch in pixels.split(batch_size))
        return batches, -(-len(pixels) // batch_size)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be a (N, 3, H, W) tensor but has shape {tuple(images.shape)}")
        return images.split(batch_size), -(-images.shape[0] // batch_size)
    if not isinstance(images, Iterable) or isinstance(images, str | bytes):
        raise TypeError(
            f"`images` must be a normalised (N, 3, H, W) float tensor, an iterable of such batches, PIL "
            f"images or uint8 RGB arrays, but is {type(images).__name__}"
        )
    total = len(images) if hasattr(images, "__len__") else None
    return images, total


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Patch-feature grids (N, D, h, w), float32 on CPU, from final-LayerNorm patch tokens (no CLS/registers).

    Args:
        model: a neco `VisionTransformer` (anything with `forward_features` and `patch_size`); run in
            eval mode without gradients, its training flag restored afterwards.
        images: a normalised float tensor (N, 3, H, W), or an iterable of such batches (all the same H, W),
            or PIL images / uint8 RGB arrays (H, W, 3) / (N, H, W, 3) of one size, normalised with the
            backbone's own mean and std (no resizing).
        batch_size: images per forward pass when `images` is a tensor, PIL images or arrays.
        device: where to run; the model's device when None.
        progress: show a tqdm progress bar.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1 but is {batch_size}")
    if next(model.parameters(), None) is None:
        raise ValueError("`model` has no parameters")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    first = next(model.parameters())
    original_device, dtype = first.device, first.dtype
    model.to(device)
    batches, total = _batches(images, batch_size, model)
    grids = []
    try:
        for batch in tqdm(batches, total=total, desc="features", disable=not progress, leave=False):
            if batch.ndim != 4 or batch.shape[1] != 3:
                raise ValueError(
                    f"each batch of `images` must be (B, 3, H, W) but one has shape {tuple(batch.shape)}"
                )
            grid = patch_grid(model, batch.to(device=device, dtype=dtype, non_blocking=True))
            grids.append(grid.float().cpu())
    finally:
        model.train(was_training)
        model.to(original_device)
    if not grids:
        raise ValueError("`images` holds no image")
    shapes = {tuple(g.shape[1:]) for g in grids}
    if len(shapes) > 1:
        raise ValueError(
            f"all batches must give the same grid but gave {sorted(shapes)}; resize images to one size"
        )
    return torch.cat(grids)
