"""The COCO-Stuff label hierarchy, its 171 classes and the three coarse label sets built from it.

COCO-Stuff's `stuffthingmaps` PNGs store `category_id - 1`: values 0-90 are the 91 thing ids
(80 used, 11 unused), 91-181 the 91 stuff ids (COCO ids 92-182), 255 is "unlabeled". Every
category belongs to one super-category of the official hierarchy (12 for things, 15 for stuff).

Label sets (each a lookup table from the 256 raw values to train ids, unmapped -> 255):
- `coco-stuff-164k` (Segmenter, mmsegmentation): the 171 used categories, the 80 things then the
  91 stuff classes in category-id order, as contiguous ids 0..170 (the 11 unused thing ids -> 255).
- `coco-stuff` (Leopart): the 15 stuff super-categories, sorted by name; thing pixels ignored.
- `coco-things` (Leopart): the 12 thing super-categories, sorted by name; stuff pixels ignored.
- `coco-stuff27` (PiCIE / STEGO): the 12 thing then the 15 stuff super-categories, in the
  order those works use (things: electronic ... vehicle; stuff: ceiling ... water).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COCO_STUFF_164K_CLASSES",
    "COCO_THING_CLASSES",
    "THING_SUPERCATEGORIES",
    "STUFF_SUPERCATEGORIES",
    "COCO_LABEL_SETS",
    "coco_supercategory",
    "coco_label_map",
]

# Thing super-categories by COCO category id (1-90; ids absent from COCO 2017 keep the
# super-category of their neighbours in the original 91-id list, they never occur in the maps).
_THING_ID_RANGES: tuple[tuple[int, int, str], ...] = (
    (1, 1, "person"),
    (2, 9, "vehicle"),  # bicycle .. boat
    (10, 15, "outdoor"),  # traffic light .. bench
    (16, 25, "animal"),  # bird .. giraffe
    (26, 33, "accessory"),  # backpack .. suitcase
    (34, 43, "sports"),  # frisbee .. tennis racket
    (44, 51, "kitchen"),  # bottle .. bowl
    (52, 61, "food"),  # banana .. cake
    (62, 71, "furniture"),  # chair .. toilet
    (72, 77, "electronic"),  # tv .. cell phone
    (78, 83, "appliance"),  # microwave .. refrigerator
    (84, 91, "indoor"),  # book .. toothbrush
)

# The 11 ids of the COCO paper's 91 thing categories that have no annotations in COCO 2014 / 2017
# (street sign, hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush).
_UNUSED_THING_IDS: frozenset[int] = frozenset((12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91))

COCO_THING_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO thing classes in category-id order (the COCO 2017 detection names)."""

# Stuff classes of COCO-Stuff, ids 92-182 in order, with their super-category.
_STUFF_CLASSES: tuple[tuple[str, str], ...] = (
    ("banner", "textile"),
    ("blanket", "textile"),
    ("branch", "plant"),
    ("bridge", "building"),
    ("building-other", "building"),
    ("bush", "plant"),
    ("cabinet", "furniture"),
    ("cage", "structural"),
    ("cardboard", "rawmaterial"),
    ("carpet", "floor"),
    ("ceiling-other", "ceiling"),
    ("ceiling-tile", "ceiling"),
    ("cloth", "textile"),
    ("clothes", "textile"),
    ("clouds", "sky"),
    ("counter", "furniture"),
    ("cupboard", "furniture"),
    ("curtain", "textile"),
    ("desk-stuff", "furniture"),
    ("dirt", "ground"),
    ("door-stuff", "furniture"),
    ("fence", "structural"),
    ("floor-marble", "floor"),
    ("floor-other", "floor"),
    ("floor-stone", "floor"),
    ("floor-tile", "floor"),
    ("floor-wood", "floor"),
    ("flower", "plant"),
    ("fog", "water"),
    ("food-other", "food"),
    ("fruit", "food"),
    ("furniture-other", "furniture"),
    ("grass", "plant"),
    ("gravel", "ground"),
    ("ground-other", "ground"),
    ("hill", "solid"),
    ("house", "building"),
    ("leaves", "plant"),
    ("light", "furniture"),
    ("mat", "textile"),
    ("metal", "rawmaterial"),
    ("mirror-stuff", "furniture"),
    ("moss", "plant"),
    ("mountain", "solid"),
    ("mud", "ground"),
    ("napkin", "textile"),
    ("net", "structural"),
    ("paper", "rawmaterial"),
    ("pavement", "ground"),
    ("pillow", "textile"),
    ("plant-other", "plant"),
    ("plastic", "rawmaterial"),
    ("platform", "ground"),
    ("playingfield", "ground"),
    ("railing", "structural"),
    ("railroad", "ground"),
    ("river", "water"),
    ("road", "ground"),
    ("rock", "solid"),
    ("roof", "building"),
    ("rug", "textile"),
    ("salad", "food"),
    ("sand", "ground"),
    ("sea", "water"),
    ("shelf", "furniture"),
    ("sky-other", "sky"),
    ("skyscraper", "building"),
    ("snow", "ground"),
    ("solid-other", "solid"),
    ("stairs", "furniture"),
    ("stone", "solid"),
    ("straw", "plant"),
    ("structural-other", "structural"),
    ("table", "furniture"),
    ("tent", "building"),
    ("textile-other", "textile"),
    ("towel", "textile"),
    ("tree", "plant"),
    ("vegetable", "food"),
    ("wall-brick", "wall"),
    ("wall-concrete", "wall"),
    ("wall-other", "wall"),
    ("wall-panel", "wall"),
    ("wall-stone", "wall"),
    ("wall-tile", "wall"),
    ("wall-wood", "wall"),
    ("water-other", "water"),
    ("waterdrops", "water"),
    ("window-blind", "window"),
    ("window-other", "window"),
    ("wood", "solid"),
)

