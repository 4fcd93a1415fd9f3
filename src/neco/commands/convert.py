"""`neco convert IN --format official|timm|hf -o OUT`: rename a backbone state dict between formats."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand (the flow of `neco export`, for any weights file)."""
    from neco.commands.export import ConvertSettings, write_backbone
    from neco.evaluation.options import add_command

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
