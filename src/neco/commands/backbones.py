"""`neco backbones`: list the registered backbones, their sizes and weight sources."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `backbones` subcommand."""
    parser = subparsers.add_parser(
        "backbones",
        help="list the registered backbones",
        description="List every backbone name accepted by --backbone, with its size, registers and weight source.",
    )
    parser.add_argument("--urls", action="store_true", help="also print the weight URLs and cache paths")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
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
