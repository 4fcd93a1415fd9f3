"""Talk2DINO's text-to-patch alignment (Barsellotti et al., arXiv 2411.19331), as plain torch.

A small mapping psi sends a frozen text encoder's embedding t (E) into a frozen ViT's patch space (D):
psi(t) = W2 tanh(W1 t + b1) + b2. Training pairs an image with its caption: for every head h of the
backbone's last block, the CLS token's attention over the patches weights an average of the patch
tokens, v_h = sum_n a_hn x_n (a renormalised over the patches only); an image-caption pair scores the
best head, s(i, j) = max_h cos(v_ih, psi(t_j)), and a symmetric InfoNCE over the batch with a learned
logit scale (initialised at 1 / 0.07) pulls matching pairs together. At test time every patch is
compared with the mapped class prompts (cosine); `clean_background` adds Talk2DINO's attention-based
background cleaning; a background class is thresholded by the protocol (`neco eval openvocab`).

Shapes: B batch, H heads, N patches, D backbone dim, E text dim, C classes, h x w patch grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PROMPT_TEMPLATES",
    "TextToPatchMapping",
    "HeadSelectInfoNCE",
    "cls_patch_attention",
    "head_pooled_embeddings",
    "pair_similarity",
    "clean_background",
    "segment_scores",
    "prompt_texts",
]

# Prompt ensembles: "subset" is the 7-template ImageNet subset of CLIP's prompt engineering that the
# GroupViT / TCL / FreeDA evaluation code (which Talk2DINO's evaluation adapts) names `subset`;
# "simple" is the single CLIP prompt. These are data (prompt strings), averaged per class.
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "subset": (
        "itap of a {}.",
        "a bad photo of a {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ),
    "simple": ("a photo of a {}.",),
    "identity": ("{}",),
}


def prompt_texts(class_name: str, templates: str) -> list[str]:
    """The prompts of one class name for the template set `templates` (underscores and hyphens read as spaces)."""
    if templates not in PROMPT_TEMPLATES:
        raise ValueError(f"`templates` must be one of {sorted(PROMPT_TEMPLATES)} but is {templates!r}")
    name = class_name.replace("_", " ").replace("-", " ")
    return [template.format(name) for template in PROMPT_TEMPLATES[templates]]


class TextToPatchMapping(nn.Module):
    """psi(t) = W2 tanh(W1 t + b1) + b2: text embeddings (..., E) -> backbone patch space (..., D).

    Args:
        text_dim: E, the text encoder's embedding size.
        patch_dim: D, the backbone's patch-token size.
        hidden_dim: width of the tanh layer (None: D).
    """

    def __init__(self, text_dim: int, patch_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = patch_dim if hidden_dim is None else hidden_dim
        for name, value in (("text_dim", text_dim), ("patch_dim", patch_dim), ("hidden_dim", hidden_dim)):
            if int(value) < 1:
                raise ValueError(f"`{name}` must be >= 1 but is {value}")
        self.text_dim, self.patch_dim, self.hidden_dim = int(text_dim), int(patch_dim), int(hidden_dim)
        self.inner = nn.Linear(self.text_dim, self.hidden_dim)
        self.outer = nn.Linear(self.hidden_dim, self.patch_dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Map text embeddings (..., E) to (..., D)."""
        if text.shape[-1] != self.text_dim:
            raise ValueError(f"text embeddings must end in {self.text_dim} but are {tuple(text.shape)}")
        return self.outer(torch.tanh(self.inner(text)))


def cls_patch_attention(attention: torch.Tensor, num_register_tokens: int) -> torch.Tensor:
    """The CLS row of last-block attention (B, H, T, T), restricted to the patches and renormalised: (B, H, N).

    Renormalising softmax probabilities over a subset equals a softmax of the logits over that subset,
    so this is the per-head softmax over patch tokens only.
    """
    if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"`attention` must be (B, heads, T, T) but is {tuple(attention.shape)}")
    rows = attention[:, :, 0, 1 + int(num_register_tokens) :].float()  # (B, H, N)
    return rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)


