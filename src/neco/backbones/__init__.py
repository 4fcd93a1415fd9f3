"""ViT backbones built by timm (DINOv2, DINO, DINOv3, any timm ViT): registry, weight formats and loading."""

from __future__ import annotations

from neco.backbones.checkpoint import read_checkpoint
from neco.backbones.formats import convert, detect_format
from neco.backbones.loading import create, load_backbone, load_weights, read_state_dict, state_dict_checksum
from neco.backbones.model import Backbone, patch_grid
from neco.backbones.registry import get_config, list_backbones

__all__ = ["Backbone", "convert", "create", "detect_format", "get_config", "list_backbones", "load_backbone"]
__all__ += ["load_weights", "patch_grid", "read_checkpoint", "read_state_dict", "state_dict_checksum"]
