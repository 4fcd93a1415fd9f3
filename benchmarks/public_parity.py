"""neco's NeCo training step side by side with the public NeCo code (vpariza/NeCo, `../shared/refs`).

Both codes get the same initial weights (student, teacher, both heads), the same multi-crop batches
(neco's `MultiCropSampler` crops and overlap boxes, converted to the public `(crops, {"gc", "all"})`
layout) and, where their random draws differ by design, the same references. Three stages:

  a  one step: loss and the gradient of every trainable tensor (backbone and head), for the tiny ViT
     (batch and queue references) and ViT-S/14 with and without registers (queue, published head,
     references and local crops; 224 px global crops);
  b  N optimizer + EMA steps through each code's own Lightning module and trainer, with neco set to the
     public rules (`optim.decay_tokens=true`, `model.teacher_head_init=independent`): student and
     teacher weights after N steps, and neco again with the public EMA timing;
  c  the demo's toy recipe for `--steps` steps in both codes from the shipped `vit_tiny_scenes`, each
     with its own rules (draws, EMA timing, decay, head init, drop-path): loss, teacher P max, mean
     patch cosine along the run, and Hummingbird before / after.

The public code runs unmodified: `XFORMERS_DISABLED=1`, its queue's `.cuda()` neutralised during
`on_train_epoch_start`, its architecture factory pointed at the neco backbone's sizes, and the
modules only its evaluation code needs (scikit-image, joblib, scikit-learn) stubbed when missing.

Examples:
  python benchmarks/public_parity.py --stages a b --results benchmarks/results/public_parity.json
  python benchmarks/public_parity.py --stages c --steps 200 --out runs/parity \
      --results benchmarks/results/public_parity_toy.json
  python benchmarks/public_parity.py --from-results benchmarks/results/public_parity.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
REFS_SUBPATH = Path("shared") / "refs" / "neco-public"


# --- loading the public code ------------------------------------------------------------------------


def find_public_code() -> Path:
    """The public NeCo checkout: `$NECO_PUBLIC_REFS`, else `shared/refs/neco-public` beside a parent of the repo."""
    env = os.environ.get("NECO_PUBLIC_REFS")
    if env:
        path = Path(env)
        if not (path / "src" / "neco.py").is_file():
            raise FileNotFoundError(
                f"NECO_PUBLIC_REFS={env}: expected the public NeCo code (src/neco.py) there"
            )
        return path
    for parent in ROOT.parents:
        candidate = parent / REFS_SUBPATH
        if (candidate / "src" / "neco.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"the public NeCo code was not found as ../{REFS_SUBPATH} beside the repository (or any parent); "
        "set NECO_PUBLIC_REFS to its folder"
    )


def _unavailable(name: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{name} is stubbed by benchmarks/public_parity.py (only the public evaluation uses it)"
        )

    return fail


def _stub_missing_modules() -> None:
    """Install placeholders for modules that only the public evaluation code imports, when not installed."""
    stubs = {
        "skimage": {},
        "skimage.measure": {"label": _unavailable("skimage.measure.label")},
        "joblib": {"Parallel": _unavailable("joblib.Parallel"), "delayed": _unavailable("joblib.delayed")},
        "sklearn": {},
        "sklearn.preprocessing": {"StandardScaler": _unavailable("sklearn.preprocessing.StandardScaler")},
    }
    missing = {name.split(".")[0] for name in stubs}
    missing = {top for top in missing if top not in sys.modules and importlib.util.find_spec(top) is None}
    for name, attrs in stubs.items():
        top = name.split(".")[0]
        if top not in missing:
            continue
        module = types.ModuleType(name)
        module._neco_parity_stub = True  # type: ignore[attr-defined]
        # A spec, so that importlib.util.find_spec (torch._dynamo calls it) treats the stub like a module.
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        module.__dict__.update(attrs)
        sys.modules[name] = module
        if "." in name:
            setattr(sys.modules[top], name.split(".")[1], module)


def load_public(path: Path | None = None) -> types.SimpleNamespace:
    """Import the public `src.neco` (the LightningModule), `src.neco_transforms` and `src.models.vit_v2`."""
    path = path or find_public_code()
    os.environ["XFORMERS_DISABLED"] = "1"  # the CPU path of its attention and blocks
    _stub_missing_modules()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import src.neco as neco_module  # type: ignore[import-not-found]
    import src.neco_transforms as transforms  # type: ignore[import-not-found]
    from src.layers import MemEffAttention, NestedTensorBlock  # type: ignore[import-not-found]
    from src.models import vit_v2  # type: ignore[import-not-found]

    namespace = types.SimpleNamespace(
        path=path,
        module=neco_module,
        NeCo=neco_module.NeCo,
        transforms=transforms,
        vit_v2=vit_v2,
        Block=NestedTensorBlock,
        Attention=MemEffAttention,
    )
    namespace.PublicNeCo = _public_class(namespace)
    return namespace


@contextlib.contextmanager
def _no_cuda() -> Iterator[None]:
    """`Tensor.cuda()` returns the tensor itself (the public queue is moved with `.cuda()`)."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


# --- the recipe both codes run ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Settings shared by both codes (neco config keys in comments)."""

    backbone: str = "vit_tiny_scenes"  # model.backbone
    pretrained: bool = True  # model.pretrained (registry weights; the tiny start is shipped)
    head_hidden: int = 256  # model.head_hidden_dim
    head_out: int = 64  # model.head_out_dim
    drop_path: float = 0.0  # model.drop_path_rate (public: its student's, 0.1 hard-coded, when > 0)
    batch_size: int = 2
    global_size: int = 64
    local_size: int = 32
    num_local: int = 4
    roi_size: int = 5
    queue_size: int = 0  # 0: batch references (public is_queue_usable=False)
    steepness_student: float = 100.0
    steepness_teacher: float = 100.0
    lr_backbone: float = 1e-5
    lr_head: float = 1e-4
    weight_decay: float = 0.04
    weight_decay_end: float = 0.5
    momentum: float = 0.9995
    momentum_end: float = 1.0
    steps: int = 1
    public_rules: bool = True  # neco with optim.decay_tokens=true, model.teacher_head_init=independent


