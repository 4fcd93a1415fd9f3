"""Backbone state-dict formats: detection and exact conversion between official DINOv2, timm and HF names.

The official DINOv2 names are neco's canonical format for the DINOv2 / DINO backbones (see
docs/weights.md); every conversion goes `source -> official -> target`. Only renames, a q/k/v split
or merge, and for register models timm's folding of the CLS position row into the CLS token: no value
is recomputed otherwise, so round trips are exact. Loading into a model uses timm's own
`checkpoint_filter_fn` (`neco.backbones.loading`); this module writes the directions timm lacks.

DINOv3 / `timm:` backbones: a state dict in the timm model's own names loads as is; Meta's official
DINOv3 files go through the model's timm `checkpoint_filter_fn`. Checked before is only what that
function would drop silently: Meta's `qkv.bias` when the timm model has no q/v bias is accepted only
if all zeros (true for the released files). `meta_state_dict` writes the inverse renames plus the
buffers Meta's files carry (`rope_embed.periods`, `qkv.bias_mask`, a zero k bias).
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

__all__ = ["FORMATS", "HEAD_PREFIXES", "convert", "detect_format", "hf_config", "is_head_key"]
__all__ += ["meta_state_dict", "strip_prefixes", "to_timm_state", "write_hf_config"]

# official DINOv2 / DINO torch.hub names (canonical), timm's, Hugging Face transformers' (docs/weights.md)
FORMATS = ("official", "timm", "hf")
# Wrappers seen in the wild around backbone keys (DDP, torch.compile, Lightning modules, DINO/NeCo).
KNOWN_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.", "teacher.", "student.", "dinov2.", "vit.")
# Keys of projection / classification heads: the only keys a backbone load may ignore.
HEAD_PREFIXES = ("head.", "heads.", "projection_head.", "dino_head.", "ibot_head.", "student_head.")
HEAD_PREFIXES += ("teacher_head.", "classifier.", "pooler.", "fc_norm.", "prototypes.")

# Official -> Hugging Face module names (a parameter suffix follows unless the entry names it).
_HF_TOP = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token", "norm": "layernorm"}
_HF_TOP |= {"pos_embed": "embeddings.position_embeddings", "register_tokens": "embeddings.register_tokens"}
_HF_TOP |= {"patch_embed.proj": "embeddings.patch_embeddings.projection"}
_HF_DINOV2 = {"norm1": "norm1", "attn.proj": "attention.output.dense", "ls1.gamma": "layer_scale1.lambda1"}
_HF_DINOV2 |= {
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "ls2.gamma": "layer_scale2.lambda1",
}
_HF_DINOV2 |= {"mlp.w12": "mlp.weights_in", "mlp.w3": "mlp.weights_out"}
# HF's ViTModel (the `facebook/dino-vit*` files): DINO v1 has no LayerScale.
_HF_VIT = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after"}
_HF_VIT |= {"mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
_QKV_HF = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
_HF5 = {"attention.q_proj.": _QKV_HF[0] + ".", "attention.k_proj.": _QKV_HF[1] + "."}  # transformers 5 names
_HF5 |= {"attention.v_proj.": _QKV_HF[2] + ".", "attention.o_proj.": "attention.output.dense."}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# config.json fields every DINOv2 backbone shares (transformers' defaults, written out for other readers)
_HF_FIXED = {"hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
_HF_FIXED |= {"initializer_range": 0.02, "layer_norm_eps": 1e-6, "num_channels": 3, "qkv_bias": True}
_HF_FIXED |= {"drop_path_rate": 0.0, "torch_dtype": "float32"}
META_DINOV3_MARKER = "storage_tokens"  # the key that identifies Meta's DINOv3 files (timm checks the same)

StateDict = dict[str, torch.Tensor]


def is_head_key(key: str) -> bool:
    """True for keys of a projection/classification head (ignored when loading a backbone)."""
    return key.startswith(HEAD_PREFIXES)


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Remove wrapper prefixes (`module.`, `_orig_mod.`, `backbone.`, `model.`, ...) from every key."""
    out: StateDict = {}
    for key, value in state_dict.items():
        stripped = key
        while prefix := next((p for p in KNOWN_PREFIXES if stripped.startswith(p)), None):
            stripped = stripped[len(prefix) :]
        if stripped in out:
            raise ValueError(
                f"state dict keys {key!r} and another key both map to {stripped!r} after prefix removal"
            )
        out[stripped] = value
    return out


