"""ViT backbones: official DINOv2 / DINO models, DINOv3 and any timm ViT (via timm), registry and weight formats."""

from __future__ import annotations

from neco.backbones.download import HUBS, cache_dir, download_weights, weight_source
from neco.backbones.factory import create
from neco.backbones.formats import FORMATS, convert, detect_format
from neco.backbones.grid import patch_grid
from neco.backbones.registry import BackboneConfig, WeightSource, get_config, list_backbones
from neco.backbones.timm_vit import TimmViT
from neco.backbones.vit import VisionTransformer
from neco.backbones.weights import WeightsInfo, load_weights, read_checkpoint, read_state_dict

__all__ = [
    "FORMATS",
    "HUBS",
    "BackboneConfig",
    "TimmViT",
    "VisionTransformer",
    "WeightSource",
    "WeightsInfo",
    "cache_dir",
    "convert",
    "create",
    "detect_format",
    "download_weights",
    "get_config",
    "list_backbones",
    "patch_grid",
    "load_weights",
    "read_checkpoint",
    "read_state_dict",
    "weight_source",
]