TOY = Recipe(
    # The demo's training (neco.demo.run.train_config on the tiny_cpu preset): 96 px scenes.
    batch_size=16,
    drop_path=0.1,
    queue_size=512,
    steepness_teacher=300.0,
    lr_backbone=5e-5,
    momentum=0.99,
    steps=200,
    public_rules=False,
)


def neco_config(recipe: Recipe, scenes: Path | None, out_dir: Path) -> Any:
    """The neco `TrainConfig` of `recipe` on the tiny_cpu preset."""
    from neco.training.config import load_config

    overrides = [
        f"model.backbone={recipe.backbone}",
        f"model.pretrained={str(recipe.pretrained).lower()}",
        "model.weights=null",
        f"model.drop_path_rate={recipe.drop_path}",
        f"model.head_hidden_dim={recipe.head_hidden}",
        f"model.head_out_dim={recipe.head_out}",
        f"model.teacher_head_init={'independent' if recipe.public_rules else 'copy'}",
        f"data.batch_size={recipe.batch_size}",
        f"data.crops.global_size={recipe.global_size}",
        f"data.crops.local_size={recipe.local_size}",
        f"data.crops.num_local={recipe.num_local}",
        "data.num_workers=0",
        f"loss.steepness_student={recipe.steepness_student}",
        f"loss.steepness_teacher={recipe.steepness_teacher}",
        f"loss.reference_mode={'queue' if recipe.queue_size else 'batch'}",
        f"loss.queue_size={max(recipe.queue_size, 1)}",
        f"loss.roi_size={recipe.roi_size}",
        f"optim.lr_backbone={recipe.lr_backbone}",
        f"optim.lr_head={recipe.lr_head}",
        f"optim.weight_decay={recipe.weight_decay}",
        f"optim.weight_decay_end={recipe.weight_decay_end}",
        f"optim.momentum={recipe.momentum}",
        f"optim.momentum_end={recipe.momentum_end}",
        f"optim.decay_tokens={str(recipe.public_rules).lower()}",
        f"optim.max_steps={recipe.steps}",
        "optim.epochs=1000",
        f"run.out_dir={out_dir}",
        "run.precision=fp32",
        "run.accelerator=cpu",
        "run.devices=1",
        "run.progress=false",
        "run.log_every=1",
        "run.diagnostics_every=1000000",
    ]
    if scenes is not None:
        overrides += ["data.kind=voc", f"data.root={scenes}"]
    return load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides)


def public_state(backbone: torch.nn.Module, head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """neco backbone + head state -> the public model's keys (`mlp.i` -> `projection_head.i`).

    The backbone (`model.` + timm names) goes through neco's own converter to the official DINOv2 names;
    for register models that gives the folded CLS token and a zero CLS position row, the same sum the
    public ViT adds. There is no `mask_token` (timm has none; the public one never gets a gradient).
    """
    from neco.backbones.formats import convert

    state = convert(backbone.state_dict(), to="official", source="timm")
    state.update({"projection_head." + k.split(".", 1)[1]: v for k, v in head.state_dict().items()})
    return state


def _load_public(net: torch.nn.Module, state: dict[str, torch.Tensor], *, head: bool = True) -> None:
    """Load neco's converted state into a public model: only `mask_token` (and the head if not copied) may stay."""
    result = net.load_state_dict(state, strict=False)
    allowed = {"mask_token"}
    missing = [
        k for k in result.missing_keys if k not in allowed and (head or not k.startswith("projection_head."))
    ]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"public keys not loaded: {missing}; unexpected: {result.unexpected_keys}")


def neco_name(public_name: str) -> tuple[str, str]:
    """A public parameter name -> (part, key): part "backbone" (key: official name) or "head" (neco name)."""
    if public_name.startswith("projection_head."):
        return "head", "mlp." + public_name.split(".", 1)[1]
    return "backbone", public_name


def neco_official_grads(backbone: Any) -> dict[str, torch.Tensor]:
    """The gradients of a neco backbone in the official DINOv2 layout (neco's converter, then the CLS row).

    With registers timm stores `cls_token + pos_embed[:, :1]` as one tensor, so the official CLS token and
    CLS position row both have its gradient; the converter (made for weights) writes a zero row there.
    """
    from neco.backbones.formats import convert

    grads = {name: p.grad for name, p in backbone.named_parameters() if p.grad is not None}
    official = convert(grads, to="official", source="timm")
    if backbone.num_register_tokens and {"cls_token", "pos_embed"} <= official.keys():
        official["pos_embed"] = torch.cat([official["cls_token"], official["pos_embed"][:, 1:]], dim=1)
    return official


