"""State dicts of timm-built backbones (DINOv3, `timm:<name>`): Meta DINOv3 names <-> timm names.

Loading: a state dict in the timm model's own key names loads as is; any other (Meta's official
DINOv3 files: `storage_tokens`, `ls1.gamma`, fused `qkv.bias`, ...) goes through the model's own
timm `checkpoint_filter_fn` (for DINOv3, `timm.models.eva.checkpoint_filter_fn`), never a neco copy
of it. The only thing checked before is what that function would drop silently: Meta's `qkv.bias`
when the timm model has no q/v bias is accepted only if it is all zeros (true for the released
DINOv3 files) and refused otherwise.

Export (`meta_state_dict`): the inverse renames back to Meta's names, plus the buffers Meta's files
carry (`rope_embed.periods`, `qkv.bias_mask`, a zero k bias); `mask_token` (pretraining only) is not
written.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["META_DINOV3_MARKER", "meta_state_dict", "to_timm_state"]

META_DINOV3_MARKER = "storage_tokens"  # the key that identifies Meta's DINOv3 files (timm checks the same)
_QKV_BIAS = re.compile(r"^(blocks\.\d+\.attn)\.qkv\.bias$")
_HF_DINOV3 = ("embeddings.", "layer.", "encoder.layer.")

StateDict = dict[str, torch.Tensor]


def _filter_fn(model: nn.Module):
    """The `checkpoint_filter_fn` of the timm module that defines `model`'s class, or None."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None  # a key of another depth: the strict load names it


def _drop_zero_qkv_bias(state: StateDict, model: nn.Module, name: str) -> StateDict:
    """Meta's fused `qkv.bias` for a timm model without q/v biases: drop it when all zeros, else refuse."""
    out = {}
    for key, value in state.items():
        match = _QKV_BIAS.match(key)
        attn = _submodule(model, match.group(1)) if match else None
        if (
            attn is not None
            and getattr(attn, "qkv", None) is not None
            and getattr(attn, "q_bias", None) is None
        ):
            if torch.count_nonzero(value.float().nan_to_num()) > 0:
                raise ValueError(
                    f"{key} holds non-zero q/v biases but {name} is built without them; use the timm "
                    f"`_qkvb` variant: --backbone timm:<its timm name>_qkvb (e.g. timm:vit_small_patch16_dinov3_qkvb)"
                )
            continue
        out[key] = value
    return out


def to_timm_state(state: Mapping[str, torch.Tensor], model: nn.Module, name: str) -> tuple[StateDict, str]:
    """Convert backbone tensors (prefixes and heads removed) to `model`'s timm names; returns (state, format)."""
    state = dict(state)
    expected = model.state_dict()
    if set(state) == set(expected) and all(state[k].shape == expected[k].shape for k in state):
        return state, "timm"
    if any(k.startswith(_HF_DINOV3) for k in state):
        raise ValueError(
            f"the weights for {name} are in Hugging Face transformers names ({sorted(state)[:3]}, ...), which "
            "neco does not read for timm-built backbones; use Meta's official .pth file or the timm copy"
        )
    filter_fn = _filter_fn(model)
    if META_DINOV3_MARKER in state:
        state = _drop_zero_qkv_bias(state, model, name)
        fmt = "meta (official DINOv3)"
    else:
        fmt = "timm"
    if filter_fn is not None:
        state = filter_fn(state, model)
        fmt += f", converted by {type(model).__module__}.checkpoint_filter_fn"
    return state, fmt


def meta_state_dict(model: nn.Module) -> StateDict:
    """A timm DINOv3 (Eva) model's weights in Meta's official DINOv3 key names (see the module doc)."""
    state = model.state_dict()
    if getattr(model, "reg_token", None) is None or getattr(model, "rope", None) is None:
        raise ValueError(
            f"official DINOv3 names need a DINOv3 model (registers and RoPE) but {type(model).__name__} "
            "has neither; export it with --format timm"
        )
    swiglu = {k.split(".mlp.")[0] for k in state if ".mlp.fc1_g." in k}
    out: StateDict = {}
    for key, value in state.items():
        if key.endswith((".attn.q_bias", ".attn.v_bias")):
            continue  # merged into qkv.bias below
        block = key.split(".mlp.")[0] if ".mlp." in key else None
        key = key.replace("reg_token", META_DINOV3_MARKER)
        key = key.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")
        if block in swiglu:  # SwiGLU blocks: Meta's w1 / w2 / w3
            key = key.replace(".mlp.fc1_g.", ".mlp.w1.").replace(".mlp.fc1_x.", ".mlp.w2.")
            key = key.replace(".mlp.fc2.", ".mlp.w3.")
        out[key] = value
    for index, block in enumerate(model.blocks):
        attn = block.attn
        width = attn.qkv.weight.shape[0] // 3
        weight = attn.qkv.weight
        if attn.q_bias is not None:
            bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias]).detach()
        else:
            bias = weight.new_zeros(3 * width)  # the released distilled models have all-zero biases
        mask = torch.ones_like(bias)
        mask[width : 2 * width] = 0  # Meta masks the k bias
        out[f"blocks.{index}.attn.qkv.bias"] = bias.clone()
        out[f"blocks.{index}.attn.qkv.bias_mask"] = mask
    out["rope_embed.periods"] = model.rope.periods.detach().clone()
    return out