def _is_square(n: int) -> bool:
    return round(n**0.5) ** 2 == n


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Guess the key format of a backbone state dict: "official", "timm" or "hf" (prefixes already stripped)."""
    keys = list(state_dict)
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in keys):
        return "hf"
    eva = META_DINOV3_MARKER in state_dict or any(
        k.endswith(".gamma_1") or k.startswith("rope") for k in keys
    )
    if eva and "pos_embed" not in state_dict:
        raise ValueError(
            "state dict holds DINOv3 keys (Meta's `storage_tokens` or timm Eva's `gamma_1` / RoPE), which are "
            "read for a named backbone only: pass --backbone NAME (e.g. dinov3_vits16; "
            "`neco backbones` lists them), or `backbone=` in Python"
        )
    if not any(k.startswith("blocks.") for k in keys) or "pos_embed" not in state_dict:
        raise ValueError(
            f"state dict is not a ViT backbone in any known format ({sorted(FORMATS)}); "
            f"{len(keys)} keys, the first being {keys[:8]}"
        )
    return "timm" if "reg_token" in state_dict or _is_square(state_dict["pos_embed"].shape[1]) else "official"


def convert(
    state_dict: Mapping[str, torch.Tensor], to: str = "official", *, source: str | None = None
) -> StateDict:
    """Convert a backbone state dict between "official", "timm" and "hf" names (exactly; see module doc).

    Args:
        state_dict: backbone tensors (wrapper prefixes are stripped; head keys must be removed first).
        to: target format.
        source: the source format; detected with `detect_format` when None.
    """
    state = strip_prefixes(state_dict)
    if heads := sorted(k for k in state if is_head_key(k)):
        raise ValueError(f"state dict holds head keys {heads[:6]}; remove them before converting a backbone")
    source = detect_format(state) if source is None else source
    for option, name in (("to", to), ("source", source)):
        if name not in FORMATS:
            raise ValueError(f"`{option}` must be one of {sorted(FORMATS)} but is {name!r}")
    # Without registers timm keys equal official ones except SwiGLU naming: one path reads both.
    official = _hf_to_official(state) if source == "hf" else _timm_to_official(state)
    if to == "timm":  # timm's own official -> timm rename (it pops `mask_token`: given a copy)
        # private in timm: imported here so that a timm release renaming it breaks this direction only
        from timm.models.vision_transformer import _convert_dinov2

        return _convert_dinov2(dict(official), None)
    return _official_to_hf(official) if to == "hf" else official


def _timm_to_official(state: StateDict) -> StateDict:
    # official block-chunked training keys `blocks.<chunk>.<i>.*` -> `blocks.<i>.*`
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    # SwiGLU blocks: timm's fc1 packs both input projections (twice fc2's input width)
    swiglu = {
        m.group(1)
        for k, v in state.items()
        if (m := re.match(r"^blocks\.(\d+)\.mlp\.fc1\.weight$", k))
        and (fc2 := state.get(f"blocks.{m.group(1)}.mlp.fc2.weight")) is not None
        and v.shape[0] == 2 * fc2.shape[1]
    }
    out: StateDict = {}
    for key, value in state.items():
        if key == "reg_token":
            key = "register_tokens"
        elif key == "pos_embed" and _is_square(value.shape[1]):  # restore the CLS row the CLS token absorbed
            value = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
        elif (m := _BLOCK_KEY.match(key)) and m.group(1) in swiglu:
            key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out[key] = value
    return out


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """`key` with its leading module renamed by `table` (parameter suffix kept); None when none matches."""
    return next(
        (new + key[len(old) :] for old, new in table.items() if key == old or key.startswith(old + ".")), None
    )


def _official_to_hf(state: StateDict) -> StateDict:
    table = _HF_DINOV2 if any(".ls1." in k for k in state) else _HF_VIT
    out: StateDict = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        layer, rest = match.groups() if match else ("", key)
        if match and rest.startswith("attn.qkv."):
            for name, part in zip(_QKV_HF, value.chunk(3, dim=0)):
                out[f"encoder.layer.{layer}.{name}.{rest.rsplit('.', 1)[1]}"] = part.clone()
            continue
        if (new := _rename(rest, table if match else _HF_TOP)) is None:
            raise ValueError(f"official key {key!r} has no Hugging Face equivalent")
        out[f"encoder.layer.{layer}.{new}" if match else new] = value
    return out


def _hf_to_official(state: StateDict) -> StateDict:
    vit_style = any(".layernorm_before." in k for k in state)
    table = {v: k for k, v in (_HF_VIT if vit_style else _HF_DINOV2).items()}
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for old, new in _HF5.items():
            key = key.replace(old, new)
        match = _HF_LAYER_KEY.match(key)
        layer, rest = match.groups() if match else ("", key)
        module, _, param = rest.rpartition(".")
        if match and module in _QKV_HF:
            qkv.setdefault((layer, param), {})[module] = value
        elif (new := _rename(rest, table if match else {v: k for k, v in _HF_TOP.items()})) is not None:
            out[f"blocks.{layer}.{new}" if match else new] = value
        else:
            raise ValueError(f"Hugging Face key {key!r} is not a known backbone key")
    for (layer, param), parts in sorted(qkv.items()):
        if missing := [f"{name}.{param}" for name in _QKV_HF if name not in parts]:
            raise ValueError(f"Hugging Face layer {layer} lacks {missing}")
        out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts[name] for name in _QKV_HF], dim=0)
    return out


def to_timm_state(state: Mapping[str, torch.Tensor], model: nn.Module, name: str) -> tuple[StateDict, str]:
    """Convert backbone tensors (prefixes and heads removed) to `model`'s timm names; returns (state, format)."""
    state, expected = dict(state), model.state_dict()
    if set(state) == set(expected) and all(state[k].shape == expected[k].shape for k in state):
        return state, "timm"
    if any(k.startswith(("embeddings.", "layer.", "encoder.layer.")) for k in state):
        raise ValueError(
            f"the weights for {name} are in Hugging Face transformers names ({sorted(state)[:3]}, ...), which "
            "neco does not read for timm-built backbones; use Meta's official .pth file or the timm copy"
        )
    fmt = "timm"
    if META_DINOV3_MARKER in state:
        fmt = "meta (official DINOv3)"
        for key in [k for k in state if re.match(r"^blocks\.\d+\.attn\.qkv\.bias$", k)]:
            try:
                attn = model.get_submodule(key[: -len(".qkv.bias")])
            except AttributeError:
                continue  # a key of another depth: the strict load names it
            if getattr(attn, "qkv", None) is not None and getattr(attn, "q_bias", None) is None:
                if torch.count_nonzero(state.pop(key).float().nan_to_num()) > 0:
                    raise ValueError(
                        f"{key} holds non-zero q/v biases but {name} is built without them; use the timm "
                        "`_qkvb` variant: --backbone timm:<its timm name>_qkvb (e.g. timm:vit_small_patch16_dinov3_qkvb)"
                    )
    # the `checkpoint_filter_fn` of the timm module that defines the model's class
    if (
        filter_fn := getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    ) is not None:
        state = filter_fn(state, model)
        fmt += f", converted by {type(model).__module__}.checkpoint_filter_fn"
    return state, fmt


