"""Synthetic texture scenes with per-pixel labels, written in the VOC `VOCSegmentation` layout.

Every class is defined by texture/structure, never by colour: each object draws two or three
random colours, and its class decides the pattern (stripes in one of two orientation bands,
checkerboard, polka dots, concentric rings, zigzag, cross-hatch, thin grid) over a background
class of smooth noise blobs (label 0, like VOC's background). Objects are ellipses, polygons and
radial blobs of varied scale; later objects occlude earlier ones. Texture periods are 3-12 px, so
at 96-128 px and patch size 8 a patch sees about one period: a network that learned dense
texture semantics retrieves the right class, a random one does much worse.

A second family, `family="heldout"` (HELDOUT_CLASSES: bricks, hexagonal dots, waves, spirals,
triangle lattices, speckle, sunbursts, basket weave over cloud noise, in rectangles, squircles and
triangles), shares no texture or shape generator with the first: nothing was tuned on it, so it tells
whether a gain travels beyond the generator the settings were chosen on.

Only numpy and Pillow are used (no torch), so the generator is cheap to import from any test.
Deterministic: image `i` of a split depends only on (seed, split, i) (and the family).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from neco.utils.io import process_alive, write_json

__all__ = [
    "SCENE_CLASSES",
    "SCENE_FAMILIES",
    "HELDOUT_CLASSES",
    "SCENES_FORMAT",
    "generate_scene",
    "generate_scenes",
    "scene_settings",
    "voc_colours",
    "voc_palette",
    "write_scenes",
]

SCENE_CLASSES: tuple[str, ...] = (
    "background",  # smooth noise blobs
    "stripes-horizontal",  # stripes within +-25 deg of horizontal
    "stripes-vertical",  # stripes within +-25 deg of vertical
    "checkerboard",
    "dots",
    "rings",
    "zigzag",
    "crosshatch",
    "grid",
)

# A second generator family that nothing was tuned on (`family="heldout"`): other textures, other
# shapes and another background, so a gain measured on it is not a gain tuned to the first family.
HELDOUT_CLASSES: tuple[str, ...] = (
    "background",  # two-octave cloud noise
    "bricks",
    "hexdots",  # dots on a hexagonal lattice
    "waves",  # sinusoidal stripes
    "spiral",
    "triangles",  # three line families at 60 degrees
    "speckle",  # fine random pixel blocks
    "sunburst",  # rays from the object's centre
    "weave",  # basket weave: blocks of horizontal and vertical stripes
)

SCENES_FORMAT = "neco-scenes"
_VERSION = 1
_SPLIT_CODES = {"train": 1, "val": 2}

Pattern = Callable[[np.random.Generator, np.ndarray, np.ndarray, tuple[float, float]], np.ndarray]


def voc_colours(count: int = 256) -> np.ndarray:
    """(count, 3) uint8 colours of the Pascal VOC colour map: the bits of each class id interleaved."""
    ids, colours = np.arange(count), np.zeros((count, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colours[:, channel] |= ((ids >> channel) & 1) << shift
        ids = ids >> 3
    return colours.astype(np.uint8)


def voc_palette() -> list[int]:
    """The 256-entry Pascal VOC colour map, flattened for `Image.putpalette`."""
    return voc_colours(256).ravel().tolist()


# --- textures: each returns a bool "ink" map over the (H, W) pixel grid --------------------------


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return x * c + y * s, -x * s + y * c


def _stripes(direction_deg: float) -> Pattern:
    """Stripes running along `direction_deg` (0 = horizontal lines), +-25 degrees."""

    def _pattern(rng, x, y, centre):
        # u is the coordinate across the stripes: along the normal of their direction
        normal = math.radians(direction_deg + 90.0 + rng.uniform(-25, 25))
        period = rng.uniform(4.0, 10.0)
        u, _ = _rotate(x, y, normal)
        return np.mod(u / period + rng.uniform(), 1.0) < rng.uniform(0.4, 0.6)

    return _pattern


def _checkerboard(rng, x, y, centre):
    cell = rng.uniform(3.0, 6.0)
    u, v = _rotate(x, y, math.radians(rng.uniform(-12, 12)))
    ox, oy = rng.uniform(0, 2 * cell, size=2)
    return (np.floor((u + ox) / cell) + np.floor((v + oy) / cell)) % 2 == 0


def _dots(rng, x, y, centre):
    period = rng.uniform(6.0, 11.0)
    radius = rng.uniform(0.25, 0.35)  # in periods
    u, v = _rotate(x, y, math.radians(rng.uniform(0, 90)))
    fu = np.mod(u / period + rng.uniform(), 1.0) - 0.5
    fv = np.mod(v / period + rng.uniform(), 1.0) - 0.5
    return fu * fu + fv * fv < radius * radius


def _rings(rng, x, y, centre):
    period = rng.uniform(4.0, 9.0)
    cx, cy = centre[0] + rng.normal(0, 3), centre[1] + rng.normal(0, 3)
    distance = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return np.mod(distance / period + rng.uniform(), 1.0) < 0.5


def _zigzag(rng, x, y, centre):
    period = rng.uniform(5.0, 10.0)
    wavelength = period * rng.uniform(1.0, 1.8)
    amplitude = period * rng.uniform(0.5, 0.9)
    u, v = _rotate(x, y, rng.uniform(0, math.pi))
    triangle = np.abs(np.mod(v / wavelength + rng.uniform(), 1.0) - 0.5) * 2.0  # in [0, 1]
    return np.mod((u + amplitude * triangle) / period + rng.uniform(), 1.0) < 0.5


def _lines(rng, x, y, angles_deg: Sequence[float], period_range, width_range) -> np.ndarray:
    period = rng.uniform(*period_range)
    width = rng.uniform(*width_range) / period
    ink = np.zeros(x.shape, dtype=bool)
    for base in angles_deg:
        u, _ = _rotate(x, y, math.radians(base + rng.uniform(-10, 10)))
        ink |= np.mod(u / period + rng.uniform(), 1.0) < width
    return ink


def _crosshatch(rng, x, y, centre):
    return _lines(rng, x, y, (45.0, -45.0), (4.0, 8.0), (1.2, 2.0))


def _grid(rng, x, y, centre):
    return _lines(rng, x, y, (0.0, 90.0), (6.0, 12.0), (1.0, 1.8))


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float, resample: int) -> np.ndarray:
    """Smooth noise (H, W) uint8: a coarse normal grid, one cell per `scale` pixels, resized up."""
    height, width = shape
    coarse = rng.normal(size=(max(2, int(height / scale) + 2), max(2, int(width / scale) + 2)))
    coarse = (coarse - coarse.min()) / (np.ptp(coarse) + 1e-6)
    return np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), resample))


def _blobs(rng, x, y, centre):
    field = _noise(rng, x.shape, rng.uniform(4.0, 8.0), Image.Resampling.BICUBIC)
    return field > np.median(field)


_PATTERNS: dict[str, Pattern] = {
    "background": _blobs,
    "stripes-horizontal": _stripes(0.0),
    "stripes-vertical": _stripes(90.0),
    "checkerboard": _checkerboard,
    "dots": _dots,
    "rings": _rings,
    "zigzag": _zigzag,
    "crosshatch": _crosshatch,
    "grid": _grid,
}


def _bricks(rng, x, y, centre):
    height = rng.uniform(4.0, 7.0)
    length = height * rng.uniform(2.0, 3.0)
    u, v = _rotate(x, y, math.radians(rng.uniform(-15, 15)))
    row = np.floor(v / height)
    shifted = u + 0.5 * length * np.mod(row, 2)
    mortar = 1.2
    return (np.mod(v, height) < mortar) | (np.mod(shifted, length) < mortar)


def _hexdots(rng, x, y, centre):
    period = rng.uniform(6.0, 10.0)
    radius = rng.uniform(0.22, 0.32) * period
    u, v = _rotate(x, y, math.radians(rng.uniform(0, 60)))
    row_height = period * math.sqrt(3) / 2
    row = np.floor(v / row_height + 0.5)
    du = np.mod(u + 0.5 * period * np.mod(row, 2), period) - period / 2
    dv = v - row * row_height
    return du * du + dv * dv < radius * radius


def _waves(rng, x, y, centre):
    period = rng.uniform(5.0, 9.0)
    wavelength = rng.uniform(12.0, 24.0)
    amplitude = period * rng.uniform(0.6, 1.2)
    u, v = _rotate(x, y, rng.uniform(0, math.pi))
    return np.mod((u + amplitude * np.sin(2 * math.pi * v / wavelength)) / period + rng.uniform(), 1.0) < 0.5


def _spiral(rng, x, y, centre):
    period = rng.uniform(5.0, 9.0)
    cx, cy = centre[0] + rng.normal(0, 3), centre[1] + rng.normal(0, 3)
    theta = np.arctan2(y - cy, x - cx)
    distance = np.hypot(x - cx, y - cy)
    arms = int(rng.integers(1, 4))
    return np.mod((distance + arms * period * theta / (2 * math.pi)) / period, 1.0) < 0.5


def _triangles(rng, x, y, centre):
    return _lines(rng, x, y, (0.0, 60.0, 120.0), (7.0, 12.0), (1.0, 1.6))


def _speckle(rng, x, y, centre):
    height, width = x.shape
    cell = rng.uniform(1.5, 2.5)
    grid = rng.uniform(size=(int(height / cell) + 1, int(width / cell) + 1))
    rows = np.minimum((y / cell).astype(int), grid.shape[0] - 1)
    cols = np.minimum((x / cell).astype(int), grid.shape[1] - 1)
    return grid[rows, cols] < rng.uniform(0.2, 0.35)


def _sunburst(rng, x, y, centre):
    rays = int(rng.integers(10, 20))
    theta = np.arctan2(y - centre[1], x - centre[0])
    return np.mod(theta * rays / (2 * math.pi) + rng.uniform(), 1.0) < 0.5


def _weave(rng, x, y, centre):
    period = rng.uniform(3.0, 5.0)
    block = 2 * period
    u, v = _rotate(x, y, math.radians(rng.uniform(-15, 15)))
    horizontal = (np.floor(u / block) + np.floor(v / block)) % 2 == 0
    return np.where(horizontal, np.mod(v / period, 1.0) < 0.5, np.mod(u / period, 1.0) < 0.5)


def _clouds(rng, x, y, centre):
    field = np.zeros(x.shape, dtype=np.float32)
    for scale, weight in ((rng.uniform(10.0, 16.0), 1.0), (rng.uniform(3.0, 5.0), 0.5)):
        field += weight * _noise(rng, x.shape, scale, Image.Resampling.BILINEAR).astype(np.float32)
    return field > np.quantile(field, rng.uniform(0.3, 0.7))


_HELDOUT_PATTERNS: dict[str, Pattern] = {
    "background": _clouds,
    "bricks": _bricks,
    "hexdots": _hexdots,
    "waves": _waves,
    "spiral": _spiral,
    "triangles": _triangles,
    "speckle": _speckle,
    "sunburst": _sunburst,
    "weave": _weave,
}

SCENE_FAMILIES: dict[str, tuple[tuple[str, ...], dict[str, Pattern]]] = {
    "developer": (SCENE_CLASSES, _PATTERNS),  # the family the demo and every setting were tuned on
    "heldout": (HELDOUT_CLASSES, _HELDOUT_PATTERNS),
}


_FAMILY_CODES = {"heldout": 101}


def _family(family: str) -> tuple[tuple[str, ...], dict[str, Pattern]]:
    if family not in SCENE_FAMILIES:
        raise ValueError(f"`family` must be one of {sorted(SCENE_FAMILIES)} but is {family!r}")
    return SCENE_FAMILIES[family]


def _paint(
    rng: np.random.Generator, image: np.ndarray, ink: np.ndarray, region: np.ndarray, x: np.ndarray
) -> None:
    """Colour `region` of `image` in place from an ink map with 2-3 random colours."""
    colours = rng.uniform(0, 255, size=(3, 3)).astype(np.float32)
    # keep ink and paper apart so the texture stays visible whatever the draw
    while np.abs(colours[0] - colours[1]).sum() < 120:
        colours[1] = rng.uniform(0, 255, size=3)
    graded = rng.uniform() < 0.5  # third colour: a slow gradient of the paper, no texture change
    image[region & ink] = colours[0]
    paper = region & ~ink
    if graded and paper.any():
        xs = x[paper]
        ramp = 0.5 * (xs - xs.min()) / (np.ptp(xs) + 1e-6)  # (n,)
        image[paper] = colours[1] * (1 - ramp[:, None]) + colours[2] * ramp[:, None]
    else:
        image[paper] = colours[1]


# --- shapes: each returns a bool mask -------------------------------------------------------------


def _shape_mask(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, centre: tuple[float, float], radius: float
) -> np.ndarray:
    kind = rng.integers(3)
    cx, cy = centre
    size = xx.shape[0]
    if kind == 2:  # radial blob r(theta) = r0 (1 + sum a_k cos(k theta + phi_k))
        theta = np.arctan2(yy - cy, xx - cx)
        r = np.ones_like(theta)
        for k in (2, 3, 5):
            r += rng.uniform(0.0, 0.2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        return np.hypot(xx - cx, yy - cy) < radius * r
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == 0:  # rotated ellipse as a dense polygon
        a, b = radius, radius * rng.uniform(0.5, 1.0)
        phi = rng.uniform(0, np.pi)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        px = cx + a * np.cos(t) * math.cos(phi) - b * np.sin(t) * math.sin(phi)
        py = cy + a * np.cos(t) * math.sin(phi) + b * np.sin(t) * math.cos(phi)
    else:  # star-shaped polygon with 5-9 vertices
        count = int(rng.integers(5, 10))
        t = np.sort(rng.uniform(0, 2 * np.pi, size=count))
        r = radius * rng.uniform(0.6, 1.0, size=count)
        px, py = cx + r * np.cos(t), cy + r * np.sin(t)
    draw.polygon(list(zip(px.tolist(), py.tolist())), fill=1)
    return np.asarray(canvas, dtype=bool)


def _heldout_shape_mask(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, centre: tuple[float, float], radius: float
) -> np.ndarray:
    """Rotated rectangles, squircles and triangles (the developer family draws ellipses, stars, blobs)."""
    kind = rng.integers(3)
    cx, cy = centre
    u, v = _rotate(xx - cx, yy - cy, rng.uniform(0, math.pi))
    a, b = radius, radius * rng.uniform(0.5, 1.0)
    if kind == 0:
        return (np.abs(u) < a) & (np.abs(v) < b)
    if kind == 1:
        power = rng.uniform(3.0, 5.0)
        return np.abs(u / a) ** power + np.abs(v / b) ** power < 1.0
    # triangle: inside three half-planes of an equilateral triangle of circumradius `radius`
    inside = np.ones(xx.shape, dtype=bool)
    for k in range(3):
        angle = 2 * math.pi * k / 3
        inside &= u * math.cos(angle) + v * math.sin(angle) < radius / 2
    return inside


def generate_scene(
    rng: np.random.Generator,
    size: int = 112,
    *,
    classes: Sequence[int] | None = None,
    num_objects: int | None = None,
    noise_std: float = 4.0,
    family: str = "developer",
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 (size, size, 3), label uint8 (size, size)) with labels in the family's classes.

    Args:
        rng: numpy Generator; the scene is a deterministic function of its state.
        size: side in pixels (square).
        classes: object class ids (1..8) to place, in drawing order; random when None.
        num_objects: number of objects when `classes` is None (random 2-5 when None).
        noise_std: std of the additive Gaussian pixel noise.
        family: "developer" (SCENE_CLASSES) or "heldout" (HELDOUT_CLASSES, other textures and shapes).
    """
    if size < 16:
        raise ValueError(f"`size` must be >= 16 but is {size}")
    class_names, patterns = _family(family)
    shape_mask = _shape_mask if family == "developer" else _heldout_shape_mask
    num_classes = len(class_names)
    if classes is None:
        count = int(rng.integers(2, 6)) if num_objects is None else num_objects
        classes = rng.integers(1, num_classes, size=count).tolist()
    for c in classes:
        if not 1 <= c < num_classes:
            raise ValueError(f"`classes` entries must be in 1..{num_classes - 1} but got {c}")
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)  # (H, W) pixel coordinates
    image = np.empty((size, size, 3), dtype=np.float32)
    everywhere = np.ones((size, size), dtype=bool)
    _paint(rng, image, patterns["background"](rng, x, y, (size / 2, size / 2)), everywhere, x)
    label = np.zeros((size, size), dtype=np.uint8)
    for class_id in classes:
        radius = size * rng.uniform(0.14, 0.32)
        centre = (rng.uniform(0.15, 0.85) * size, rng.uniform(0.15, 0.85) * size)
        mask = shape_mask(rng, x, y, centre, radius)
        texture = patterns[class_names[class_id]](rng, x, y, centre)
        _paint(rng, image, texture, mask, x)
        label[mask] = class_id
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * noise_std
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


