"""Training data: image files -> multi-crop views + overlap boxes, resumable and deterministic.

Every crop draw comes from a generator seeded by (seed, epoch, image index), and the order of images
in an epoch from one seeded by (seed, epoch); so a run resumed from a checkpoint sees exactly the
batches the uninterrupted run would have seen, whatever the number of loader workers. Each process
(DDP rank) reads its own shard of the epoch's order. Unreadable images are skipped by the image
source (`neco.data.build_image_source`): the next readable file is used, counted and reported with
its path; the run fails only when more than `data.max_bad_images` of the files tried (and more than
5) are bad.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from neco.training.config import DataConfig, TrainConfig
from neco.utils.logging import get_logger

__all__ = ["TrainImages", "EpochSampler", "NeCoDataModule", "build_training_source", "collate_with_position"]

BUDGET_OPTION = "data.max_bad_images"  # the config key behind `max_bad_fraction`, named in its errors


def _seed_of(*parts: int) -> int:
    """A 63-bit seed mixing integers (splitmix64), so nearby keys give unrelated streams."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return value >> 1


def build_training_source(config: TrainConfig, out_dir: str | Path | None = None) -> Any:
    """The `ImageSource` of `data` (kind + root); synthetic scenes are generated first when needed."""
    from neco.data import build_image_source

    data = config.data
    if data.kind == "synthetic":
        from neco.data.synthetic import write_scenes

        root = Path(data.root) if data.root else Path(out_dir or config.run.out_dir) / "scenes"
        write_scenes(
            root,
            num_train=data.synthetic_images,
            num_val=4,
            size=data.synthetic_size,
            seed=config.run.seed,
            progress=False,
        )
        return build_image_source(
            "voc", root, split="train", max_bad_fraction=data.max_bad_images, budget_option=BUDGET_OPTION
        )
    if not data.root:
        raise ValueError(f"`data.root` must be set to the {data.kind} image folder but is null")
    try:
        return build_image_source(
            data.kind,
            Path(data.root).expanduser(),
            max_bad_fraction=data.max_bad_images,
            budget_option=BUDGET_OPTION,
        )
    except FileNotFoundError as err:
        raise FileNotFoundError(f"`data.root` (data.kind={data.kind}): {err}") from err


