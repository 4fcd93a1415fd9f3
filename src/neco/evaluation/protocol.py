"""The `Protocol` abstraction, its registry and the run context every protocol receives.

A protocol is one module in `neco/evaluation/protocols/` holding a `Protocol` subclass decorated
with `@register_protocol`. It declares its name, its typed settings (a dataclass of `option(...)`
fields, which also gives its `neco eval NAME` options), the datasets and splits it reads, its
published input size, and implements `run(features, data, settings, ctx) -> ProtocolOutput` and
`headline(metrics)`. Everything else (device, seed, backbone, loaders, timings, result file,
figures) is shared: see `neco.evaluation.runner.evaluate` and `neco eval`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from neco.evaluation.blocks.loading import ExampleKeeper
from neco.evaluation.blocks.transforms import EvalResize, PairDataset
from neco.evaluation.features import Features
from neco.evaluation.options import option

__all__ = [
    "Protocol",
    "ProtocolOutput",
    "EvalData",
    "RunSettings",
    "RunContext",
    "register_protocol",
    "registered_protocols",
]


@dataclass
class RunSettings:
    """Settings shared by every protocol: sizes, seed, device and batching."""

    input_size: int | None = option(
        None, "square input size in pixels (none: the protocol's published size)", minimum=1
    )
    seed: int = option(0, "seed of augmentations, subsets, probes and k-means")
    batch_size: int = option(8, "images per backbone forward", minimum=1)
    num_workers: int = option(2, "data loader worker processes", minimum=0)
    precision: str = option("fp32", "backbone autocast", choices=("fp32", "bf16", "fp16"))
    device: str = option("auto", "auto (cuda when available), cpu, cuda, cuda:1, ...")
    num_figures: int = option(4, "validation images shown in the figures", minimum=0)
    progress: bool = option(True, "show progress bars")
    skip_bad_images: bool = option(
        False, "leave out unreadable images (checked up front; listed in the result) instead of failing"
    )


@dataclass
class EvalData:
    """The datasets of one evaluation: `val` is scored; `train` feeds protocols that fit something."""

    val: Any
    train: Any | None = None
    name: str = ""
    root: str | None = None

    def describe(self) -> dict[str, Any]:
        """Dataset identity for a result file."""
        roles = {"val": self.val, "train": self.train}
        splits = {role: _describe(split, role) for role, split in roles.items() if split is not None}
        return {"name": self.name or str(getattr(self.val, "name", "")), "root": self.root, "splits": splits}


def _describe(dataset: Any, role: str) -> dict[str, Any]:
    """A dataset's own `describe()`, completed with name, split and size where it lacks them."""
    info = dict(dataset.describe()) if hasattr(dataset, "describe") else {}
    info.setdefault("name", str(getattr(dataset, "name", type(dataset).__name__)))
    info.setdefault("split", str(getattr(dataset, "split", role)))
    info.setdefault("num_images", len(dataset))
    return info


@dataclass
class ProtocolOutput:
    """What `Protocol.run` returns: metrics, resolved settings (values) and examples for the figures."""

    metrics: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    examples: Any = None


