"""Training subsets for the low-data protocols: the published Hummingbird image-id lists, or seeded random ones.

The published low-data results (Pascal VOC trainaug and ADE20k training at 1/128, 1/64 and 1/8,
seeds 42, 400, 783, 1293, 4019) use fixed image-id lists from the public open-hummingbird-eval
repository (MIT; the notice ships beside the lists in `neco/evaluation/file_sets/`). A seeded
random subset of the same size is a different benchmark: the result file records which was used.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from importlib import resources
from typing import Any

__all__ = ["SUBSET_MODES", "published_ids", "select_subset"]

SUBSET_MODES = ("auto", "published", "random")

# (dataset name, split) -> (folder of the lists, file-name prefix)
_PUBLISHED = {("voc", "trainaug"): ("voc", "trainaug"), ("ade20k", "train"): ("ade20k", "training")}


def published_ids(dataset: str, split: str, fraction: float, seed: int) -> list[str] | None:
    """The published image ids of `split` at `fraction` and `seed`, or None when no list exists."""
    key = _PUBLISHED.get((dataset, split))
    frac = Fraction(fraction).limit_denominator(1024)
    if key is None or frac.numerator != 1 or frac.denominator == 1:
        return None
    folder, prefix = key
    path = resources.files("neco.evaluation").joinpath(
        f"file_sets/{folder}/1_div_{frac.denominator}/{prefix}_{frac.denominator}_{seed}.txt"
    )
    return path.read_text().split() if path.is_file() else None  # one id per line, none with spaces


def select_subset(
    dataset: Any, fraction: float, seed: int, mode: str = "auto", warn: Callable[[str], None] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The training subset and its description: published list (`auto` when one exists) or seeded random.

    Under `auto`, falling back to a random subset is a different benchmark from the published low-data
    numbers: `warn` (the run's warnings: console and result file) is told so.

    Raises:
        ValueError: `published` requested where no list exists, or listed images missing from the dataset.
    """
    if mode not in SUBSET_MODES:
        raise ValueError(f"`--subset` must be one of {list(SUBSET_MODES)} but is {mode!r}")
    if fraction >= 1.0:
        return dataset, {"fraction": 1.0, "subset": "full"}
    ids = None if mode == "random" else published_ids(dataset.name, dataset.split, fraction, seed)
    if ids is None and mode == "published":
        raise ValueError(
            f"`--subset published`: no published list for {dataset.name} {dataset.split} at fraction "
            f"{Fraction(fraction).limit_denominator(1024)} and --split-seed {seed} (published: voc trainaug "
            "and ade20k train at 1/128, 1/64, 1/8 with seeds 42, 400, 783, 1293, 4019)"
        )
    if ids is not None:
        position = {image.stem: i for i, (image, _) in enumerate(dataset.pairs)}
        missing = [i for i in ids if i not in position]
        if missing:
            raise ValueError(
                f"the published {dataset.name} {dataset.split} list at fraction {fraction:g} (seed {seed}) names "
                f"{len(ids)} images; {len(missing)} are missing from {dataset.info.get('root', 'the dataset')}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        subset = dataset.subset(sorted(position[i] for i in ids))
        info = {"fraction": fraction, "subset": "published", "split_seed": seed, "num_images": len(ids)}
    else:
        subset = dataset.fraction(fraction, seed=seed)
        info = {"fraction": fraction, "subset": "random", "split_seed": seed, "num_images": len(subset)}
        if mode == "auto" and warn is not None:
            warn(
                f"--fraction {Fraction(fraction).limit_denominator(1024)} --split-seed {seed}: no published list "
                f"for {dataset.name} {dataset.split}, so a seeded random subset of {len(subset)} images is used: a "
                "different benchmark from the published low-data numbers (published lists: voc trainaug and "
                "ade20k train at 1/128, 1/64, 1/8, seeds 42, 400, 783, 1293, 4019; --subset random accepts "
                "the random subset without this warning)"
            )
    subset.info.update(info)
    return subset, info