class EpochSampler(Sampler):
    """Seeded per-epoch order of image indices, sharded across ranks; yields `(epoch, position, index)`.

    `position` counts this rank's samples in the epoch, so a checkpoint can record where the stream
    stopped and `resume(epoch, position)` continues right there. Each rank gets
    `steps_per_epoch * batch_size` samples (the order is tiled when there are too few images).
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if num_items < 1:
            raise ValueError(f"`num_items` must be >= 1 but is {num_items}")
        if not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, {world_size}) but is {rank}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._skip: tuple[int, int] | None = None
        self.steps_per_epoch = max(1, num_items // (batch_size * world_size))

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = int(epoch)

    def resume(self, epoch: int, position: int) -> None:
        """Make the next iteration of `epoch` start at `position` (once)."""
        self._skip = (int(epoch), int(position))

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def order(self, epoch: int) -> list[int]:
        """This rank's image indices for `epoch`."""
        generator = torch.Generator().manual_seed(_seed_of(self.seed, epoch))
        total = self.steps_per_epoch * self.batch_size * self.world_size
        repeats = math.ceil(total / self.num_items)
        order = torch.cat([torch.randperm(self.num_items, generator=generator) for _ in range(repeats)])[
            :total
        ]
        return order[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.epoch
        start = 0
        if self._skip is not None and self._skip[0] == epoch:
            start = self._skip[1]
        self._skip = None
        order = self.order(epoch)
        for position in range(start, len(order)):
            yield epoch, position, order[position]


class TrainImages(Dataset):
    """An image source -> multi-crop samples; the crop draw of key (epoch, position, index) is deterministic.

    Unreadable files are skipped by the source (the next readable file is used, counted, warned
    about once; too many raise `UnreadableImagesError`). Each sample's `skipped` lists the files this
    process found unreadable while loading it, so the main process counts the skips of every worker.
    """

    def __init__(self, source: Any, crops: Any, seed: int) -> None:
        if len(source) == 0:
            raise ValueError("`source` must hold at least one image but is empty")
        self.source = source
        self.crops = crops
        self.seed = seed
        self.num_small = 0
        self._reported: set[str] = set()  # unreadable files already put in a sample, this process

    def _newly_skipped(self) -> list[str]:
        """Unreadable files the source met since the last call (in this process)."""
        if getattr(self.source, "num_bad", 0) == len(self._reported):
            return []
        new = sorted({str(p) for p in self.source.bad_files} - self._reported)
        self._reported.update(new)
        return new

    def __len__(self) -> int:
        return len(self.source)

    def _note_small(self, image: Image.Image, index: int) -> None:
        """Count images smaller than a global crop (they are upsampled) and say so once."""
        size = getattr(self.crops, "global_size", None)
        if size is None or (image.height >= size[0] and image.width >= size[1]):
            return
        self.num_small += 1
        if self.num_small == 1:
            path = self.source.files[index] if hasattr(self.source, "files") else index
            get_logger("neco.training").warning(
                f"image {path} ({image.width}x{image.height}) is smaller than the global crop "
                f"({size[1]}x{size[0]}); such images are upsampled by the crops (counted, shown once)"
            )

    def __getitem__(self, key: tuple[int, int, int] | int) -> dict[str, Any]:
        epoch, position, index = key if isinstance(key, tuple) else (0, int(key), int(key))
        image = self.source.load(index)
        self._note_small(image, index)
        generator = torch.Generator().manual_seed(_seed_of(self.seed, epoch, index))
        sample = self.crops(image, generator)
        sample["epoch"] = epoch
        sample["position"] = position
        sample["skipped"] = self._newly_skipped()
        return sample


def collate_with_position(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`collate_multicrop` plus the epoch and in-epoch positions of the samples (for exact resume) and the
    unreadable files skipped while loading them (`skipped`, a list of paths)."""
    from neco.method.crops import collate_multicrop

    batch = collate_multicrop(samples)
    batch["epoch"] = torch.tensor([s["epoch"] for s in samples], dtype=torch.int64)
    batch["position"] = torch.tensor([s["position"] for s in samples], dtype=torch.int64)
    batch["skipped"] = [path for s in samples for path in s.get("skipped", ())]
    return batch


def build_crop_sampler(data: DataConfig) -> Any:
    """The `MultiCropSampler` described by `data.crops` (its fields are the sampler's arguments)."""
    from neco.method.crops import MultiCropSampler

    return MultiCropSampler(**dataclasses.asdict(data.crops))


class NeCoDataModule(L.LightningDataModule):
    """Training images + multi-crop sampling + this rank's shard, resumable mid-epoch."""

    def __init__(self, config: TrainConfig, out_dir: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.out_dir = out_dir
        self.dataset: TrainImages | None = None
        self.sampler: EpochSampler | None = None
        # Unreadable training images skipped in this process's run, whichever loader worker met them.
        self.skipped_images: set[str] = set()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the unreadable files the loader skipped for this batch (on the host, before the copy).

        A DataModule hook, not the LightningModule's: Lightning warns at every run when the module
        overrides a data hook while a DataModule is given.
        """
        if isinstance(batch, dict):
            self.skipped_images.update(batch.pop("skipped", ()))
        return batch

    def prepare_data(self) -> None:
        """Generate synthetic scenes once (rank 0) before every rank lists the files."""
        if self.config.data.kind == "synthetic":
            build_training_source(self.config, self.out_dir)

    def setup(self, stage: str | None = None) -> None:
        """List the images and build the dataset (every rank)."""
        if self.dataset is None:
            source = build_training_source(self.config, self.out_dir)
            self.dataset = TrainImages(source, build_crop_sampler(self.config.data), self.config.run.seed)

    def train_dataloader(self) -> DataLoader:
        """A loader over this rank's shard, continuing from the resume position if there is one."""
        self.setup()
        assert self.dataset is not None
        rank, world = 0, 1
        trainer = self.trainer
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
        data = self.config.data
        self.sampler = EpochSampler(len(self.dataset), data.batch_size, self.config.run.seed, rank, world)
        module = trainer.lightning_module if trainer is not None else None
        position = (
            module.pop_resume_position()
            if module is not None and hasattr(module, "pop_resume_position")
            else None
        )
        if position is not None:
            self.sampler.set_epoch(position[0])
            self.sampler.resume(*position)
        return DataLoader(
            self.dataset,
            batch_size=data.batch_size,
            sampler=self.sampler,
            num_workers=data.num_workers,
            collate_fn=collate_with_position,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=data.num_workers > 0,
            # Own generator: creating the loader iterator must not consume the global torch RNG.
            generator=torch.Generator().manual_seed(self.config.run.seed),
        )