THING_SUPERCATEGORIES: tuple[str, ...] = tuple(sorted({name for _, _, name in _THING_ID_RANGES}))
"""The 12 thing super-categories, sorted by name (Leopart's COCO-Things order)."""

STUFF_SUPERCATEGORIES: tuple[str, ...] = tuple(sorted({sup for _, sup in _STUFF_CLASSES}))
"""The 15 stuff super-categories, sorted by name (Leopart's COCO-Stuff order)."""

# PiCIE / STEGO order of the 27 coarse classes: things first, then stuff.
_STUFF27_ORDER: tuple[str, ...] = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory",
    "animal", "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid", "structural", "water",
)  # fmt: skip


_THING_IDS: tuple[int, ...] = tuple(i for i in range(1, 92) if i not in _UNUSED_THING_IDS)
_CATEGORY_IDS_164K: tuple[int, ...] = _THING_IDS + tuple(range(92, 92 + len(_STUFF_CLASSES)))

COCO_STUFF_164K_CLASSES: tuple[str, ...] = COCO_THING_CLASSES + tuple(name for name, _ in _STUFF_CLASSES)
"""The 171 classes of COCO-Stuff-164k: 80 things then 91 stuff, train id = position."""


def coco_supercategory(category_id: int) -> tuple[str, bool]:
    """(super-category, is_thing) of a COCO-Stuff category id in 1..182."""
    for first, last, name in _THING_ID_RANGES:
        if first <= category_id <= last:
            return name, True
    if 92 <= category_id <= 182:
        return _STUFF_CLASSES[category_id - 92][1], False
    raise ValueError(f"`category_id` must be in 1..182 but is {category_id}")


def _coarse_name_27(category_id: int) -> str:
    # food and furniture exist as both thing and stuff super-categories: disambiguate.
    name, is_thing = coco_supercategory(category_id)
    if name in ("food", "furniture"):
        return f"{name}-{'things' if is_thing else 'stuff'}"
    return name


def _build_map(label_set: str) -> tuple[np.ndarray, tuple[str, ...]]:
    table = np.full(256, 255, dtype=np.int64)
    if label_set == "coco-stuff-164k":
        table[np.array(_CATEGORY_IDS_164K) - 1] = np.arange(len(_CATEGORY_IDS_164K))  # maps store id - 1
        return table, COCO_STUFF_164K_CLASSES
    if label_set == "coco-stuff":
        names = STUFF_SUPERCATEGORIES
    elif label_set == "coco-things":
        names = THING_SUPERCATEGORIES
    else:
        names = _STUFF27_ORDER
    index = {name: i for i, name in enumerate(names)}
    for category_id in range(1, 183):
        name, is_thing = coco_supercategory(category_id)
        if label_set == "coco-stuff" and is_thing:
            continue
        if label_set == "coco-things" and not is_thing:
            continue
        if label_set == "coco-stuff27":
            name = _coarse_name_27(category_id)
        table[category_id - 1] = index[name]  # maps store category_id - 1
    return table, names


COCO_LABEL_SETS: dict[str, str] = {
    "coco-stuff": "15 stuff super-categories (Leopart COCO-Stuff); thing pixels ignored",
    "coco-things": "12 thing super-categories (Leopart COCO-Things); stuff pixels ignored",
    "coco-stuff27": "27 super-categories: 12 thing + 15 stuff (PiCIE/STEGO COCO-Stuff-27)",
    "coco-stuff-164k": "171 classes: 80 thing + 91 stuff (Segmenter / mmsegmentation COCO-Stuff-164k)",
}


def coco_label_map(label_set: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Lookup table (256,) from stuffthingmaps values to train ids (255 = ignore), and class names."""
    if label_set not in COCO_LABEL_SETS:
        raise ValueError(f"`label_set` must be one of {sorted(COCO_LABEL_SETS)} but is {label_set!r}")
    return _build_map(label_set)
