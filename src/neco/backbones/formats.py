"""Backbone state-dict formats: detection and exact conversion between official DINOv2, timm and HF names.

The official DINOv2 names are neco's canonical format for the DINOv2 / DINO backbones (see
docs/weights.md). Every conversion goes through it: `source -> official -> target`. Only renames, a
q/k/v split or merge, and for register models the timm folding of the CLS position row into the CLS
token; no value is ever recomputed otherwise, so round trips are exact.

DINOv3 / `timm:` backbones (timm-built families): a state dict in the timm model's own names loads
as is; any other (Meta's official DINOv3 files: `storage_tokens`, `ls1.gamma`, fused `qkv.bias`)
goes through the model's own timm `checkpoint_filter_fn`, never a neco copy of it. The only thing
checked before is what that function would drop silently: Meta's `qkv.bias` when the timm model has
no q/v bias is accepted only if it is all zeros (true for the released DINOv3 files). Export
(`meta_state_dict`) writes the inverse renames back to Meta's names plus the buffers Meta's files
carry (`rope_embed.periods`, `qkv.bias_mask`, a zero k bias); `mask_token` is not written.
`hf_config` gives the Hugging Face `config.json` of an exported DINOv2-family backbone.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neco.backbones.registry import BackboneConfig

__all__ = [
    "FORMATS",
    "HEAD_PREFIXES",
    "convert",
    "detect_format",
    "is_head_key",
    "strip_prefixes",
    "hf_config",
    "meta_state_dict",
    "to_timm_state",
    "write_hf_config",
]

FORMATS = {
    "official": "official DINOv2 / DINO torch.hub names (neco's canonical format)",
    "timm": "timm VisionTransformer names (`reg_token`, no `mask_token`, no CLS position row with registers)",
    "hf": "Hugging Face transformers names (Dinov2Model / Dinov2WithRegistersModel; ViTModel for DINO v1)",
}

# Wrappers seen in the wild around backbone keys (DDP, torch.compile, Lightning modules, DINO/NeCo).
KNOWN_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.", "teacher.", "student.", "dinov2.", "vit.")
# Keys of projection / classification heads: the only keys a backbone load may ignore.
HEAD_PREFIXES = (
    "head.",
    "heads.",
    "projection_head.",
    "dino_head.",
    "ibot_head.",
    "student_head.",
    "teacher_head.",
    "classifier.",
    "pooler.",
    "fc_norm.",
    "prototypes.",
)

_TOP_HF = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
# Per-block module renames; parameters (weight/bias) follow unless the entry names one.
_BLOCK_HF_DINOV2 = {
    "norm1": "norm1",
    "attn.proj": "attention.output.dense",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
    "ls2.gamma": "layer_scale2.lambda1",
}
# HF's ViTModel (the `facebook/dino-vit*` checkpoints): DINO v1 has no LayerScale.
_BLOCK_HF_VIT = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_QKV_HF = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
# transformers 5 in-memory names -> the on-disk (v4) names.
_HF5_RENAMES = {
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_CHUNKED_BLOCK_KEY = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
_HF_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")

StateDict = dict[str, torch.Tensor]


def is_head_key(key: str) -> bool:
    """True for keys of a projection/classification head (ignored when loading a backbone)."""
    return key.startswith(HEAD_PREFIXES)


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Remove wrapper prefixes (`module.`, `_orig_mod.`, `backbone.`, `model.`, ...) from every key."""
    out: StateDict = {}
    for key, value in state_dict.items():
        stripped = key
        changed = True
        while changed:
            changed = False
            for prefix in KNOWN_PREFIXES:
                if stripped.startswith(prefix):
                    stripped = stripped[len(prefix) :]
                    changed = True
        if stripped in out:
            raise ValueError(
                f"state dict keys {key!r} and another key both map to {stripped!r} after prefix removal"
            )
        out[stripped] = value
    return out


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Guess the key format of a backbone state dict: "official", "timm" or "hf" (prefixes already stripped)."""
    keys = list(state_dict)
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in keys):
        return "hf"
    eva = "storage_tokens" in state_dict or any(k.endswith(".gamma_1") or k.startswith("rope") for k in keys)
    if eva and "pos_embed" not in state_dict:
        raise ValueError(
            "state dict holds DINOv3 keys (Meta's `storage_tokens` or timm Eva's `gamma_1` / RoPE), which are "
            "read for a named backbone only: pass --backbone NAME (e.g. dinov3_vits16; `neco backbones` "
            "lists them), or `backbone=` in Python"
        )
    if not any(k.startswith("blocks.") for k in keys) or "pos_embed" not in state_dict:
        shown = keys[:8]
        raise ValueError(
            f"state dict is not a ViT backbone in any known format ({sorted(FORMATS)}); "
            f"{len(keys)} keys, the first being {shown}"
        )
    if "reg_token" in state_dict or _is_square(state_dict["pos_embed"].shape[1]):
        return "timm"
    return "official"


def _is_square(n: int) -> bool:
    root = int(round(n**0.5))
    return root * root == n


def _check_format(name: str, option: str) -> None:
    if name not in FORMATS:
        raise ValueError(f"`{option}` must be one of {sorted(FORMATS)} but is {name!r}")


def convert(
    state_dict: Mapping[str, torch.Tensor], to: str = "official", *, source: str | None = None
) -> StateDict:
    """Convert a backbone state dict between "official", "timm" and "hf" names (exactly; see module doc).

    Args:
        state_dict: backbone tensors (wrapper prefixes are stripped; head keys must be removed first).
        to: target format.
        source: the source format; detected with `detect_format` when None.
    """
    _check_format(to, "to")
    state = strip_prefixes(state_dict)
    heads = sorted(k for k in state if is_head_key(k))
    if heads:
        raise ValueError(f"state dict holds head keys {heads[:6]}; remove them before converting a backbone")
    source = detect_format(state) if source is None else source
    _check_format(source, "source")
    # Without registers, timm keys equal official ones except SwiGLU naming: one path handles both.
    official = {"official": _timm_to_official, "timm": _timm_to_official, "hf": _hf_to_official}[source](
        state
    )
    return {"official": dict, "timm": _official_to_timm, "hf": _official_to_hf}[to](official)


def _unchunk(state: StateDict) -> StateDict:
    """Flatten official block-chunked training keys `blocks.<chunk>.<i>.*` to `blocks.<i>.*`."""
    if not any(_CHUNKED_BLOCK_KEY.match(k) for k in state):
        return dict(state)
    out: StateDict = {}
    for key, value in state.items():
        match = _CHUNKED_BLOCK_KEY.match(key)
        out[f"blocks.{match.group(1)}.{match.group(2)}" if match else key] = value
    return out


def _official_to_timm(state: StateDict) -> StateDict:
    out: StateDict = {}
    registers = "register_tokens" in state
    for key, value in state.items():
        if key == "mask_token":
            continue  # timm has no mask token (only used by iBOT masking in training)
        if key == "register_tokens":
            out["reg_token"] = value
        elif key == "cls_token" and registers:
            # timm's register models do not give the CLS token a position row: fold it in.
            out["cls_token"] = value + state["pos_embed"][:, :1]
        elif key == "pos_embed" and registers:
            out["pos_embed"] = value[:, 1:]
        else:
            out[key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = value
    return out


def _swiglu_blocks(state: StateDict) -> set[str]:
    """Blocks whose `mlp.fc1` packs SwiGLU's two input projections (twice fc2's input width, as timm does)."""
    blocks = set()
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match and match.group(2) == "mlp.fc1.weight":
            fc2 = state.get(f"blocks.{match.group(1)}.mlp.fc2.weight")
            if fc2 is not None and value.shape[0] == 2 * fc2.shape[1]:
                blocks.add(match.group(1))
    return blocks


def _timm_to_official(state: StateDict) -> StateDict:
    state = _unchunk(state)
    swiglu = _swiglu_blocks(state)
    out: StateDict = {}
    for key, value in state.items():
        if key == "reg_token":
            out["register_tokens"] = value
        elif key == "pos_embed" and _is_square(value.shape[1]):
            # no_embed_class: restore the official CLS position row, which the CLS token absorbed.
            out["pos_embed"] = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
        else:
            match = _BLOCK_KEY.match(key)
            if match and match.group(1) in swiglu:
                key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
            out[key] = value
    return out


def _block_map(official_keys: list[str]) -> dict[str, str]:
    layerscale = any(".ls1." in k for k in official_keys)
    return _BLOCK_HF_DINOV2 if layerscale else _BLOCK_HF_VIT


def _expand(mapping: dict[str, str]) -> dict[str, str]:
    """Expand module renames to parameter renames (weight and bias), keeping explicit parameter entries."""
    out = {}
    for src, dst in mapping.items():
        if src.endswith(".gamma"):
            out[src] = dst
        else:
            out[f"{src}.weight"] = f"{dst}.weight"
            out[f"{src}.bias"] = f"{dst}.bias"
    return out


def _official_to_hf(state: StateDict) -> StateDict:
    block_map = _expand(_block_map(list(state)))
    out: StateDict = {}
    for key, value in state.items():
        if key in _TOP_HF:
            out[_TOP_HF[key]] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            raise ValueError(f"official key {key!r} has no Hugging Face equivalent")
        layer, rest = match.groups()
        prefix = f"encoder.layer.{layer}."
        if rest.startswith("attn.qkv."):
            param = rest.rsplit(".", 1)[1]
            for name, part in zip(_QKV_HF, value.chunk(3, dim=0)):
                out[f"{prefix}{name}.{param}"] = part.clone()
        elif rest in block_map:
            out[prefix + block_map[rest]] = value
        else:
            raise ValueError(f"official key {key!r} has no Hugging Face equivalent")
    return out


def _hf_to_official(state: StateDict) -> StateDict:
    top = {v: k for k, v in _TOP_HF.items()}
    renamed: StateDict = {}
    for key, value in state.items():
        for old, new in _HF5_RENAMES.items():
            if key.startswith("encoder.layer.") and old in key:
                key = key.replace(old, new)
        renamed[key] = value
    vit_style = any(".layernorm_before." in k for k in renamed)
    block_map = {v: k for k, v in _expand(_BLOCK_HF_VIT if vit_style else _BLOCK_HF_DINOV2).items()}
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in renamed.items():
        if key in top:
            out[top[key]] = value
            continue
        match = _HF_LAYER_KEY.match(key)
        if match is None:
            raise ValueError(f"Hugging Face key {key!r} is not a known backbone key")
        layer, rest = match.groups()
        module, _, param = rest.rpartition(".")
        if module in _QKV_HF:
            qkv.setdefault((layer, param), {})[module] = value
        elif rest in block_map:
            out[f"blocks.{layer}.{block_map[rest]}"] = value
        else:
            raise ValueError(f"Hugging Face key {key!r} is not a known backbone key")
    for (layer, param), parts in sorted(qkv.items()):
        missing = [name for name in _QKV_HF if name not in parts]
        if missing:
            raise ValueError(f"Hugging Face layer {layer} lacks {[f'{m}.{param}' for m in missing]}")
        out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts[name] for name in _QKV_HF], dim=0)
    return out


META_DINOV3_MARKER = "storage_tokens"  # the key that identifies Meta's DINOv3 files (timm checks the same)
_QKV_BIAS = re.compile(r"^(blocks\.\d+\.attn)\.qkv\.bias$")
_HF_DINOV3 = ("embeddings.", "layer.", "encoder.layer.")


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


def hf_config(config: BackboneConfig, pos_grid: int | None = None) -> dict[str, Any]:
    """`Dinov2Config` / `Dinov2WithRegistersConfig` fields of a DINOv2-family backbone.

    `pos_grid` is the side of the exported position-embedding grid (default: the registered one); the
    image size is that grid in pixels, so transformers interpolates nothing at the native resolution.
    """
    if config.family != "dinov2" or config.layerscale_init is None:
        raise ValueError(
            f"a Hugging Face config.json is written for DINOv2-family backbones only; {config.name} is "
            f"family {config.family}"
        )
    grid = config.pos_grid if pos_grid is None else int(pos_grid)
    registers = config.num_register_tokens > 0
    values: dict[str, Any] = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        # transformers 5 validates an int here; the DINOv2 ratios are whole numbers
        "mlp_ratio": int(config.mlp_ratio) if float(config.mlp_ratio).is_integer() else config.mlp_ratio,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": grid * config.patch_size,
        "patch_size": config.patch_size,
        "num_channels": 3,
        "qkv_bias": True,
        "layerscale_value": float(config.layerscale_init),
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": config.ffn == "swiglu",
        "torch_dtype": "float32",
    }
    if registers:
        values["num_register_tokens"] = config.num_register_tokens
    return values


def write_hf_config(config: BackboneConfig, folder: str | Path, pos_grid: int | None = None) -> Path:
    """Write `folder/config.json` (atomically) and return its path."""
    from neco.utils.io import atomic_write

    text = json.dumps(hf_config(config, pos_grid), indent=2) + "\n"
    return atomic_write(Path(folder) / "config.json", lambda handle: handle.write(text.encode()))
