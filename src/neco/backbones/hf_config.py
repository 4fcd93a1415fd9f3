"""The Hugging Face `config.json` of an exported DINOv2-family backbone, for `AutoModel.from_pretrained(folder)`.

A Hugging Face model folder is `config.json` plus `model.safetensors`; the keys come from
`neco.backbones.formats.convert(..., to="hf")`, the architecture from the registry config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neco.backbones.registry import BackboneConfig

__all__ = ["hf_config", "write_hf_config"]


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
