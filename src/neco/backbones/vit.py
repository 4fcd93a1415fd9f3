"""A ViT numerically identical to the official DINOv2 (and DINO v1) models, with fused attention.

Shapes: B = batch, T = tokens (1 + R + h*w), R = register tokens, D = embed dim, p = patch size,
(h, w) = (H // p, W // p) the patch grid (the patch conv drops the remainder, like the official model).
Parameter names are the official DINOv2 ones, so official state dicts load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from neco.backbones.pos_embed import interpolate_pos_embed
from neco.backbones.registry import BackboneConfig

__all__ = ["VisionTransformer", "Attention", "Block", "LayerScale", "Mlp", "SwiGLUFFN", "PatchEmbed"]


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches through a strided conv: (B, 3, H, W) -> (B, h*w, D)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the patches of `x`."""
        x = self.proj(x)  # (B, D, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, h*w, D)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and `F.scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"`embed_dim` must be divisible by `num_heads` ({num_heads}) but is {dim}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, T, D/heads)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens of `x` (B, T, D)."""
        batch, tokens, dim = x.shape
        q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, D/heads)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)  # (B, T, D)
        return self.proj(x)

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax attention matrix (B, heads, T, T) of `x` (B, T, D)."""
        q, k, _ = self._qkv(x)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, T, T)
        return logits.softmax(dim=-1)


class LayerScale(nn.Module):
    """Per-channel residual scaling `x * gamma` (DINOv2)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale `x` per channel."""
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 - GELU - fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise."""
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """The official ViT-g FFN: `w3(silu(x1) * x2)` with `[x1, x2] = w12(x)` and a hidden size rounded to 8."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        # Same rounding as the official SwiGLUFFNFused: 2/3 of the MLP width, up to a multiple of 8.
        hidden = (int(hidden_dim * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated FFN token-wise."""
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


_FFN = {"mlp": Mlp, "swiglu": SwiGLUFFN}


class Block(nn.Module):
    """Pre-norm transformer block; LayerScale when `layerscale_init` is set (DINOv2), none for DINO v1."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        ffn: str = "mlp",
        layerscale_init: float | None = 1.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if ffn not in _FFN:
            raise ValueError(f"`ffn` must be one of {sorted(_FFN)} but is {ffn!r}")
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _FFN[ffn](dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention and FFN residual updates of `x` (B, T, D)."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """DINOv2 / DINO ViT backbone; token order [CLS, registers, patches]; registers carry no position embedding."""

    def __init__(self, config: BackboneConfig, *, init: bool = True) -> None:
        super().__init__()
        if config.drop_path_rate < 0 or config.drop_path_rate >= 1:
            raise ValueError(f"`drop_path_rate` must be in [0, 1) but is {config.drop_path_rate}")
        if config.num_register_tokens < 0:
            raise ValueError(f"`num_register_tokens` must be >= 0 but is {config.num_register_tokens}")
        self.config = config
        self.patch_size = config.patch_size
        self.embed_dim = self.num_features = config.embed_dim
        self.num_heads = config.num_heads
        self.num_register_tokens = config.num_register_tokens
        self.interpolate_offset = config.interpolate_offset
        self.interpolate_antialias = config.interpolate_antialias
        dim = config.embed_dim

        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid**2, dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
            if config.num_register_tokens
            else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, dim)) if config.mask_token else None
        # Stochastic depth grows linearly with depth, as in the official model (drop_path_uniform=False).
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_heads,
                mlp_ratio=config.mlp_ratio,
                ffn=config.ffn,
                layerscale_init=config.layerscale_init,
                drop_path=rate,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()
        if init:  # skipped when a checkpoint overwrites every tensor anyway (saves seconds for big models)
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: trunc-normal(0.02) weights and position embedding, tiny CLS/registers."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_pos_grid(self, grid: int) -> None:
        """Resize the (untrained) position-embedding parameter to a `grid` x `grid` pretrained grid."""
        if grid != round((self.pos_embed.shape[1] - 1) ** 0.5):
            self.pos_embed = nn.Parameter(self.pos_embed.new_zeros(1, 1 + grid * grid, self.embed_dim))

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """The position embedding (1, 1 + h*w, D) for an input of `height` x `width` pixels."""
        return interpolate_pos_embed(
            self.pos_embed,
            height,
            width,
            self.patch_size,
            offset=self.interpolate_offset,
            antialias=self.interpolate_antialias,
        )

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Patch-embed `x` (B, 3, H, W), add CLS and position embeddings, insert registers: (B, T, D)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"input must be (B, 3, H, W) but is {tuple(x.shape)}")
        if x.shape[2] < self.patch_size or x.shape[3] < self.patch_size:
            raise ValueError(
                f"input H and W must be >= patch size {self.patch_size} but are {tuple(x.shape[2:])}"
            )
        height, width = x.shape[2], x.shape[3]
        tokens = self.patch_embed(x)  # (B, h*w, D)
        if masks is not None:
            if self.mask_token is None:
                raise ValueError(f"`masks` need a mask token, which {self.config.name} does not have")
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # (B, 1+h*w, D)
        tokens = tokens + self.interpolate_pos_encoding(height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)  # (B, 1+R+h*w, D)
        return tokens

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Final-LayerNorm CLS (B, D), registers (B, R, D), patches (B, h*w, D) and pre-norm tokens (B, T, D)."""
        tokens = self.prepare_tokens(x, masks)
        for block in self.blocks:
            tokens = block(tokens)
        normed = self.norm(tokens)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1:first_patch],
            "x_norm_patchtokens": normed[:, first_patch:],
            "x_prenorm": tokens,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final-LayerNorm CLS token (B, D), like the official hub model."""
        return self.head(self.forward_features(x)["x_norm_clstoken"])

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (or of the blocks listed in `n`), like the official model.

        Returns a tuple of patch tokens (B, h*w, D) (or (B, D, h, w) with `reshape`), or of
        (patch tokens, CLS (B, D)) pairs with `return_class_token`.
        """
        depth = len(self.blocks)
        take = list(range(depth - n, depth)) if isinstance(n, int) else list(n)
        if not take or any(i < 0 or i >= depth for i in take):
            raise ValueError(f"`n` must select blocks in [0, {depth}) but selects {take}")
        tokens = self.prepare_tokens(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in take:
                outputs.append(tokens)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        outputs = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            batch, grid_h, grid_w = x.shape[0], x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
            outputs = [
                out.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)
                for out in outputs
            ]
        if return_class_token:
            return tuple(zip(outputs, class_tokens))
        return tuple(outputs)

    def get_last_self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities (B, heads, T, T) of the last block; token order [CLS, registers, patches]."""
        tokens = self.prepare_tokens(x)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        return self.blocks[-1].attn.attention_probs(self.blocks[-1].norm1(tokens))

    def extra_repr(self) -> str:
        """Name and the main sizes in `print(model)`."""
        return (
            f"name={self.config.name}, patch_size={self.patch_size}, embed_dim={self.embed_dim}, "
            f"depth={len(self.blocks)}, registers={self.num_register_tokens}"
        )
