"""`neco export CKPT` / `neco convert FILE` `--format official|timm|hf -o OUT`: write a backbone's weights.

`neco export` takes the teacher of a training checkpoint by default; `neco convert` is the same flow
for any weights file.

For timm-built backbones (DINOv3, `timm:<name>`) `timm` writes the timm model's own state dict
(loads strictly into `timm.create_model(name, num_classes=0)`), and `official` writes Meta's DINOv3
key names (DINOv3 only).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neco.evaluation.options import add_command, option

__all__ = ["ConvertSettings", "ExportSettings", "register", "save_state_dict", "write_backbone"]

FORMATS = ("official", "timm", "hf")


@dataclass(kw_only=True)
class _OutputSettings:
    """`--which`, `--backbone`, `-o` and `--force` of `neco export` and `neco convert`."""

    which: str = option(
        "teacher",
        "network of a training checkpoint (default: teacher, the better model)",
        choices=("teacher", "student"),
    )
    backbone: str | None = option(
        None,
        "registry name of the weights' architecture, checked by a strict load; needed by --format hf "
        "for config.json when the input records none (default: the name a neco checkpoint records)",
        metavar="NAME",
    )
    out: str = option(
        help="output file (.safetensors for safetensors, else torch.save); for --format hf a path without "
        "suffix is a model folder (OUT/model.safetensors + OUT/config.json)",
        flag=("-o", "--out"),
    )
    force: bool = option(False, "overwrite the output file if it exists")


@dataclass(kw_only=True)
class ExportSettings(_OutputSettings):
    """The options of `neco export`."""

    source: str = option(help="checkpoint file", flag="checkpoint")
    format: str = option("official", "key names of the output", choices=FORMATS)


@dataclass(kw_only=True)
class ConvertSettings(_OutputSettings):
    """The options of `neco convert`."""

    source: str = option(help="checkpoint or state dict file (.pth/.pt/.ckpt/.safetensors)", flag="input")
    format: str = option(
        help="target key format (the same option as `neco export --format`; --to is the old spelling)",
        choices=FORMATS,
        flag=("--format", "--to"),
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand and `convert`, the same flow for any weights file."""
    add_command(
        subparsers,
        "export",
        ExportSettings,
        write_backbone,
        help="export a backbone from a training checkpoint (teacher by default)",
        description=(
            "Export the backbone of any checkpoint neco reads (neco, NeCo Lightning, DINO, official, timm, "
            "Hugging Face) as a plain state dict. The default is the EMA teacher: it is the better model. "
            "The official format drops into torch.hub.load('facebookresearch/dinov2', 'dinov2_vits14[_reg]'); "
            "for DINOv3 backbones it is Meta's DINOv3 key names. timm-built backbones (DINOv3, timm:<name>) "
            "export as timm (their own timm state dict) or, for DINOv3, official."
        ),
    )
    add_command(
        subparsers,
        "convert",
        ConvertSettings,
        write_backbone,
        help="convert a backbone state dict between official DINOv2, timm and Hugging Face names",
        description=(
            "Read a backbone checkpoint of any supported format (the format is detected; training "
            "checkpoints give their teacher unless --which student) and write it with other key names. "
            "--format hf writes a Hugging Face model folder (model.safetensors + config.json) that "
            "transformers.AutoModel.from_pretrained loads; config.json needs the architecture: the backbone "
            "a neco checkpoint records, or --backbone NAME."
        ),
    )


def save_state_dict(state: dict[str, Any], path: str | Path) -> Path:
    """Write a state dict atomically: safetensors for a `.safetensors` path, `torch.save` otherwise."""
    from neco.utils.io import atomic_torch_save, atomic_write

    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        return atomic_write(path, lambda handle: handle.write(save(tensors)))
    return atomic_torch_save({k: v.detach().clone() for k, v in state.items()}, path)


def _timm_built_state(args: _OutputSettings, config: Any, checkpoint: Any) -> tuple[dict[str, Any], Any, str]:
    """(state dict, read info, key names) of a DINOv3 / `timm:` backbone: timm's own keys, or Meta's for DINOv3."""
    from neco.backbones import create
    from neco.backbones.formats import meta_state_dict
    from neco.backbones.loading import load_weights

    if args.format == "hf" or (args.format == "official" and config.family != "dinov3"):
        raise ValueError(
            f"--format {args.format} is not available for {config.name} (family {config.family}); "
            f"use --format timm{' or official (Meta DINOv3 names)' if config.family == 'dinov3' else ''}"
        )
    model = create(config.name)
    info = load_weights(model, checkpoint, which=args.which)  # loads strictly: the check of the weights
    if args.format == "timm":
        return model.model.state_dict(), info, f"timm keys of {config.timm_name}"
    return meta_state_dict(model.model), info, "Meta DINOv3 keys"