def canonical_weights(backbone: torch.nn.Module, head: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """Backbone + head weights in one layout for either code: neco's `canonical_tensors` + public head names.

    `head=None`: `backbone` is a public model (head inside). The canonical layout folds the CLS position row
    of register models into the CLS token (the features see only the sum) and has no `mask_token`.
    """
    from neco.backbones.loading import canonical_tensors

    if head is None:
        state = backbone.state_dict()
        body = {k: v for k, v in state.items() if not k.startswith("projection_head.")}
        heads = {k: v for k, v in state.items() if k.startswith("projection_head.")}
    else:
        body = backbone.state_dict()
        heads = {"projection_head." + k.split(".", 1)[1]: v for k, v in head.state_dict().items()}
    return {k: v.detach().double() for k, v in {**canonical_tensors(body), **heads}.items()}


class PublicTraining:
    """Builds the public `NeCo` LightningModule for a recipe, with the neco module's weights."""

    def __init__(self, pub: types.SimpleNamespace) -> None:
        self.pub = pub

    def build(self, recipe: Recipe, module: Any, *, copy_teacher_head: bool = True) -> Any:
        """The public module with `module`'s student, teacher and heads (teacher head: an own draw if not copied)."""
        pub = self.pub
        config = module.student.config

        def factory(patch_size: int, drop_path_rate: float = 0.0, **kwargs: Any) -> torch.nn.Module:
            # The public student asks for drop-path 0.1; the recipe decides (0 makes a step deterministic).
            return pub.vit_v2.DinoVisionTransformer(
                img_size=config.pos_grid * config.patch_size,
                patch_size=patch_size,
                embed_dim=config.embed_dim,
                depth=config.depth,
                num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio,
                init_values=config.layerscale_init,
                block_fn=partial(pub.Block, attn_class=pub.Attention),
                drop_path_rate=recipe.drop_path if drop_path_rate > 0 else 0.0,
                **kwargs,
            )

        saved = pub.module.vit_small_v2
        pub.module.vit_small_v2 = factory
        try:
            public = pub.PublicNeCo(
                gpus=1,
                num_samples=recipe.steps * recipe.batch_size,
                batch_size=recipe.batch_size,
                max_epochs=1,
                lr_heads=recipe.lr_head,
                lr_backbone=recipe.lr_backbone,
                final_lr=0.0,
                weight_decay_end=recipe.weight_decay_end,
                weight_decay=recipe.weight_decay,
                projection_hidden_dim=recipe.head_hidden,
                projection_feat_dim=recipe.head_out,
                n_layers_projection_head=3,
                crops_for_assign=[0, 1],
                nmb_crops=[2, recipe.num_local],
                num_classes=21,
                val_iters=1,
                num_clusters_kmeans=[21],
                use_teacher=True,
                loss_mask="all",
                queue_length=recipe.queue_size,
                momentum_teacher=recipe.momentum,
                momentum_teacher_end=recipe.momentum_end,
                exclude_norm_bias=True,
                optimizer="adamw",
                patch_size=config.patch_size,
                roi_align_kernel_size=recipe.roi_size,
                arch="vit-small",
                arch_version="v2",
                student_steepness=recipe.steepness_student,
                teacher_steepness=recipe.steepness_teacher,
                num_register_tokens=config.num_register_tokens,
                sort_net="bitonic",
                is_queue_usable=recipe.queue_size > 0,
                sim_dist="cosine",
            )
        finally:
            pub.module.vit_small_v2 = saved
        _load_public(public.model, public_state(module.student, module.student_head))
        # Without `copy_teacher_head` the public teacher head keeps its own draw.
        teacher_state = public_state(module.teacher, module.teacher_head)
        if not copy_teacher_head:
            teacher_state = {k: v for k, v in teacher_state.items() if not k.startswith("projection_head.")}
        _load_public(public.teacher, teacher_state, head=copy_teacher_head)
        public.recorder = Recorder(public)
        return public


def _public_class(pub: types.SimpleNamespace) -> type:
    class PublicNeCo(pub.NeCo):  # type: ignore[misc, name-defined]
        """The public module; only its `.cuda()` queue placement is neutralised (CPU run)."""

        def on_train_epoch_start(self) -> None:
            with _no_cuda():
                super().on_train_epoch_start()

    return PublicNeCo


class Recorder:
    """Wraps the public `compute_knn_perm_mat`: keeps each pair's references and the teacher P statistics."""

    def __init__(self, public: Any) -> None:
        self.references: list[torch.Tensor] = []
        self.perm_max_sum = 0.0
        self.perm_max_rows = 0
        self.student_max_sum = 0.0
        original = public.compute_knn_perm_mat

        def recorded(src: torch.Tensor, tgt: torch.Tensor, sorter: Any) -> torch.Tensor:
            perm = original(src, tgt, sorter)  # (B, K_rank, K_ref, s, s): permuted P[q, ref, rank]
            peak = perm.detach().amax(dim=1)  # (B, K_ref, s, s): max over ranks, as neco's perm_max
            if torch.is_grad_enabled():  # the student call (the teacher's runs under no_grad)
                self.references.append(tgt.detach().flatten(2).transpose(1, 2).clone())  # (B, K, C)
                self.student_max_sum += float(peak.sum())
            else:
                self.perm_max_sum += float(peak.sum())
                self.perm_max_rows += peak.numel()
            return perm

        public.compute_knn_perm_mat = recorded

    def take_step(self) -> dict[str, float]:
        """Teacher / student P max of the calls since the last take (means over rows), and reset."""
        rows = max(self.perm_max_rows, 1)
        out = {"teacher_perm_max": self.perm_max_sum / rows, "student_perm_max": self.student_max_sum / rows}
        self.perm_max_sum = self.student_max_sum = 0.0
        self.perm_max_rows = 0
        return out


# --- batches ---------------------------------------------------------------------------------------


def all_pairs_valid(valid: torch.Tensor) -> bool:
    """True when every (global g, other crop v != g) pair of every sample overlaps: `valid` (B, G, V)."""
    off_diagonal = ~torch.eye(valid.shape[1], valid.shape[2], dtype=torch.bool)
    return bool(valid[:, off_diagonal].all())


def to_public(batch: dict[str, Any]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """neco batch -> public `(crops, {"gc": (B, G, V, 4) in g's frame, "all": (B, V, G, 4) in v's frame})`."""
    if not all_pairs_valid(batch["valid"]):
        raise ValueError(
            "the public code needs every (global, other) crop pair to overlap; resample the batch"
        )
    boxes = batch["boxes"].float()  # (B, G, V, 2, 4)
    return list(batch["views"]), {
        "gc": boxes[:, :, :, 0].clone(),
        "all": boxes[:, :, :, 1].transpose(1, 2).clone(),
    }


def box_difference(
    pub: types.SimpleNamespace, batch: dict[str, Any], global_size: int, local_size: int
) -> float:
    """Largest |neco box - public box| (pixels) when the public `calculate_bboxes` gets neco's crop boxes."""
    num_global, num_views = batch["boxes"].shape[1:3]
    transforms = pub.transforms.NeCoTransforms(
        size_crops=[global_size, local_size],
        nmb_crops=[num_global, num_views - num_global],
        min_scale_crops=[0.25, 0.05],
        max_scale_crops=[1.0, 0.25],
    )
    pairs = ~torch.eye(num_global, num_views, dtype=torch.bool)  # (g, g) is no pair (neco leaves it empty)
    worst = 0.0
    for crops, boxes in zip(batch["crops"].float(), batch["boxes"].float()):
        gc, other = transforms.calculate_bboxes(crops.clone())  # (G, V, 4) in g's frame, (V, G, 4) in v's
        for ours, theirs in ((boxes[:, :, 0], gc), (boxes[:, :, 1], other.transpose(0, 1))):
            worst = max(worst, float((ours - theirs)[pairs].abs().max()))
    return worst


def scenes_loader(config: Any, *, public: bool) -> torch.utils.data.DataLoader:
    """neco's training stream of `config` (seeded crops and order); `public=True` converts each batch."""
    from neco.training.datamodule import (
        EpochSampler,
        TrainImages,
        build_crop_sampler,
        build_training_source,
        collate_with_position,
    )

    dataset = TrainImages(build_training_source(config), build_crop_sampler(config.data), config.run.seed)
    sampler = EpochSampler(len(dataset), config.data.batch_size, config.run.seed)

    def collate(samples: list[dict[str, Any]]) -> Any:
        batch = collate_with_position(samples)
        batch.pop("skipped", None)
        return to_public(batch) if public else batch

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        sampler=sampler,
        num_workers=0,
        collate_fn=collate,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.run.seed),
    )


