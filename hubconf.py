"""torch.hub entry points: `torch.hub.load(<this repo>, 'neco_vits14_reg')` (one per registered backbone).

DINOv3 entries (`dinov3_vits16`, ...) need `weights=<Meta or timm file>` (the files are gated), and
`torch.hub.load(<this repo>, 'timm_vit', 'vit_small_patch16_224', weights=...)` wraps any timm ViT.

Every entry point takes keyword-only `pretrained=True` and `weights=None` (a checkpoint path of any
format neco reads) plus backbone overrides such as `drop_path_rate`. Works without installing neco:
the package is imported from `src/` next to this file.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# Every module the backbones import (torch.hub checks each is installed before loading; yaml is PyYAML).
dependencies = ["torch", "timm", "yaml", "safetensors"]

_SRC = _Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in _sys.path:
    _sys.path.insert(0, str(_SRC))

from neco.backbones import create as _create  # noqa: E402
from neco.backbones import list_backbones as _list_backbones  # noqa: E402


def _entry_point(name: str):
    def entry(*, pretrained: bool = True, weights=None, **kwargs):
        return _create(name, pretrained=pretrained and weights is None, weights=weights, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"Backbone {name!r} (keyword-only: pretrained=True, weights=None, overrides)."
    return entry


for _name in _list_backbones():
    globals()[_name] = _entry_point(_name)


def timm_vit(model_name: str, *, pretrained: bool = False, weights=None, **kwargs):
    """Any timm ViT as a neco backbone (`timm:<model_name>`); random init unless `weights` or `pretrained`."""
    name = model_name if model_name.startswith("timm:") else f"timm:{model_name}"
    return _create(name, pretrained=pretrained and weights is None, weights=weights, **kwargs)