def write_backbone(args: ExportSettings | ConvertSettings) -> int:
    """Handler of `neco export` and `neco convert`: read the backbone of `source`, verify it, write it as `--format`."""
    from neco.backbones import create, get_config
    from neco.backbones.checkpoint import check_tensors_finite, extract_state_dict
    from neco.backbones.formats import convert
    from neco.backbones.loading import load_weights, read_checkpoint, read_state_dict
    from neco.utils.io import check_new_file

    source, out = args.source, Path(args.out)
    if args.format == "hf" and (out.suffix == "" or out.is_dir()):
        out /= "model.safetensors"  # a path without suffix is a model folder
    check_new_file(out, args.force)  # before any work: a rerun must not silently overwrite
    if args.format == "hf":
        check_new_file(out.parent / "config.json", args.force, "-o (its config.json)")
    checkpoint = read_checkpoint(source)
    tensors, recorded_info = extract_state_dict(checkpoint, args.which)
    check_tensors_finite(tensors, source, "weights file")  # named here: the loaders below see a dict
    name = args.backbone or recorded_info.backbone
    if args.format == "hf" and name is None:
        raise ValueError(
            f"--format hf writes config.json, which needs the architecture (head count, registers), but "
            f"{source} records no backbone name: pass --backbone NAME (e.g. dinov2_vits14_reg)"
        )
    config = None if name is None else get_config(name)  # once: a timm: config builds its model
    timm_built = config is not None and config.built_by_timm
    if timm_built:
        state, info, keys = _timm_built_state(args, config, checkpoint)
    else:
        official, info = read_state_dict(checkpoint, which=args.which)
        if config is not None and config.mask_token and "mask_token" not in official:
            # timm-built models keep no mask token (NeCo never masks): zeros let official / HF models load strictly
            official["mask_token"] = official["cls_token"].new_zeros(1, official["cls_token"].shape[-1])
        state, keys = convert(official, to=args.format, source="official"), f"{args.format} keys"
    info.source = str(source)
    print(f"read {info.describe()}")
    if info.which is None and args.which == "student":
        raise ValueError(f"{source} holds a single network; --which student does not apply")
    # the register count a training checkpoint records (an "XR" run may differ from the registered one)
    recorded = (
        {} if info.num_register_tokens is None else {"num_register_tokens": int(info.num_register_tokens)}
    )
    if name is not None and not timm_built:
        load_weights(create(name, **recorded), official)  # a clear error for an unknown name or a mismatch
    if name is not None:
        print(f"verified: the weights load strictly into {name}")
    else:
        print("not verified against a backbone (pass --backbone NAME to check the weights load strictly)")
    out = save_state_dict(state, out)
    note = " (the EMA teacher, the better model)" if info.which == "teacher" else ""
    print(f"wrote {info.which or 'single network'}{note} as {keys} to {out}")
    if timm_built and config.family == "dinov3" and not _started_from_random_init(checkpoint):
        print(
            "the weights stay under Meta's DINOv3 license (https://ai.meta.com/resources/models-and-libraries/dinov3-license/)"
        )
    if args.format == "hf":
        _write_hf_config(config.with_overrides(**recorded), official, out)
    return 0


def _started_from_random_init(checkpoint: Any) -> bool:
    """True for a neco training checkpoint whose run started from random weights (no Meta weights inside)."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    return isinstance(model, dict) and model.get("pretrained") is False and not model.get("weights")


def _write_hf_config(config: Any, official: dict[str, Any], out: Path) -> None:
    """config.json beside the weights, so `transformers.AutoModel.from_pretrained(folder)` loads them."""
    from neco.backbones.formats import write_hf_config

    if config.family != "dinov2":
        print(f"no config.json written: {config.name} (family {config.family}) has no Dinov2Model equivalent")
        return
    grid = int(round((official["pos_embed"].shape[1] - 1) ** 0.5))
    path = write_hf_config(config, out.parent, pos_grid=grid)
    hint = (
        ""
        if out.name == "model.safetensors"
        else f" once the weights are named model.safetensors (not {out.name})"
    )
    print(f"wrote {path}: transformers.AutoModel.from_pretrained({str(out.parent)!r}) loads the folder{hint}")
