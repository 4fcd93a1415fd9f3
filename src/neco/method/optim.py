"""AdamW parameter groups (backbone / head x decay / no-decay) and the `trainable_blocks` option.

Every neco backbone wraps a timm model (`backbone.model`), which declares them itself and is asked
(the name rules below serve other modules, e.g. a raw non-timm ViT): no weight decay through timm's `no_weight_decay()` (with timm's
`param_groups_weight_decay`, which also exempts biases and 1-D tensors), blocks through its
`group_matcher()` (timm's `group_parameters`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

__all__ = ["NO_DECAY_NAMES", "apply_trainable_blocks", "build_param_groups", "is_no_decay"]

# Token and position parameters are excluded from weight decay by name, whatever their rank.
NO_DECAY_NAMES = ("cls_token", "register_tokens", "mask_token", "pos_embed", "dist_token")

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def is_no_decay(name: str, ndim: int, *, decay_tokens: bool = False) -> bool:
    """True for biases, 1-D tensors (norm scales, LayerScale gammas) and, unless `decay_tokens`, tokens.

    `decay_tokens=True` is the public NeCo / DINO rule (biases and 1-D tensors only): the class,
    register, mask tokens and position embeddings are then decayed like weights.
    """
    leaf = name.rsplit(".", 1)[-1]
    tokens = leaf in NO_DECAY_NAMES and not decay_tokens
    return name.endswith(".bias") or leaf == "bias" or ndim <= 1 or tokens


def timm_model_of(backbone: nn.Module) -> nn.Module | None:
    """The timm model that declares `backbone`'s layer-wise options: its wrapped `model`, itself, or None."""
    candidates = [backbone.model] if isinstance(getattr(backbone, "model", None), nn.Module) else []
    candidates.append(backbone)
    for candidate in candidates:
        if callable(getattr(candidate, "no_weight_decay", None)) and callable(
            getattr(candidate, "group_matcher", None)
        ):
            return candidate
    return None


def _no_decay_ids(backbone: nn.Module, decay_tokens: bool = False) -> set[int] | None:
    """Ids of the parameters timm exempts from weight decay (None when `backbone` is not a timm model)."""
    model = timm_model_of(backbone)
    if model is None:
        return None
    from timm.optim import param_groups_weight_decay

    # A dummy positive decay: with 0 timm puts everything in one group, and only the split is wanted.
    names = () if decay_tokens else model.no_weight_decay()  # timm's list names the token parameters
    groups = param_groups_weight_decay(model, 1.0, no_weight_decay_list=names)
    return {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}


def build_param_groups(
    backbone: nn.Module,
    head: nn.Module,
    lr_backbone: float,
    lr_head: float,
    weight_decay: float,
    *,
    decay_tokens: bool = False,
) -> list[dict]:
    """Four AdamW groups: backbone decay / no-decay at `lr_backbone`, head decay / no-decay at `lr_head`.

    Only parameters with `requires_grad` are included (apply `trainable_blocks` first). Each group carries
    `"name"`, `"apply_wd"` (True for the decayed groups, which follow the weight-decay schedule) and
    `"weight_decay"` (`weight_decay` or 0). Groups are always returned in the same order, possibly empty.
    `decay_tokens` decays token / position parameters too (the public rule; see `is_no_decay`).
    """
    for option, value in (("lr_backbone", lr_backbone), ("lr_head", lr_head), ("weight_decay", weight_decay)):
        if value < 0:
            raise ValueError(f"`{option}` must be >= 0 but is {value}")
    groups = []
    for part, module, lr in (("backbone", backbone, lr_backbone), ("head", head, lr_head)):
        decay, no_decay = [], []
        timm_no_decay = _no_decay_ids(module, decay_tokens) if part == "backbone" else None
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if timm_no_decay is not None:
                exempt = id(param) in timm_no_decay
            else:
                exempt = is_no_decay(name, param.ndim, decay_tokens=decay_tokens)
            (no_decay if exempt else decay).append(param)
        groups.append(
            {
                "name": f"{part}_decay",
                "params": decay,
                "lr": lr,
                "weight_decay": weight_decay,
                "apply_wd": True,
            }
        )
        groups.append(
            {"name": f"{part}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0, "apply_wd": False}
        )
    return groups


def apply_trainable_blocks(backbone: nn.Module, trainable_blocks: None | int | Sequence[int]) -> None:
    """Set `requires_grad` for `trainable_blocks`: int n = `blocks[n:]`; list = those blocks.

    When set, every backbone parameter outside the chosen blocks (patch embed, tokens, final norm) is frozen.
    None (train everything) changes nothing, so parameters frozen on purpose before (e.g. an unused
    `mask_token`) stay frozen.
    """
    timm_model = timm_model_of(backbone)
    blocks = getattr(timm_model if timm_model is not None else backbone, "blocks", None)
    if blocks is None:
        raise ValueError(
            f"`trainable_blocks` needs a backbone with a `blocks` list but {type(backbone).__name__} has none"
        )
    depth = len(blocks)
    if trainable_blocks is None:
        return
    if isinstance(trainable_blocks, bool):
        raise ValueError(
            f"`trainable_blocks` must be None, an int or a list of ints but is {trainable_blocks!r}"
        )
    if isinstance(trainable_blocks, int):
        if not -depth <= trainable_blocks <= depth:
            raise ValueError(
                f"`trainable_blocks` must be in [-{depth}, {depth}] for {depth} blocks but is {trainable_blocks}"
            )
        chosen = set(range(depth)[trainable_blocks:])
    else:
        chosen = set()
        for index in trainable_blocks:
            if isinstance(index, bool) or not isinstance(index, int) or not -depth <= index < depth:
                raise ValueError(
                    f"`trainable_blocks` entries must be block indices in [-{depth}, {depth}) but include {index!r}"
                )
            chosen.add(index % depth)
    if timm_model is not None:
        _apply_timm_blocks(timm_model, chosen)
        return
    for name, param in backbone.named_parameters():
        match = _BLOCK.search(name)
        param.requires_grad_(match is not None and int(match.group(1)) in chosen)


def _apply_timm_blocks(model: nn.Module, chosen: set[int]) -> None:
    """Train only the `group_matcher()` groups of the chosen blocks of a timm model; freeze the rest."""
    from timm.models import group_parameters

    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)  # name -> group
    name_of = {id(p): n for n, p in model.named_parameters()}
    block_groups = []
    for block in model.blocks:
        params = list(block.parameters())
        block_groups.append({layer_of[name_of[id(p)]] for p in params})
    if any(len(g) != 1 for g in block_groups) or len({min(g) for g in block_groups}) != len(block_groups):
        raise ValueError(
            f"`trainable_blocks` needs one group_matcher() group per block, but {type(model).__name__}'s "
            f"groups its {len(block_groups)} blocks as {[sorted(g) for g in block_groups]}"
        )
    trainable = {min(block_groups[i]) for i in chosen}
    for name, param in model.named_parameters():
        param.requires_grad_(layer_of[name] in trainable)