def fixed_batch(config: Any, seed: int) -> dict[str, Any]:
    """One neco batch of generated scenes with every crop pair overlapping (seeded)."""
    loader = scenes_loader(config, public=False)
    loader.sampler.set_epoch(seed)
    for batch in loader:
        if all_pairs_valid(batch["valid"]):
            batch.pop("epoch", None)
            batch.pop("position", None)
            return batch
    raise RuntimeError("no batch with every crop pair overlapping")


def write_scenes_for(folder: Path, num_train: int, num_val: int, size: int) -> Path:
    """Generated VOC-layout scenes (the demo's generator, seed 0)."""
    from neco.data.synthetic import write_scenes

    return write_scenes(folder, num_train, num_val, size, seed=0, progress=False)


# --- stage a: one step ------------------------------------------------------------------------------


def _neco_module(recipe: Recipe, scenes: Path, out: Path, seed: int) -> Any:
    from neco.training.module import NeCoModule

    torch.manual_seed(seed)
    return NeCoModule(neco_config(recipe, scenes, out))


def _fill_queues(public: Any, module: Any, recipe: Recipe, seed: int) -> None:
    """The same full queue of unit vectors in both codes (public: newest first; neco: a full ring)."""
    generator = torch.Generator().manual_seed(seed + 1)
    vectors = torch.nn.functional.normalize(
        torch.randn(2, recipe.queue_size, recipe.head_out, generator=generator), dim=-1
    )
    public.queue.copy_(vectors)
    public.entries_in_queue = recipe.queue_size
    queue = module.loss_fn.queue
    queue.ensure(2, recipe.head_out, torch.device("cpu"))
    queue.queue.copy_(vectors)
    queue.fill.fill_(recipe.queue_size)
    queue.ptr.zero_()


def _inject(module: Any, references: list[torch.Tensor]) -> Callable[[], int]:
    """Make neco's reference draws return `references` in order (queue and batch mode); returns a counter."""
    import neco.method.loss as loss_module

    position = {"next": 0}

    def take(*args: Any, **kwargs: Any) -> torch.Tensor:
        index = position["next"]
        if index >= len(references):
            raise RuntimeError(f"neco drew more reference sets ({index + 1}) than the public code did")
        position["next"] += 1
        return references[index]

    if module.loss_fn.queue is not None:
        module.loss_fn.queue.sample = take
    loss_module.batch_references = take
    return lambda: position["next"]


@contextlib.contextmanager
def _restore_batch_references() -> Iterator[None]:
    import neco.method.loss as loss_module

    saved = loss_module.batch_references
    try:
        yield
    finally:
        loss_module.batch_references = saved


