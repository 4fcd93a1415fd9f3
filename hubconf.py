"""torch.hub entry points: `torch.hub.load(<this repo>, 'neco_vits14_reg')` (one per registered backbone).

Every entry point takes keyword-only `pretrained=True` and `weights=None` (a checkpoint path of any
format neco reads) plus backbone overrides such as `drop_path_rate`. Works without installing neco:
the package is imported from `src/` next to this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch"]

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

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
