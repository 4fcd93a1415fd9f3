"""`neco convert IN --to official|timm|hf -o OUT`: rename a backbone state dict between formats."""

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
            "checkpoints give their teacher unless --which student) and write it with other key names."
        ),
    )
    parser.add_argument("input", help="checkpoint or state dict file (.pth/.pt/.ckpt/.safetensors)")
    parser.add_argument(
        "--format",
        "--to",
        dest="to",
        required=True,
        choices=["official", "timm", "hf"],
        help="target key format (the same option as `neco export --format`; --to is the old spelling)",
    )
    parser.add_argument(
        "--which", default="teacher", choices=["teacher", "student"], help="network of a training checkpoint"
    )
    parser.add_argument(
        "-o", "--out", required=True, help="output file (.safetensors for safetensors, else torch.save)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from neco.backbones.formats import convert
    from neco.backbones.weights import read_state_dict
    from neco.commands.export import save_state_dict
    from neco.utils.io import check_new_file

    check_new_file(args.out, args.force)

    official, info = read_state_dict(args.input, which=args.which)
    print(f"read {info.describe()}")
    out = save_state_dict(convert(official, to=args.to, source="official"), args.out)
    print(f"wrote {len(official)} official tensors as {args.to} keys to {out}")
    return 0
