"""Dense evaluations of frozen patch features: Hummingbird retrieval, linear segmentation, overclustering.

Layers: tensor-level functions (metrics, matching, memory bank, probes), dataset-level runners that
take a feature function `features_fn(images (B,3,H,W)) -> (B, D, h, w)`, and the `neco eval` CLI.
"""

from neco.evaluation.matching import apply_mapping, hungarian_match, many_to_one_match
from neco.evaluation.metrics import ConfusionMatrix, iou_from_confusion

__all__ = [
    "ConfusionMatrix",
    "iou_from_confusion",
    "hungarian_match",
    "many_to_one_match",
    "apply_mapping",
]