def head_pooled_embeddings(patches: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-head attention-weighted averages of the patch tokens: patches (B, N, D), weights (B, H, N) -> (B, H, D)."""
    if patches.ndim != 3 or weights.ndim != 3 or patches.shape[:2] != (weights.shape[0], weights.shape[2]):
        raise ValueError(
            f"`patches` (B, N, D) and `weights` (B, H, N) must agree but are {tuple(patches.shape)} "
            f"and {tuple(weights.shape)}"
        )
    return torch.einsum("bhn,bnd->bhd", weights, patches.float())  # (B, H, D)


def pair_similarity(pooled: torch.Tensor, mapped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s(i, j) = max_h cos(pooled[i, h], mapped[j]) (B_img, B_txt) and the argmax head (B_img, B_txt)."""
    cosine = torch.einsum(
        "ihd,jd->ijh", F.normalize(pooled.float(), dim=-1), F.normalize(mapped.float(), dim=-1)
    )  # (B, B, H)
    return cosine.max(dim=-1)


class HeadSelectInfoNCE(nn.Module):
    """Symmetric InfoNCE over image-caption pairs scored by their best head, with a learned logit scale.

    Args:
        init_temperature: the logit scale starts at 1 / init_temperature (0.07 in Talk2DINO).
        max_logit_scale: the scale is clamped below this (CLIP's 100), so the loss cannot blow up.
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"`init_temperature` must be > 0 but is {init_temperature}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)

    def forward(
        self, pooled: torch.Tensor, mapped: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and diagnostics of pooled (B, H, D) images against mapped (B, D) captions, pair i with i."""
        if pooled.shape[0] != mapped.shape[0] or pooled.shape[0] < 2:
            raise ValueError(
                f"`pooled` (B, H, D) and `mapped` (B, D) need the same batch B >= 2 but are "
                f"{tuple(pooled.shape)} and {tuple(mapped.shape)}"
            )
        similarity, heads = pair_similarity(pooled, mapped)  # (B, B) each
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        logits = scale * similarity
        target = torch.arange(len(logits), device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        with torch.no_grad():
            diagnostics = {
                "pair_accuracy": (logits.argmax(1) == target).float().mean(),
                "positive_cosine": similarity.diagonal().mean(),
                "logit_scale": scale.detach(),
                "head_entropy": _entropy(heads.diagonal(), pooled.shape[1]),
            }
        return loss, diagnostics


def _entropy(choices: torch.Tensor, count: int) -> torch.Tensor:
    """Entropy (nats) of the chosen heads' histogram: 0 when one head wins every pair."""
    p = torch.bincount(choices, minlength=count).float()
    p = p / p.sum()
    return -(p[p > 0] * p[p > 0].log()).sum()


def clean_background(
    scores: torch.Tensor,
    grid: torch.Tensor,
    weights: torch.Tensor,
    classes: torch.Tensor,
    weight: float = 0.2,
) -> torch.Tensor:
    """Talk2DINO's background cleaning: blend each class's cosine map with a class-specific attention map.

    Per image and class, the heads are weighted by a softmax over heads of cos(class, head embedding);
    the weighted average of the heads' patch attention is softmaxed over the patches, rescaled to the
    range of the image's cosine scores, and mixed in: (scores + weight * attention) / (1 + weight).

    Args:
        scores: cosine scores (B, C, h, w).
        grid: patch features (B, D, h, w).
        weights: per-head CLS attention over the patches (B, H, N = h * w) (`cls_patch_attention`).
        classes: mapped class embeddings (C, D).
        weight: lambda, the attention map's share (0: no cleaning).
    """
    batch, _, height, width = scores.shape
    patches = grid.flatten(2).transpose(1, 2)  # (B, N, D)
    heads = F.normalize(head_pooled_embeddings(patches, weights), dim=-1)  # (B, H, D)
    head_weights = torch.einsum("cd,bhd->bch", F.normalize(classes.float(), dim=-1), heads).softmax(-1)
    attention = torch.einsum("bch,bhn->bcn", head_weights, weights).softmax(-1)  # (B, C, N)
    low = attention.amin(dim=(1, 2), keepdim=True)
    span = (attention.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
    flat = scores.flatten(2)  # (B, C, N)
    s_low, s_high = flat.amin(dim=(1, 2), keepdim=True), flat.amax(dim=(1, 2), keepdim=True)
    attention = (attention - low) / span * (s_high - s_low) + s_low
    return ((flat + weight * attention) / (1 + weight)).reshape(batch, -1, height, width)


def segment_scores(grid: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch (B, D, h, w) with every mapped class embedding (C, D): (B, C, h, w)."""
    if grid.shape[1] != classes.shape[-1]:
        raise ValueError(
            f"patch features have D={grid.shape[1]} but the class embeddings {classes.shape[-1]}: "
            "the mapping was trained for another backbone"
        )
    return torch.einsum(
        "bdhw,cd->bchw", F.normalize(grid.float(), dim=1), F.normalize(classes.float(), dim=-1)
    )
