"""What every protocol reads from a backbone: patch-feature grids and last-block attention.

`Features` wraps a frozen backbone (or, in tests, any function of images) behind one interface:
`features(images (B, 3, H, W)) -> (B, D, H/p, W/p)` float32 patch grids (final-LayerNorm patch
tokens, no CLS or registers), `features.attention(images) -> (B, heads, T, T)` and the shape
attributes the protocols need. Backbones are loaded and named by `neco.backbones.loading`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from neco.backbones.model import patch_grid
from neco.utils.precision import autocast

__all__ = ["Features"]

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
