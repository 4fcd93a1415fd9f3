"""`neco text-align`: train Talk2DINO's text-to-patch mapping with the backbone and text encoder frozen.

The method (mapping, head-selected pooling, loss) is plain torch in `neco.method.text_align`; this
module assembles it with Lightning: typed config checked up front, caption embeddings and each image's
per-head pooled features computed once and cached (`text_embeddings.pt`, `image_features.pt`, keyed by
checksums of the encoders and the data), the seeded resumable sampler of `neco train`, atomic periodic
checkpoints with `last.ckpt`, exact resume.

Checkpoints hold only the mapping and the logit scale (the frozen backbone is not stored; its name,
weights file and checksum are), plus the text encoder spec (and, for a config-built tower, its
weights): `neco eval openvocab --mapping CKPT` reads them (`load_text_align`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from neco.backbones.loading import load_backbone
from neco.data.captions import build_caption_dataset
from neco.evaluation.blocks.transforms import to_input
from neco.method.text_align import (
    HeadSelectInfoNCE,
    TextToPatchMapping,
    cls_patch_attention,
    head_pooled_embeddings,
)
from neco.method.text_checkpoint import FORMAT, load_text_align, read_text_align
from neco.method.text_encoder import TextEncoder
from neco.training import checkpoint as ckpt
from neco.training.datamodule import EpochSampler
from neco.training.run import (
    TrainResult,
    build_trainer,
    device_count,
    resolve_accelerator,
    resolve_precision,
    trained_metrics,
)
from neco.training.text_align_config import TextAlignConfig
from neco.utils.io import atomic_torch_save, ensure_writable_dir, write_json
from neco.utils.logging import get_logger
from neco.utils.settings import validate

__all__ = [
    "TextAlignConfig",
    "TextAlignModule",
    "TextAlignResult",
    "train_text_align",
    "load_text_align",
    "caption_embeddings",
]


class _EmbeddedPairs(Dataset):
    """Sampler keys (epoch, position, index) -> (image or its pooled features, caption embedding, epoch, position).

    With `pooled` (num_images, H, D) the image is replaced by its cached per-head embeddings.
    """

    def __init__(self, pairs: Any, embeddings: torch.Tensor, pooled: torch.Tensor | None = None) -> None:
        self.pairs, self.embeddings, self.pooled = pairs, embeddings, pooled

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        epoch, position, index = key
        if self.pooled is not None:
            return self.pooled[int(self.pairs.image_of[index])], self.embeddings[index], epoch, position
        image, caption = self.pairs[index]
        return image, self.embeddings[caption], epoch, position


class _Images(Dataset):
    """Each image of the pairs once (for the feature cache)."""

    def __init__(self, pairs: Any) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        from neco.data.base import load_rgb

        return self.pairs.transform(load_rgb(self.pairs.images[index]))


class TextAlignModule(L.LightningModule):
    """The mapping and the loss's logit scale, trained against a frozen backbone's head-pooled patches."""

    def __init__(
        self, backbone: torch.nn.Module, text_dim: int, config: TextAlignConfig, meta: dict[str, Any]
    ) -> None:
        super().__init__()
        self.config, self.meta = config, meta
        self.mapping = TextToPatchMapping(text_dim, int(backbone.embed_dim), config.hidden_dim)
        self.loss_fn = HeadSelectInfoNCE(config.init_temperature)
        # Not a submodule: frozen, never in the optimizer, the checkpoints or DDP's gradient sync.
        object.__setattr__(self, "backbone", backbone.eval().requires_grad_(False))
        self.num_register_tokens = int(getattr(backbone, "num_register_tokens", 0))
        self.data_position: tuple[int, int] = (0, 0)
        self._resume_position: tuple[int, int] | None = None
        self.text_tower: dict[str, torch.Tensor] | None = None
        self.dataset: Dataset | None = None

    def on_fit_start(self) -> None:
        """Move the frozen backbone with the module (Lightning moves only submodules)."""
        self.backbone.to(self.device)

    @torch.no_grad()
    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Per-head CLS-attention-weighted patch averages (B, H, D) of normalised images (B, 3, S, S)."""
        patches = self.backbone.forward_features(images)["x_norm_patchtokens"]  # (B, N, D)
        weights = cls_patch_attention(self.backbone.get_last_self_attention(images), self.num_register_tokens)
        return head_pooled_embeddings(patches, weights)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Loss of one batch of (image (B, 3, S, S) or cached pooled features (B, H, D), caption embedding) pairs."""
        images, text, epoch, position = batch
        pooled = self.pooled(images) if images.ndim == 4 else images.float()
        loss, diagnostics = self.loss_fn(pooled, self.mapping(text.float()))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"text-align loss is {loss.item()} at step {self.global_step}")
        self.data_position = (int(epoch[0]), int(position.max()) + 1)
        self.log("loss", loss, prog_bar=True)
        for name, value in diagnostics.items():
            self.log(name, value)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the mapping and the logit scale, constant learning rate."""
        return torch.optim.AdamW(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def train_dataloader(self) -> DataLoader:
        """The seeded sampler of `neco train` over (image, caption) pairs, continuing after a resume."""
        assert self.dataset is not None
        trainer = self.trainer
        sampler = EpochSampler(
            len(self.dataset),
            self.config.batch_size,
            self.config.seed,
            trainer.global_rank,
            trainer.world_size,
        )
        position, self._resume_position = self._resume_position, None
        if position is not None:
            sampler.set_epoch(position[0])
            sampler.resume(*position)
        return DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            num_workers=self.config.num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.config.num_workers > 0,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the format, the run's identity (backbone, text encoder, sizes) and the data position."""
        checkpoint["format"] = FORMAT
        checkpoint["text_align"] = {**self.meta, "step": int(self.global_step)}
        checkpoint["data_position"] = {"epoch": self.data_position[0], "position": self.data_position[1]}
        if self.text_tower is not None:
            checkpoint["text_tower"] = self.text_tower

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Continue the data stream where the checkpoint stopped."""
        position = checkpoint.get("data_position")
        if position is not None:
            self._resume_position = (int(position["epoch"]), int(position["position"]))
            self.data_position = self._resume_position


# What a run leaves: the summary `neco train` returns (folder, last checkpoint, step, metrics, ...).
TextAlignResult = TrainResult


def _digest(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _cached(
    cache: Path | None, key: dict[str, Any], name: str, other: str, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """`compute()`, or the tensor `name` that `cache` holds for the same `key` (the cache is written atomically)."""
    if cache is not None and cache.is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if isinstance(stored, dict) and stored.get("key") == key:
            return stored[name]
        get_logger("neco.text_align").info(f"{cache}: made {other}; recomputing")
    value = compute()
    if cache is not None:
        atomic_torch_save({"key": key, name: value}, cache)
    return value


def caption_embeddings(
    encoder: TextEncoder, captions: list[str], cache: Path | None, device: torch.device
) -> torch.Tensor:
    """float16 CPU embeddings (len(captions), E), read from `cache` when it matches encoder and captions."""

    def compute() -> torch.Tensor:
        encoder.to(device)
        embeddings = encoder.encode(captions).to("cpu", torch.float16)
        encoder.to("cpu")
        return embeddings

    key = {"encoder_sha256": encoder.checksum(), "captions_sha256": _digest(captions)}
    return _cached(cache, key, "embeddings", "by another text encoder or captions", compute)


@torch.no_grad()
def pooled_image_features(
    module: TextAlignModule, pairs: Any, cache: Path | None, device: torch.device, key: dict[str, Any]
) -> torch.Tensor:
    """float16 CPU per-head pooled embeddings (num_images, H, D) of every image, cached like the text.

    The backbone is frozen and the images are not augmented, so each image's pooled embeddings are the
    same at every step: computing them once (as Talk2DINO pre-extracts its features) makes each
    training step a few small matrix products.
    """

    def compute() -> torch.Tensor:
        config = module.config
        loader = DataLoader(_Images(pairs), batch_size=config.batch_size, num_workers=config.num_workers)
        backbone = module.backbone.to(device)
        bf16 = resolve_precision(config, "gpu" if device.type == "cuda" else "cpu") == "bf16-mixed"
        chunks = []
        for images in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                chunks.append(module.pooled(images.to(device)).to("cpu", torch.float16))
        backbone.to("cpu")
        return torch.cat(chunks)

    return _cached(cache, key, "pooled", "from another backbone or images", compute)


def train_text_align(
    config: TextAlignConfig, *, resume: str | None = None, overwrite: bool = False
) -> TrainResult:
    """Train the mapping as `config` says; `resume` is None, 'auto' or a checkpoint file."""
    validate(config)  # again: the dataclass may have been changed since it was made
    log = get_logger("neco.text_align")
    out_dir = ensure_writable_dir(config.out_dir, "--out").resolve()
    checkpoint_dir = ensure_writable_dir(out_dir / "checkpoints", "--out (its checkpoints folder)")
    ckpt.remove_orphan_temporaries(checkpoint_dir)
    ckpt_path = ckpt.resolve_resume(resume, checkpoint_dir, lambda path: read_text_align(path, "--resume"))
    if ckpt_path is None:
        ckpt.check_fresh_start(checkpoint_dir, overwrite)
    # Data and both encoders are checked before any training starts.
    pairs = build_caption_dataset(config.layout, config.data_root, config.split)
    pairs.transform = lambda image: to_input(image, config.input_size)
    L.seed_everything(config.seed, workers=True, verbose=False)
    backbone, identity = load_backbone(config.backbone, weights=config.weights, which=config.which)
    patch = int(backbone.patch_size)
    if config.input_size % patch:
        raise ValueError(
            f"`--input-size` must be a multiple of the patch size {patch} but is {config.input_size}"
        )
    encoder = TextEncoder.from_spec(config.text_spec(), download=config.text_download)
    # every DDP rank runs this before `fit`: each embeds on its own GPU (the caches are written atomically)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if resolve_accelerator(config) == "gpu" else "cpu")
    embeddings = caption_embeddings(encoder, pairs.captions, out_dir / "text_embeddings.pt", device)
    meta = {
        "backbone": identity,
        "text": encoder.spec,
        "text_sha256": encoder.checksum(),
        "text_dim": encoder.embed_dim,
        "patch_dim": int(backbone.embed_dim),
        "hidden_dim": config.hidden_dim if config.hidden_dim is not None else int(backbone.embed_dim),
        "input_size": config.input_size,
        "data": {"layout": config.layout, "root": str(Path(config.data_root).resolve()), **pairs.describe()},
        "config": dataclasses.asdict(config),
    }
    module = TextAlignModule(backbone, encoder.embed_dim, config, meta)
    module.text_tower = encoder.text_state_dict() if encoder.carries_weights() else None
    pooled = None
    if config.cache_features:
        key = {
            "backbone_sha256": identity["sha256"],
            "images_sha256": _digest(f"{path}\0{path.stat().st_size}" for path in pairs.images),
            "input_size": config.input_size,
        }
        pooled = pooled_image_features(module, pairs, out_dir / "image_features.pt", device, key)
    module.dataset = _EmbeddedPairs(pairs, embeddings, pooled)
    if ckpt_path is not None:
        stored = read_text_align(ckpt_path, "--resume")["text_align"]
        for key in ("text_sha256", "patch_dim", "text_dim", "hidden_dim"):
            if stored[key] != meta[key]:
                raise ValueError(
                    f"--resume {ckpt_path}: its {key} is {stored[key]!r} but this run's is {meta[key]!r}"
                )
        if stored["backbone"]["sha256"] != identity["sha256"]:
            raise ValueError(
                f"--resume {ckpt_path}: trained on backbone {stored['backbone']['name']} (other weights)"
            )
    world = device_count(config, resolve_accelerator(config))
    steps_per_epoch = max(1, len(pairs) // (config.batch_size * world))
    max_steps = config.max_steps or config.epochs * steps_per_epoch
    checkpointer = ckpt.PeriodicCheckpoint(
        checkpoint_dir, config.ckpt_every_steps, config.keep_checkpoints, config.stop_at_step
    )
    trainer = build_trainer(config, out_dir, [checkpointer], max_steps)
    if trainer.is_global_zero:
        write_json(meta, out_dir / "text_align.json")
        where = f"resuming from {ckpt_path}" if ckpt_path else "new run"
        log.info(
            f"text-align: {len(pairs)} captions of {len(pairs.images)} images, {max_steps} steps "
            f"({steps_per_epoch} per epoch) into {out_dir} ({where})"
        )
    trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
    last = checkpoint_dir / ckpt.LAST_NAME
    return TrainResult(
        out_dir=out_dir,
        checkpoint_dir=checkpoint_dir,
        last_checkpoint=last.resolve() if last.exists() else None,
        global_step=int(trainer.global_step),
        interrupted=checkpointer.interrupted,
        metrics=trained_metrics(trainer),
        stop_signal=checkpointer.stop_signal,
    )
