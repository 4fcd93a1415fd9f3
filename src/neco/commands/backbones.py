"""`neco backbones`: list the registered backbones, their sizes and weight sources."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from neco.evaluation.options import add_command, option

__all__ = ["register"]


@dataclass
class _Settings:
    urls: bool = option(False, "also print the weight URLs and cache paths")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `backbones` subcommand."""
    add_command(
        subparsers,
        "backbones",
        _Settings,
        _run,
        help="list the registered backbones",
        description="List every backbone name accepted by --backbone, with its size, registers and weight source.",
    )


def _run(args: _Settings) -> int:
    from neco.backbones.download import cached_path
    from neco.backbones.registry import get_config, list_backbones

    print(f"{'name':<20} {'patch':>5} {'dim':>5} {'depth':>5} {'heads':>5} {'reg':>3}  description")
    for name in list_backbones():
        config = get_config(name)
        print(
            f"{name:<20} {config.patch_size:>5} {config.embed_dim:>5} {config.depth:>5} {config.num_heads:>5} "
            f"{config.num_register_tokens:>3}  {config.description}"
        )
        if args.urls and config.weights is not None:
            path = cached_path(config.weights)
            state = "cached" if path.is_file() else "not cached"
            print(f"{'':<20} {config.weights.download_url()}\n{'':<20} {path} ({state})")
    return 0
