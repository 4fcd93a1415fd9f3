"""The `neco` command: every module in `neco.commands` contributes one subcommand."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from neco import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per module of `neco.commands`."""
    import neco.commands as commands

    parser = argparse.ArgumentParser(
        prog="neco",
        description="NeCo post-training of vision transformers and dense feature evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"neco {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"neco.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `neco` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("neco: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError) as err:
        # User-facing errors carry a message naming the file/option; no traceback for those.
        print(f"neco {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
