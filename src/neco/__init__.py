"""neco: NeCo (Patch Neighbor Consistency) post-training of ViTs, and dense evaluations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "extract_features"]

if TYPE_CHECKING:  # pragma: no cover
    from neco.evaluation.features import extract_features


def __getattr__(name: str) -> Any:
    # Lazy so that `import neco` (and `neco --help`) stays fast and does not import torch.
    if name == "extract_features":
        from neco.evaluation.features import extract_features

        return extract_features
    raise AttributeError(f"module 'neco' has no attribute {name!r}")
