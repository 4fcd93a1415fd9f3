"""`neco convert IN --format official|timm|hf -o OUT`: rename a backbone state dict between formats."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand (the flow of `neco export`, for any weights file)."""
    from neco.commands.export import add_output_options, write_backbone

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
    add_output_options(parser)
    parser.set_defaults(func=lambda args: write_backbone(args, args.input))