# --- writing a VOC-layout dataset -----------------------------------------------------------------


def scene_settings(
    num_train: int, num_val: int, size: int, seed: int, image_format: str = "jpg", family: str = "developer"
) -> dict[str, Any]:
    """The settings recorded in `scenes.json` (two runs with equal settings write equal files)."""
    class_names, _ = _family(family)
    # "family" is recorded only for the held-out family, so existing developer outputs stay reusable.
    return {
        "format": SCENES_FORMAT,
        "version": _VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
        "seed": seed,
        "image_format": image_format,
        "class_names": list(class_names),
        "ignore_index": 255,
        "layout": "VOCSegmentation",
        **({} if family == "developer" else {"family": family}),
    }


def _family_key(family: str) -> list[int]:
    # Appended to the developer family's seed sequences only for other families: developer bytes are unchanged.
    _family(family)  # validates the name
    return [] if family == "developer" else [_FAMILY_CODES[family]]


def _class_deck(seed: int, split: str, num_images: int, family: str = "developer") -> list[list[int]]:
    # Deal object classes from shuffled decks so that every class shows up in every few images.
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], 0, *_family_key(family)])
    counts = rng.integers(2, 6, size=num_images)
    total = int(counts.sum())
    objects = len(_family(family)[0]) - 1
    deck = np.concatenate([rng.permutation(objects) + 1 for _ in range(total // objects + 1)])
    plans, start = [], 0
    for count in counts:
        plans.append(deck[start : start + count].tolist())
        start += count
    return plans


def _indexed_scene(
    seed: int, split: str, index: int, size: int, classes: list[int], family: str = "developer"
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index + 1, *_family_key(family)])
    return generate_scene(rng, size, classes=classes, family=family)


def generate_scenes(
    num_images: int, size: int = 112, seed: int = 0, split: str = "train", family: str = "developer"
) -> tuple[np.ndarray, np.ndarray]:
    """In memory, the scenes `write_scenes` writes for `split`: images (N, S, S, 3) uint8, labels (N, S, S) uint8."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"`split` must be one of {sorted(_SPLIT_CODES)} but is {split!r}")
    if num_images < 1:
        raise ValueError(f"`num_images` must be >= 1 but is {num_images}")
    plans = _class_deck(seed, split, num_images, family)
    scenes = [_indexed_scene(seed, split, i, size, plans[i], family) for i in range(num_images)]
    return np.stack([image for image, _ in scenes]), np.stack([label for _, label in scenes])


def _save_image(image: np.ndarray, path: Path, image_format: str) -> None:
    if image_format == "jpg":
        Image.fromarray(image).save(path, quality=95, subsampling=0)
    else:
        Image.fromarray(image).save(path, compress_level=1)


def _save_label(label: np.ndarray, path: Path, palette: list[int]) -> None:
    height, width = label.shape
    png = Image.frombytes("P", (width, height), np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    png.putpalette(palette)
    png.save(path, optimize=False, compress_level=1)


def _existing_is_complete(out_dir: Path, settings: dict[str, Any]) -> bool:
    names = [_scene_id(split, i) for split in ("train", "val") for i in range(settings[f"num_{split}"])]
    expected = [f"sets/{split}.txt" for split in ("train", "trainaug", "val")]
    for folder in ("images", "SegmentationClass", "SegmentationClassAug"):
        suffix = settings["image_format"] if folder == "images" else "png"
        expected += [f"{folder}/{name}.{suffix}" for name in names]
    return all((out_dir / rel).is_file() for rel in expected)


def _scene_id(split: str, index: int) -> str:
    return f"scene_{split}_{index:06d}"


_OWNED = ("images", "SegmentationClass", "SegmentationClassAug", "sets", "scenes.json")


def write_scenes(
    out_dir: str | Path,
    num_train: int = 64,
    num_val: int = 16,
    size: int = 112,
    seed: int = 0,
    *,
    image_format: str = "jpg",
    overwrite: bool = False,
    progress: bool = True,
    family: str = "developer",
) -> Path:
    """Write a scenes dataset in the VOC `VOCSegmentation` layout under `out_dir`; return `out_dir`.

    `family` picks the generator family ("developer" or "heldout", see SCENE_FAMILIES).
    An existing complete output with the same settings (`scenes.json`) is reused as is; different
    settings, or a non-empty folder that is not a scenes output, raise FileExistsError unless
    `overwrite` (which replaces only the files this function writes).
    """
    formats = {"jpg": "JPEG, quality 95, no chroma subsampling", "png": "lossless PNG"}
    if image_format not in formats:
        raise ValueError(f"`image_format` must be one of {sorted(formats)} but is {image_format!r}")
    for option, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("size", size, 16)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{option}` must be an integer >= {low} but is {value!r}")
    out_dir = Path(out_dir).expanduser()
    settings = scene_settings(num_train, num_val, size, seed, image_format, family)
    manifest = out_dir / "scenes.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"scenes output {out_dir}: exists and is not a directory")
    advice = (
        "choose another folder, delete it, or replace it with `neco make-scenes DIR --overwrite` "
        "(`overwrite=True` from Python)"
    )
    if manifest.is_file() and not overwrite:
        try:
            previous = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous == settings and _existing_is_complete(out_dir, settings):
            return out_dir
        if previous != settings:
            raise FileExistsError(
                f"scenes output {out_dir}: holds scenes made with other settings ({manifest}); {advice}"
            )
    elif out_dir.is_dir() and any(out_dir.iterdir()) and not manifest.is_file() and not overwrite:
        raise FileExistsError(
            f"scenes output {out_dir}: the folder is not empty and has no scenes.json; {advice}"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out_dir)
    # Generated beside the target and renamed into place: a kill midway never leaves a partial output.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=out_dir.parent))
    try:
        _generate_all(staging, settings, progress)
        write_json(settings, staging / "scenes.json")  # written last: marks the output complete
        _move_into_place(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _remove_orphans(out_dir: Path) -> None:
    """Delete staging folders of `out_dir` left by generations that were killed (their process is gone)."""
    for orphan in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        try:
            pid = int(orphan.name.split(".partial-", 1)[1].split("-", 1)[0])
        except (ValueError, IndexError):
            pid = None
        if (pid is None or pid == os.getpid() or not process_alive(pid)) and orphan.is_dir():
            shutil.rmtree(orphan, ignore_errors=True)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished `staging` folder to `out_dir`; into an existing folder, swap only our entries."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    for name in reversed(_OWNED):  # scenes.json goes first and comes back last: it marks a complete output
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name in _OWNED:
        os.replace(staging / name, out_dir / name)


def _generate_all(out_dir: Path, settings: dict[str, Any], progress: bool) -> None:
    for sub in ("images", "SegmentationClass", "SegmentationClassAug", "sets"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    seed, size, image_ext = settings["seed"], settings["size"], settings["image_format"]
    family = settings.get("family", "developer")
    total = settings["num_train"] + settings["num_val"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="scenes", unit="img")
    ids: dict[str, list[str]] = {}
    for split in ("train", "val"):
        count = settings[f"num_{split}"]
        plans = _class_deck(seed, split, count, family)
        ids[split] = []
        for index in range(count):
            image, label = _indexed_scene(seed, split, index, size, plans[index], family)
            name = _scene_id(split, index)
            _save_image(image, out_dir / "images" / f"{name}.{image_ext}", image_ext)
            _save_label(label, out_dir / "SegmentationClassAug" / f"{name}.png", palette)
            _save_label(label, out_dir / "SegmentationClass" / f"{name}.png", palette)
            ids[split].append(name)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    for split, names in (("train", ids["train"]), ("trainaug", ids["train"]), ("val", ids["val"])):
        (out_dir / "sets" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
