"""`neco convert IN --format official|timm|hf -o OUT`: rename a backbone state dict between formats."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a backbone state dict between official DINOv2, timm and Hugging Face names",
        description=(
            "Read a backbone checkpoint of any supported format (the format is detected; training "
            "checkpoints give their teacher unless --which student) and write it with other key names. "
            "--format hf writes a Hugging Face model folder (model.safetensors + config.json) that "
            "transformers.AutoModel.from_pretrained loads; config.json needs the architecture: the backbone "
            "a neco checkpoint records, or --backbone NAME."
        ),
    )
    parser.add_argument("input", help="checkpoint or state dict file (.pth/.pt/.ckpt/.safetensors)")
    parser.add_argument(
        "--format",
        "--to",
        dest="format",
        required=True,
        choices=["official", "timm", "hf"],
        help="target key format (the same option as `neco export --format`; --to is the old spelling)",
    )
    parser.add_argument(
        "--which", default="teacher", choices=["teacher", "student"], help="network of a training checkpoint"
    )
    parser.add_argument(
        "--backbone",
        default=None,
        metavar="NAME",
        help="registry name of the weights' architecture, checked by a strict load; needed by --format hf "
        "for config.json when the input records none (default: the name a neco checkpoint records)",
    )
    parser.add_argument(
        "-o",
        "--out",
        required=True,
        help="output file (.safetensors for safetensors, else torch.save); for --format hf a path without "
        "suffix is a model folder (OUT/model.safetensors + OUT/config.json)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from neco.backbones import create, get_config
    from neco.backbones.formats import convert
    from neco.backbones.weights import load_weights, read_state_dict
    from neco.commands.export import _output_file, _write_hf_config, save_state_dict
    from neco.utils.io import check_new_file

    out = _output_file(args)
    check_new_file(out, args.force)
    if args.format == "hf":
        check_new_file(out.parent / "config.json", args.force, "-o (its config.json)")

    official, info = read_state_dict(args.input, which=args.which)
    print(f"read {info.describe()}")
    name = args.backbone or info.backbone
    if args.format == "hf" and name is None:
        raise ValueError(
            f"--format hf writes config.json, which needs the architecture (head count, registers), but "
            f"{args.input} records no backbone name: pass --backbone NAME (e.g. dinov2_vits14_reg)"
        )
    if name is not None:
        get_config(name)  # a clear error for an unknown name
        overrides = {}
        if info.num_register_tokens is not None:
            overrides["num_register_tokens"] = int(info.num_register_tokens)
        load_weights(create(name, **overrides), official)  # config.json must describe these weights
        print(f"verified: the weights load strictly into {name}")
    out = save_state_dict(convert(official, to=args.format, source="official"), out)
    print(f"wrote {len(official)} official tensors as {args.format} keys to {out}")
    if args.format == "hf":
        _write_hf_config(name, info, official, out)
    return 0
