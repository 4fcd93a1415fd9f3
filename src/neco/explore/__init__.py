"""The nearest-patch explorer (`neco explore`, `neco demo`): its inputs (`data`) and its HTML page (`page`).

from neco.explore import load_image_files, load_named_backbone, write_explore
model, name = load_named_backbone("dinov2_vits14_reg")
write_explore("explore.html", [(name, model)], load_image_files(["a.jpg", "b.jpg"], size=448))
"""

from neco.explore.data import (
    ExploreImages,
    dataset_images,
    load_image_files,
    load_named_backbone,
    write_explore,
)
from neco.explore.page import (
    ExploreBackbone,
    ReducedFeatures,
    nearest_patches,
    page_vectors,
    patch_labels,
    reduce_features,
    retrieval_precision,
    write_explore_html,
)

__all__ = [
    "ExploreBackbone",
    "ExploreImages",
    "ReducedFeatures",
    "dataset_images",
    "load_image_files",
    "load_named_backbone",
    "nearest_patches",
    "page_vectors",
    "patch_labels",
    "reduce_features",
    "retrieval_precision",
    "write_explore",
    "write_explore_html",
]
