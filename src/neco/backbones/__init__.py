"""ViT backbones built by timm (DINOv2, DINO, DINOv3, any timm ViT): registry, weight formats and loading."""

from __future__ import annotations

from neco.backbones.checkpoint import read_checkpoint
from neco.backbones.download import HUBS, cache_dir, download_weights, weight_source
from neco.backbones.formats import FORMATS, convert, detect_format
from neco.backbones.loading import (
    WeightsInfo,
    create,
    load_backbone,
    load_weights,
    read_state_dict,
    resolve_backbone,
    state_dict_checksum,
)
from neco.backbones.model import Backbone, patch_grid
from neco.backbones.registry import BackboneConfig, WeightSource, get_config, list_backbones

__all__ = ["FORMATS", "HUBS", "Backbone", "BackboneConfig", "WeightSource", "WeightsInfo", "cache_dir"]
__all__ += ["convert", "create", "detect_format", "download_weights", "get_config", "list_backbones"]
__all__ += ["load_backbone", "load_weights", "patch_grid", "read_checkpoint", "read_state_dict"]
__all__ += ["resolve_backbone", "state_dict_checksum", "weight_source"]