def _record_neco_references(module: Any) -> list[torch.Tensor]:
    """Record the references neco draws itself (batch mode), without changing them."""
    import neco.method.loss as loss_module

    drawn: list[torch.Tensor] = []
    original = loss_module.batch_references

    def recorded(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(*args, **kwargs)
        drawn.append(out.clone())
        return out

    loss_module.batch_references = recorded
    return drawn


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    diff = float((a - b).abs().max())
    scale = float(b.abs().max())
    return diff, scale, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _grad_table(public: Any, module: Any) -> dict[str, dict[str, float]]:
    """Per public parameter: max |g_neco - g_public|, max |g_public| and their ratio (official layout)."""
    parts = {
        "backbone": neco_official_grads(module.student),
        "head": {n: p.grad for n, p in module.student_head.named_parameters() if p.grad is not None},
    }
    public_names = {neco_name(name) for name, _ in public.model.named_parameters()}
    unmatched = sorted(
        f"{part}:{k}" for part, grads in parts.items() for k in grads if (part, k) not in public_names
    )
    if unmatched:
        raise RuntimeError(f"neco gradients with no public tensor: {unmatched}")
    table = {}
    for name, param in public.model.named_parameters():
        part, key = neco_name(name)
        other = parts[part].get(key)
        if param.grad is None and other is None:
            continue  # no gradient in either code (the public mask token; neco has none)
        if param.grad is None or other is None:
            table[name] = {"max_abs_diff": float("inf"), "max_abs": 0.0, "rel": float("inf")}
            continue
        diff, scale, rel = _max_rel(other, param.grad)
        table[name] = {"max_abs_diff": diff, "max_abs": scale, "rel": rel}
    return table


def one_step(
    pub: types.SimpleNamespace,
    recipe: Recipe,
    scenes: Path,
    out: Path,
    *,
    seed: int = 0,
    inject: bool = True,
    public_pos_embed: bool = False,
) -> dict[str, Any]:
    """Loss and gradients of one step in both codes (stage a); `inject=False` lets neco draw its own references."""
    module = _neco_module(recipe, scenes, out, seed)
    if public_pos_embed:  # the public ViT's interpolation: +0.1 offset, scale_factor, no antialias
        for backbone in (module.student, module.teacher):
            backbone.model.interpolate_offset, backbone.model.interpolate_antialias = 0.1, False
    public = PublicTraining(pub).build(recipe, module)
    public.on_train_epoch_start()
    batch = fixed_batch(module.config, seed)
    if recipe.queue_size:
        _fill_queues(public, module, recipe, seed)
    public.train()
    module.train()
    start = time.perf_counter()
    torch.manual_seed(seed + 2)
    loss_public = public.shared_step(to_public(batch))
    loss_public.backward()
    seconds_public = time.perf_counter() - start
    stats_public = public.recorder.take_step()
    with _restore_batch_references():
        drawn: list[torch.Tensor] = []
        if inject:
            counter = _inject(module, public.recorder.references)
        else:
            drawn = _record_neco_references(module)
        torch.manual_seed(seed + 2)
        start = time.perf_counter()
        loss_neco, diagnostics, _ = module.compute_loss(batch)
        loss_neco.backward()
        seconds_neco = time.perf_counter() - start
    if inject and counter() != len(public.recorder.references):
        raise RuntimeError(
            f"neco drew {counter()} reference sets, the public code {len(public.recorder.references)}"
        )
    boxes = box_difference(pub, batch, recipe.global_size, recipe.local_size)
    grads = _grad_table(public, module)
    worst = max(grads, key=lambda k: grads[k]["rel"])
    result: dict[str, Any] = {
        "backbone": recipe.backbone,
        "registers": int(module.student.num_register_tokens),
        "reference_mode": "queue" if recipe.queue_size else "batch",
        "references": "public draws injected into neco" if inject else "each code draws (same seed)",
        "pos_embed": "public interpolation" if public_pos_embed else "neco (official DINOv2)",
        "crops": f"{recipe.batch_size} images x (2 x {recipe.global_size} px + {recipe.num_local} x {recipe.local_size} px)",
        "roi_size": recipe.roi_size,
        "box_max_abs_diff_px": boxes,
        "loss_public": float(loss_public.detach()),
        "loss_neco": float(loss_neco.detach()),
        "loss_abs_diff": abs(float(loss_public.detach()) - float(loss_neco.detach())),
        "teacher_perm_max_public": stats_public["teacher_perm_max"],
        "teacher_perm_max_neco": diagnostics["teacher_perm_max"],
        "tensors": len(grads),
        "largest_rel_diff": grads[worst]["rel"],
        "largest_rel_tensor": worst,
        "median_rel_diff": float(torch.tensor([g["rel"] for g in grads.values()]).median()),
        "grad_diffs": grads,
        "seconds_public": seconds_public,
        "seconds_neco": seconds_neco,
    }
    if not inject:
        # Same vectors in the same order (values agree to float rounding: the two ViTs' kernels differ).
        same = len(drawn) == len(public.recorder.references) and all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(drawn, public.recorder.references)
        )
        result["references_identical"] = bool(same)
    if recipe.queue_size:
        # The pushed vectors: public rows [0, n) (newest first), neco rows [0, n) of a ring that started at 0.
        pushed = min(10 * recipe.batch_size, recipe.queue_size)
        result["queue_push_identical"] = bool(
            torch.allclose(
                public.queue[:, :pushed], module.loss_fn.queue.queue[:, :pushed], rtol=1e-4, atol=1e-5
            )
        )
    return result


# --- stage b: N optimizer + EMA steps ---------------------------------------------------------------


def _trainer(steps: int, callbacks: list[Any] | None = None, *, public: bool) -> Any:
    if public:
        import pytorch_lightning as pl
    else:
        import lightning as pl
    return pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks or [],
    )


def _public_timing(module: Any) -> None:
    """neco with the public EMA timing: the teacher moves after the forward, before the optimizer step."""
    import lightning as L

    from neco.method.ema import ema_update_

    training_step = module.training_step

    def step_then_ema(batch: Any, batch_idx: int) -> Any:
        loss = training_step(batch, batch_idx)
        momentum = module.current_momentum(module._schedule_step)
        ema_update_(module.teacher, module.student, momentum)
        ema_update_(module.teacher_head, module.student_head, momentum)
        return loss

    module.training_step = step_then_ema
    module.optimizer_step = partial(L.LightningModule.optimizer_step, module)