class RunContext:
    """Per-run services for a protocol: loaders with progress, timers, warnings, kept examples."""

    def __init__(self, run: RunSettings, input_size: int, device: torch.device) -> None:
        self.run, self.input_size, self.device = run, int(input_size), device
        self.seed, self.progress = int(run.seed), bool(run.progress)
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []
        #: the result folder of `evaluate(out_dir=...)` (None: nothing is written), for run files such as checkpoints
        self.out_dir: Path | None = None

    def batches(
        self,
        dataset: Any,
        desc: str,
        transform: Any = None,
        *,
        epoch: int = 0,
        shuffle: bool = False,
        batch_size: int | None = None,
    ) -> Iterator[Any]:
        """(images, masks, indices) batches of `dataset`, the last one short, with a progress bar `desc`.

        Items go through `transform` (default: `EvalResize` to the input size) with a per-item seeded
        generator; ordered unless `shuffle`, in which case the order is seeded by (seed, epoch).
        """
        loader = DataLoader(
            PairDataset(dataset, transform or EvalResize(self.input_size), seed=self.seed, epoch=epoch),
            batch_size=batch_size or self.run.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch) if shuffle else None,
            num_workers=self.run.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
        return self.iterate(loader, desc)

    def iterate(self, loader: Iterable[Any], desc: str) -> Iterator[Any]:
        """Iterate a loader (or any iterable) with a progress bar (unless progress is off)."""
        from tqdm.auto import tqdm

        return iter(tqdm(loader, desc=desc, disable=not self.progress, leave=False))

    def keeper(self) -> ExampleKeeper:
        """Collects the first `num_figures` validation items for the figures."""
        return ExampleKeeper(self.run.num_figures)

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to `timings[name + '_s']`."""
        key, start = f"{name}_s", time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def warn(self, message: str) -> None:
        """Record a warning for the result file (and the console)."""
        self.warnings.append(message)


class Protocol:
    """Base class of the evaluation protocols; see the module docstring."""

    name: ClassVar[str]
    summary: ClassVar[str]
    settings_class: ClassVar[type]
    #: dataset names the protocol accepts (None: every segmentation dataset of `neco.data`)
    datasets: ClassVar[tuple[str, ...] | None] = None
    #: default split scored
    val_split: ClassVar[str] = "val"
    #: whether a training split is read (default: trainaug for voc, else train)
    needs_train: ClassVar[bool] = False
    #: the published input size in pixels, rounded to whole patches by `default_input_size`
    input_size: ClassVar[int] = 448
    #: the last-block attention is needed
    needs_attention: ClassVar[bool] = False

    def default_input_size(self, patch_size: int) -> int:
        """The published input size rounded to a whole number of patches."""
        return max(1, round(self.input_size / patch_size)) * patch_size

    def default_train_split(self, dataset: str) -> str:
        """The split a training-set protocol reads by default."""
        return "trainaug" if dataset == "voc" else "train"

    def load_data(
        self, dataset: str, root: Path, train_split: str | None, val_split: str | None, settings: Any
    ) -> EvalData:
        """Build the datasets (layouts are checked up front by the loaders); `settings` are the protocol's."""
        from neco.data import build_segmentation_dataset

        val = build_segmentation_dataset(dataset, root, val_split or self.val_split)
        train_split = train_split or self.default_train_split(dataset)
        train = build_segmentation_dataset(dataset, root, train_split) if self.needs_train else None
        return EvalData(val=val, train=train, name=dataset, root=str(Path(root).resolve()))

    def run(self, features: Features, data: EvalData, settings: Any, ctx: RunContext) -> ProtocolOutput:
        """Compute the metrics."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, Any]) -> tuple[str, float]:
        """The one number printed and shown first: (name, value)."""
        return "miou", float(metrics["miou"])

    def figures(
        self, output: ProtocolOutput, features: Features, data: EvalData, out_dir: Path
    ) -> list[Path]:
        """PCA colour maps and image | GT | prediction panels of the kept validation examples."""
        from neco.viz import save_overlay_figure, save_pca_figure

        examples = output.examples
        if examples is None:
            return []
        grids = examples.features if examples.features is not None else features(examples.images).cpu()
        return [
            save_pca_figure(examples.images, grids, out_dir / f"{self.name}_pca.png"),
            save_overlay_figure(
                examples.images,
                examples.masks,
                examples.predictions,
                out_dir / f"{self.name}_predictions.png",
                num_classes=data.val.num_classes,
                ignore_index=data.val.ignore_index,
            ),
        ]


_REGISTRY: dict[str, type[Protocol]] = {}


def register_protocol(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: make `cls` available as `neco eval <cls.name>` and `evaluate(cls.name, ...)`."""
    for attribute in ("name", "summary", "settings_class"):
        if not hasattr(cls, attribute):
            raise TypeError(f"protocol {cls.__name__} must define `{attribute}`")
    _REGISTRY[cls.name] = cls
    return cls


def registered_protocols() -> dict[str, type[Protocol]]:
    """The protocols registered so far (see `neco.evaluation.registry` for discovery by name)."""
    return _REGISTRY
