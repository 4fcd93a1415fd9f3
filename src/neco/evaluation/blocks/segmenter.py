"""Segmenter's decoders (Strudel et al., ICCV 2021, arXiv 2105.05633) and the end-to-end model.

`LinearDecoder` is a linear layer on the patch tokens; `MaskTransformer` joins learnable class
embeddings to the projected patch tokens, runs `num_layers` pre-norm transformer layers over both,
and scores every patch against every class as the cosine of their projections, then normalises
the (patch, class) scores with a LayerNorm over the classes. `SegmenterModel` puts either one on a
backbone's final-LayerNorm patch tokens and upsamples the patch logits bilinearly to the image.

Shapes: B = batch, N = h * w patch tokens, D = backbone width, E = decoder width, C = classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DECODERS", "LinearDecoder", "MaskTransformer", "SegmenterModel", "build_decoder", "set_drop_path"]

DECODERS: dict[str, str] = {
    "linear": "Segmenter's linear decoder: one linear layer on the patch tokens",
    "mask": "Segmenter's mask transformer: class embeddings, 2 transformer layers, patch-class cosines",
}


class LinearDecoder(nn.Module):
    """Patch tokens (B, N, D) -> class logits (B, C, h, w) by one linear layer."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1 but is {num_classes}")
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Logits (B, C, h, w) of patch tokens (B, h*w, D)."""
        _check_tokens(tokens, grid)
        logits = self.head(tokens)  # (B, N, C)
        return logits.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)  # (B, C, h, w)


class MaskTransformer(nn.Module):
    """Segmenter's mask transformer decoder.

    Args:
        dim: backbone width D.
        num_classes: C.
        num_layers: transformer layers (2 in Segmenter's configs).
        width: decoder width E (Segmenter: the backbone's width).
        num_heads: attention heads (Segmenter: E // 64; at least 1 here so tiny test models work).
        dropout: dropout inside the layers (0.1 in Segmenter's configs).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        *,
        num_layers: int = 2,
        width: int | None = None,
        num_heads: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        width = int(width or dim)
        num_heads = int(num_heads or max(1, width // 64))
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1 but is {num_classes}")
        if num_layers < 0:
            raise ValueError(f"`num_layers` must be >= 0 but is {num_layers}")
        if width % num_heads:
            raise ValueError(
                f"the decoder width {width} must be a multiple of `num_heads` but heads is {num_heads}"
            )
        self.num_classes, self.width = num_classes, width
        self.proj_dec = nn.Linear(dim, width)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, num_heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(width)
        scale = width**-0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(width, width))
        self.proj_classes = nn.Parameter(scale * torch.randn(width, width))
        self.mask_norm = nn.LayerNorm(num_classes)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)
        nn.init.trunc_normal_(self.proj_dec.weight, std=0.02)
        nn.init.zeros_(self.proj_dec.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay (the class embeddings)."""
        return {"cls_emb"}

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Mask logits (B, C, h, w) of patch tokens (B, h*w, D)."""
        _check_tokens(tokens, grid)
        batch, count = tokens.shape[:2]
        x = torch.cat([self.proj_dec(tokens), self.cls_emb.expand(batch, -1, -1)], dim=1)  # (B, N + C, E)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, :count] @ self.proj_patch, dim=-1)  # (B, N, E)
        classes = F.normalize(x[:, count:] @ self.proj_classes, dim=-1)  # (B, C, E)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, N, C)
        return masks.transpose(1, 2).reshape(batch, self.num_classes, *grid)  # (B, C, h, w)


def _check_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> None:
    if tokens.ndim != 3 or tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(
            f"`tokens` must be (B, {grid[0] * grid[1]}, D) for a {grid} grid but is {tuple(tokens.shape)}"
        )


def build_decoder(
    name: str, dim: int, num_classes: int, *, num_layers: int = 2, dropout: float = 0.1
) -> nn.Module:
    """The decoder `name` (a key of DECODERS) for a backbone of width `dim`."""
    if name == "linear":
        return LinearDecoder(dim, num_classes)
    if name == "mask":
        return MaskTransformer(dim, num_classes, num_layers=num_layers, dropout=dropout)
    raise ValueError(f"`decoder` must be one of {sorted(DECODERS)} but is {name!r}")


def set_drop_path(backbone: nn.Module, rate: float) -> int:
    """Stochastic depth rising linearly from 0 to `rate` over the blocks; returns the blocks changed.

    Works on neco's ViT (`block.drop_path`) and timm's (`block.drop_path1` / `drop_path2`).
    """
    from timm.layers import DropPath

    if not 0.0 <= rate < 1.0:
        raise ValueError(f"`drop_path` must be in [0, 1) but is {rate}")
    blocks = list(getattr(backbone, "blocks", []))
    changed = 0
    for block, value in zip(blocks, torch.linspace(0, rate, max(len(blocks), 1)).tolist()):
        module = DropPath(value) if value > 0 else nn.Identity()
        names = [n for n in ("drop_path", "drop_path1", "drop_path2") if hasattr(block, n)]
        for name in names:
            setattr(block, name, module)
        changed += bool(names)
    return changed


class SegmenterModel(nn.Module):
    """A backbone and a decoder: images (B, 3, H, W) -> logits (B, C, H, W), H and W multiples of the patch."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.backbone, self.decoder = backbone, decoder
        self.patch_size = int(backbone.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits at the image resolution."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} must be a multiple of the patch size {self.patch_size}"
            )
        tokens = self.backbone.forward_features(images)["x_norm_patchtokens"]  # (B, N, D)
        logits = self.decoder(tokens, (height // self.patch_size, width // self.patch_size))  # (B, C, h, w)
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
