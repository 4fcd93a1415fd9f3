"""The `neco` command: every module in `neco.commands` contributes one subcommand."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from neco import __version__

__all__ = ["COMPUTING", "build_parser", "main"]

# Commands that run models or generate data: each takes `--threads`, declared here only.
COMPUTING = ("demo", "eval", "explore", "features", "make-scenes", "pretrain-tiny", "text-align", "train")


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
    for name in COMPUTING:  # the one `--threads`, on the command or on each of its subcommands (eval's)
        command = subparsers.choices[name]
        for sub in (
            command._subparsers._group_actions[0].choices.values() if command._subparsers else [command]
        ):
            sub.add_argument(
                "--threads",
                type=int,
                default=0,
                help="CPU threads for torch and faiss (default: 0, the library default)",
            )
    return parser


def _set_threads(threads: int) -> None:
    """Use `threads` CPU threads in torch and faiss (0: leave the library default)."""
    if threads <= 0:
        return
    import faiss  # a dependency of neco, like torch
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `neco` console script; returns the process exit code."""
    from neco.utils.logging import quiet_console

    quiet_console()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse binds a `nargs="*"` positional at its first chance: `key=value` overrides placed after
    # options come back unrecognized; they join `overrides` (neco train), anything else gets argparse's error
    if extra:
        bad = [token for token in extra if token.startswith("-") or "=" not in token]
        if bad or not hasattr(args, "overrides"):
            command = parser._subparsers._group_actions[0].choices.get(args.command, parser)
            command.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides += extra
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    _set_threads(int(getattr(args, "threads", 0) or 0))
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