def meta_state_dict(model: nn.Module) -> StateDict:
    """A timm DINOv3 (Eva) model's weights in Meta's official DINOv3 key names (see the module doc)."""
    if getattr(model, "reg_token", None) is None or getattr(model, "rope", None) is None:
        raise ValueError(
            f"official DINOv3 names need a DINOv3 model (registers and RoPE) but {type(model).__name__} "
            "has neither; export it with --format timm"
        )
    state = model.state_dict()
    swiglu = any(".mlp.fc1_g." in k for k in state)
    out: StateDict = {}
    for key, value in state.items():
        if not key.endswith((".attn.q_bias", ".attn.v_bias")):  # merged into qkv.bias below
            key = key.replace("reg_token", META_DINOV3_MARKER).replace(".gamma_1", ".ls1.gamma")
            key = key.replace(".gamma_2", ".ls2.gamma")
            if swiglu:  # SwiGLU blocks: Meta's w1 / w2 / w3
                key = (
                    key.replace(".mlp.fc1_g.", ".mlp.w1.")
                    .replace(".mlp.fc1_x.", ".mlp.w2.")
                    .replace(".mlp.fc2.", ".mlp.w3.")
                )
            out[key] = value
    for index, block in enumerate(model.blocks):
        attn, width = block.attn, block.attn.qkv.weight.shape[0] // 3
        bias = attn.qkv.weight.new_zeros(3 * width)  # the released distilled models have all-zero biases
        if attn.q_bias is not None:
            bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias]).detach().clone()
        mask = torch.ones_like(bias)
        mask[width : 2 * width] = 0  # Meta masks the k bias
        out[f"blocks.{index}.attn.qkv.bias"], out[f"blocks.{index}.attn.qkv.bias_mask"] = bias, mask
    out["rope_embed.periods"] = model.rope.periods.detach().clone()
    return out


def hf_config(config: BackboneConfig, pos_grid: int | None = None) -> dict[str, Any]:
    """`Dinov2Config` / `Dinov2WithRegistersConfig` fields of a DINOv2-family backbone.

    `pos_grid` is the side of the exported position-embedding grid (default: the registered one); the
    image size is that grid in pixels, so transformers interpolates nothing at the native resolution.
    """
    if config.family != "dinov2" or config.layerscale_init is None:
        raise ValueError(
            f"a Hugging Face config.json is written for DINOv2-family backbones only; {config.name} is family {config.family}"
        )
    registers = config.num_register_tokens > 0
    values: dict[str, Any] = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        # transformers 5 validates an int here; the DINOv2 ratios are whole numbers
        "mlp_ratio": int(config.mlp_ratio) if float(config.mlp_ratio).is_integer() else config.mlp_ratio,
        "image_size": (config.pos_grid if pos_grid is None else int(pos_grid)) * config.patch_size,
        "patch_size": config.patch_size,
        "layerscale_value": float(config.layerscale_init),
        "use_swiglu_ffn": config.ffn == "swiglu",
        **_HF_FIXED,
    }
    return values | ({"num_register_tokens": config.num_register_tokens} if registers else {})


def write_hf_config(config: BackboneConfig, folder: str | Path, pos_grid: int | None = None) -> Path:
    """Write `folder/config.json` (atomically) and return its path."""
    from neco.utils.io import atomic_write

    text = json.dumps(hf_config(config, pos_grid), indent=2) + "\n"
    return atomic_write(Path(folder) / "config.json", lambda handle: handle.write(text.encode()))