def _weights_table(
    public: Any,
    nets: dict[str, tuple[torch.nn.Module, torch.nn.Module | None]],
    start: dict[str, dict[str, torch.Tensor]],
) -> dict[str, Any]:
    """Student and teacher after N steps vs the public ones: L2 and max of the difference over the public movement.

    `nets` maps "student" / "teacher" to a neco (backbone, head), or to (public model, None); both sides are
    compared in `canonical_weights`' layout, every tensor of either side matched by name.
    """
    out: dict[str, Any] = {}
    for role, pub_net in (("student", public.model), ("teacher", public.teacher)):
        ours = canonical_weights(*nets[role])
        theirs = canonical_weights(pub_net, None)
        if ours.keys() != theirs.keys():
            raise RuntimeError(f"{role} tensors differ: {sorted(ours.keys() ^ theirs.keys())}")
        diff_sq = moved_sq = 0.0
        max_diff = max_moved = 0.0
        worst, worst_rel = "", -1.0
        for name, ref in theirs.items():
            delta = ours[name] - ref
            moved = ref - start[role][name]
            diff_sq += float((delta**2).sum())
            moved_sq += float((moved**2).sum())
            max_diff = max(max_diff, float(delta.abs().max()))
            max_moved = max(max_moved, float(moved.abs().max()))
            rel = float(delta.norm() / moved.norm()) if float(moved.norm()) > 0 else 0.0
            if rel > worst_rel:
                worst, worst_rel = name, rel
        out[role] = {
            "l2_diff_over_l2_movement": (diff_sq**0.5) / (moved_sq**0.5) if moved_sq > 0 else 0.0,
            "max_abs_diff": max_diff,
            "max_movement": max_moved,
            "worst_tensor": worst,
            "worst_tensor_l2_rel": worst_rel,
        }
    return out


@torch.no_grad()
def _nudge(model: torch.nn.Module) -> None:
    """Move every parameter by one float32 ulp (towards +inf): a rounding-level perturbation."""
    for param in model.parameters():
        param.copy_(torch.nextafter(param, torch.full_like(param, float("inf"))))


