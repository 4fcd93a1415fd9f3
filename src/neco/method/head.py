"""The NeCo projection head applied to every patch token (used by the loss only)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ProjectionHead", "tokens_to_grid"]


class ProjectionHead(nn.Module):
    """`Linear(D, 2048) - GELU - Linear(2048, 2048) - GELU - Linear(2048, 256)` then L2 normalisation.

    Init: trunc-normal std 0.02 weights, zero biases. Input (..., D) -> output (..., out_dim) unit vectors.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 256) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {value}")
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Trunc-normal (std 0.02) weights and zero biases."""
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens -> (B, N, out_dim) L2-normalised projections."""
        if tokens.shape[-1] != self.in_dim:
            raise ValueError(
                f"`tokens` must end in in_dim={self.in_dim} channels but has shape {tuple(tokens.shape)}"
            )
        return F.normalize(self.mlp(tokens), dim=-1)


def tokens_to_grid(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, h*w, C) row-major patch tokens -> (B, C, h, w) grid."""
    if tokens.ndim != 3 or tokens.shape[1] != height * width:
        raise ValueError(
            f"`tokens` must be (B, {height}*{width}, C) for a {height}x{width} grid but has shape {tuple(tokens.shape)}"
        )
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)  # (B, C, h, w)
