"""Similarity between query vectors and reference vectors, per image, for the soft sort.

Shape legend: B = batch, Q = queries per image, K = references per image, C = channels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SIMILARITIES", "similarity"]


def _cosine(queries: Tensor, references: Tensor) -> Tensor:
    return torch.einsum("bqc,bkc->bqk", F.normalize(queries, dim=-1), F.normalize(references, dim=-1))


def _euclidean(queries: Tensor, references: Tensor) -> Tensor:
    # A distance, not a similarity: sorted ascending it ranks nearest first, and student and teacher use
    # the same convention, which is all the loss needs (as in the public code).
    return torch.cdist(queries, references, p=2.0)


SIMILARITIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"cosine": _cosine, "euclidean": _euclidean}


def similarity(queries: Tensor, references: Tensor, kind: str = "cosine") -> Tensor:
    """Scores of each query against each reference of the same image: (B, Q, C), (B, K, C) -> (B, Q, K).

    `kind`: "cosine" (similarity of the L2-normalised vectors) or "euclidean" (L2 distance).
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"`similarity` must be one of {sorted(SIMILARITIES)} but is {kind!r}")
    if queries.ndim != 3 or references.ndim != 3 or queries.shape[::2] != references.shape[::2]:
        raise ValueError(
            f"`queries` (B, Q, C) and `references` (B, K, C) must agree in B and C but have shapes "
            f"{tuple(queries.shape)} and {tuple(references.shape)}"
        )
    return SIMILARITIES[kind](queries, references)