def n_steps(
    pub: types.SimpleNamespace, recipe: Recipe, scenes: Path, out: Path, *, seed: int = 0
) -> dict[str, Any]:
    """Stage b: `recipe.steps` steps of each code's Lightning module on the same batches and references.

    Also runs the public code a second time from weights nudged by one float32 ulp (`public_ulp_control`):
    how far rounding-level differences alone carry after N AdamW steps (Adam divides each gradient by its
    own running magnitude, so elements whose gradient is ~0, like the key bias, turn noise into steps).
    """
    module = _neco_module(recipe, scenes, out, seed)
    timing = copy.deepcopy(module)
    public = PublicTraining(pub).build(recipe, module)
    control = PublicTraining(pub).build(recipe, module)
    _nudge(control.model)
    _nudge(control.teacher)
    start = {
        "student": canonical_weights(public.model, None),
        "teacher": canonical_weights(public.teacher, None),
    }
    config = module.config
    t0 = time.perf_counter()
    _trainer(recipe.steps, public=True).fit(public, train_dataloaders=scenes_loader(config, public=True))
    seconds_public = time.perf_counter() - t0
    references = public.recorder.references
    results: dict[str, Any] = {
        "backbone": recipe.backbone,
        "steps": recipe.steps,
        "reference_mode": "queue" if recipe.queue_size else "batch",
        "settings": "public rules: optim.decay_tokens=true, model.teacher_head_init=independent (weights copied)",
        "lr_backbone": recipe.lr_backbone,
        "lr_head": recipe.lr_head,
        "momentum": recipe.momentum,
        "seconds_public": seconds_public,
    }
    for label, candidate in (("neco", module), ("neco_public_ema_timing", timing)):
        if label == "neco_public_ema_timing":
            _public_timing(candidate)
        with _restore_batch_references():
            counter = _inject(candidate, references)
            t0 = time.perf_counter()
            _trainer(recipe.steps, public=False).fit(
                candidate, train_dataloaders=scenes_loader(config, public=False)
            )
        if counter() != len(references):
            raise RuntimeError(f"{label} drew {counter()} reference sets, the public code {len(references)}")
        nets = {
            "student": (candidate.student, candidate.student_head),
            "teacher": (candidate.teacher, candidate.teacher_head),
        }
        results[label] = _weights_table(public, nets, start)
        results[label]["seconds"] = time.perf_counter() - t0
    # The control draws its own queue references: give it the first run's (its queue holds the same vectors).
    control_refs = iter(references)
    original = control.compute_knn_perm_mat

    def fixed_refs(src: torch.Tensor, tgt: torch.Tensor, sorter: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            fixed_refs.current = next(control_refs)  # type: ignore[attr-defined]
        ref = fixed_refs.current  # type: ignore[attr-defined]
        grid = ref.transpose(1, 2).reshape(tgt.shape)  # (B, C, s, s) as the public code shapes them
        return original(src, grid, sorter)

    control.compute_knn_perm_mat = fixed_refs
    _trainer(recipe.steps, public=True).fit(control, train_dataloaders=scenes_loader(config, public=True))
    results["public_ulp_control"] = _weights_table(
        public,
        {"student": (control.model, None), "teacher": (control.teacher, None)},
        start,
    )
    return results


# --- stage c: the toy recipe, each code with its own rules ------------------------------------------


class _Curves:
    """Per-step loss / teacher P max and, every `every` steps, the teacher's mean patch cosine (a Lightning callback)."""

    def __init__(self, every: int, public: bool) -> None:
        self.every, self.public = every, public
        self.rows: list[dict[str, float]] = []

    def record(self, step: int, loss: float, perm: float) -> None:
        self.rows.append({"step": step, "loss": loss, "teacher_perm_max": perm})

    @torch.no_grad()
    def cosine(self, teacher: torch.nn.Module, view: torch.Tensor) -> float:
        from neco.method.diagnostics import mean_pairwise_cosine

        tokens = teacher.forward_features(view)["x_norm_patchtokens"]
        flat = tokens.reshape(-1, tokens.shape[-1]).float()
        if flat.shape[0] > 2048:  # the subsample neco's trainer logs
            flat = flat[torch.linspace(0, flat.shape[0] - 1, 2048).long()]
        return float(mean_pairwise_cosine(flat))


def _curve_callback(curves: _Curves, *, public: bool) -> Any:
    if public:
        import pytorch_lightning as pl
    else:
        import lightning as pl

    class Callback(pl.Callback):
        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            step = trainer.global_step  # after the optimizer step
            if step % curves.every == 0 or step == trainer.max_steps:
                view = batch[0][0] if public else batch["views"][0]
                was = module.teacher.training
                module.teacher.eval()
                curves.rows[-1]["patch_cosine"] = curves.cosine(module.teacher, view)
                module.teacher.train(was)

    return Callback()


def _evaluate(model: torch.nn.Module, scenes: Path, seeds: tuple[int, ...]) -> dict[str, Any]:
    from neco.data import build_segmentation_dataset
    from neco.demo.run import DemoConfig, evaluate_backbone

    cfg = DemoConfig(eval_seeds=seeds, progress=False)
    train_set = build_segmentation_dataset("scenes", scenes, "train")
    val_set = build_segmentation_dataset("scenes", scenes, "val")
    return evaluate_backbone(model.eval(), train_set, val_set, cfg, "parity", protocols=("hummingbird",))[
        "scores"
    ]["hummingbird"]


def _as_neco_backbone(public_net: torch.nn.Module, like: torch.nn.Module) -> torch.nn.Module:
    """A copy of the neco backbone `like` holding a public model's backbone (official keys, loaded strictly)."""
    from neco.backbones.loading import load_weights

    backbone = copy.deepcopy(like)
    load_weights(backbone, public_net.state_dict())  # the `projection_head.` keys are dropped as head keys
    return backbone


def toy_run(
    pub: types.SimpleNamespace,
    recipe: Recipe,
    scenes: Path,
    out: Path,
    *,
    seed: int,
    seeds: tuple[int, ...],
    every: int,
) -> dict[str, Any]:
    """Stage c: the demo's recipe in both codes, each with its own rules, on the same batch stream."""
    module = _neco_module(recipe, scenes, out, seed)
    start_backbone = copy.deepcopy(module.student)
    # Public rules: its own independent teacher head draw, drop-path 0.1, EMA before the step, its queue draws.
    torch.manual_seed(seed + 10)
    public = PublicTraining(pub).build(recipe, module, copy_teacher_head=False)
    config = module.config
    runs: dict[str, Any] = {}
    for label, net in (("public", public), ("neco", module)):
        curves = _Curves(every, public=label == "public")
        if label == "public":
            shared = net.shared_step

            def shared_step(batch: Any, _shared: Any = shared, _net: Any = net, _curves: Any = curves) -> Any:
                loss = _shared(batch)
                stats = _net.recorder.take_step()
                _net.recorder.references.clear()
                _curves.record(len(_curves.rows), float(loss.detach()), stats["teacher_perm_max"])
                return loss

            net.shared_step = shared_step
        else:
            compute = net.compute_loss

            def compute_loss(batch: Any, _compute: Any = compute, _curves: Any = curves) -> Any:
                loss, diagnostics, tokens = _compute(batch)
                _curves.record(len(_curves.rows), float(loss), diagnostics["teacher_perm_max"])
                return loss, diagnostics, tokens

            net.compute_loss = compute_loss
        torch.manual_seed(seed + 20)
        t0 = time.perf_counter()
        trainer = _trainer(
            recipe.steps, [_curve_callback(curves, public=label == "public")], public=label == "public"
        )
        trainer.fit(net, train_dataloaders=scenes_loader(config, public=label == "public"))
        runs[label] = {"seconds": time.perf_counter() - t0, "curve": curves.rows}
        teacher = _as_neco_backbone(net.teacher, start_backbone) if label == "public" else net.teacher
        runs[label]["hummingbird_after"] = _evaluate(teacher, scenes, seeds)
    runs["hummingbird_before"] = _evaluate(start_backbone, scenes, seeds)
    return runs


# --- tables ----------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.2e}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4f}"


def print_tables(results: dict[str, Any]) -> None:
    """Print the stage tables of a results dict."""
    if results.get("one_step"):
        print(
            "\n(a) one step: loss and gradients, public vs neco (rel = max|g_neco - g_pub| / max|g_pub| per tensor)"
        )
        print(
            "| backbone | refs | references | pos embed | loss public | loss neco | abs diff | tensors "
            "| largest rel (tensor) | median rel | same draws | same queue push |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results["one_step"]:
            print(
                f"| {r['backbone']} | {r['reference_mode']} | {r['references']} | {r['pos_embed']} | {r['loss_public']:.6f} | "
                f"{r['loss_neco']:.6f} | {_fmt(r['loss_abs_diff'])} | {r['tensors']} | {_fmt(r['largest_rel_diff'])} "
                f"({r['largest_rel_tensor']}) | {_fmt(r['median_rel_diff'])} | {r.get('references_identical', '-')} "
                f"| {r.get('queue_push_identical', '-')} |"
            )
    if results.get("n_steps"):
        print(
            "\n(b) N optimizer + EMA steps: ||w - w_public|| / ||w_public - w_start|| over all tensors "
            "(max |w - w_public| / max movement in brackets)"
        )
        print(
            "| backbone | steps | compared with the public run | student | teacher | worst teacher tensor (its L2 ratio) |"
        )
        print("|---|---|---|---|---|---|")
        for r in results["n_steps"]:
            for label in ("neco", "neco_public_ema_timing", "public_ulp_control"):
                v = r[label]
                cells = [
                    f"{_fmt(v[role]['l2_diff_over_l2_movement'])} ({_fmt(v[role]['max_abs_diff'] / v[role]['max_movement'])})"
                    for role in ("student", "teacher")
                ]
                print(
                    f"| {r['backbone']} | {r['steps']} | {label} | {cells[0]} | {cells[1]} | {v['teacher']['worst_tensor']} ({_fmt(v['teacher']['worst_tensor_l2_rel'])}) |"
                )
    toy = results.get("toy")
    if toy:
        print(f"\n(c) toy recipe, {toy['steps']} steps from vit_tiny_scenes, each code with its own rules")
        print("| code | step | loss | teacher P max | patch cosine |")
        print("|---|---|---|---|---|")
        for label in ("public", "neco"):
            rows = toy["runs"][label]["curve"]
            for row in rows:
                if "patch_cosine" in row or row["step"] == 0:
                    cos = f"{row['patch_cosine']:.3f}" if "patch_cosine" in row else "-"
                    print(
                        f"| {label} | {row['step']} | {row['loss']:.3f} | {row['teacher_perm_max']:.3f} | {cos} |"
                    )
        before = toy["runs"]["hummingbird_before"]
        print("\n| Hummingbird (mIoU, mean ± std over eval seeds) | before | after |")
        print("|---|---|---|")
        for label in ("public", "neco"):
            after = toy["runs"][label]["hummingbird_after"]
            print(
                f"| {label} | {before['miou_mean']:.2f} ± {before['miou_std']:.2f} | "
                f"{after['miou_mean']:.2f} ± {after['miou_std']:.2f} |"
            )


# --- main ------------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_at_start": list(load) if load else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chosen stages, print their tables and optionally write the raw results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", nargs="+", default=["a", "b"], choices=["a", "b", "c"])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/public_parity"), help="scenes and scratch files"
    )
    parser.add_argument("--results", type=Path, default=None, help="write the raw results (JSON) here")
    parser.add_argument("--from-results", type=Path, default=None, help="print the tables of a results file")
    parser.add_argument("--steps", type=int, default=200, help="stage c steps")
    parser.add_argument("--b-steps", type=int, default=5, help="stage b steps")
    parser.add_argument(
        "--eval-seeds", type=int, nargs="+", default=[0, 1, 2], help="stage c Hummingbird seeds"
    )
    parser.add_argument(
        "--cases", nargs="+", default=["tiny", "vits14", "vits14_reg"], help="stage a backbones"
    )
    parser.add_argument("--b-cases", nargs="+", default=["tiny"], help="stage b backbones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    args = parser.parse_args(argv)
    if args.from_results:
        print_tables(json.loads(args.from_results.read_text()))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    pub = load_public()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": _machine(),
        "public_code": str(pub.path),
        "command": " ".join(sys.argv),
    }
    tiny = Recipe()
    vits = replace(
        tiny,
        backbone="dinov2_vits14",
        pretrained=False,
        head_hidden=2048,
        head_out=256,
        # Published crops are 518 / 98 px; 224 keeps a CPU run short, and both codes then interpolate
        # the position embedding for every crop (at 518 the global crops use the 37 x 37 table as is).
        global_size=224,
        local_size=98,
        roi_size=7,
        queue_size=8192,
    )
    cases = {"tiny": tiny, "vits14": vits, "vits14_reg": replace(vits, backbone="dinov2_vits14_reg")}
    small_scenes = None
    if {"a", "b"} & set(args.stages):
        small_scenes = write_scenes_for(args.out / "scenes_small", 8, 4, 96)
    if "a" in args.stages:
        rows = []
        for name in args.cases:
            recipe = cases[name]
            variants: list[dict[str, Any]] = []
            if name == "tiny":
                variants = [
                    {"recipe": recipe, "inject": False},
                    {"recipe": replace(recipe, queue_size=64), "inject": True},
                ]
            else:
                variants = [{"recipe": recipe, "inject": True}]
                if name == "vits14_reg":
                    variants.append({"recipe": recipe, "inject": True, "public_pos_embed": True})
            for variant in variants:
                row = one_step(pub, scenes=small_scenes, out=args.out, seed=args.seed, **variant)
                rows.append(row)
                print_tables({"one_step": [row]})
        results["one_step"] = rows
    if "b" in args.stages:
        rows = []
        for name in args.b_cases:
            recipe = replace(cases[name], steps=args.b_steps)
            if name == "tiny":
                recipe = replace(recipe, queue_size=64)
            row = n_steps(pub, recipe, small_scenes, args.out, seed=args.seed)
            rows.append(row)
            print_tables({"n_steps": [row]})
        results["n_steps"] = rows
    if "c" in args.stages:
        scenes = write_scenes_for(args.out / "scenes", 200, 60, 96)
        recipe = replace(TOY, steps=args.steps)
        runs = toy_run(pub, recipe, scenes, args.out, seed=args.seed, seeds=tuple(args.eval_seeds), every=10)
        results["toy"] = {"steps": args.steps, "recipe": asdict(recipe), "runs": runs}
    results["machine"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print_tables(results)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nraw results: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
