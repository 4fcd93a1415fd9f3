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
    for name, command in subparsers.choices.items():
        if name in COMPUTING:
            _add_threads(command)
        _show_defaults(command)
    return parser


def _add_threads(parser: argparse.ArgumentParser) -> None:
    """The one `--threads` option, on `parser` or on each of its subcommands (neco eval's protocols)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_threads(sub)
            return
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch and faiss (default: 0, the library default)"
    )


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default: X)" to the help of options that have a default but do not name it.

    Why: every `--help` shows the defaults, whichever command module wrote the option.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
        elif (
            action.option_strings
            and action.help not in (None, argparse.SUPPRESS)
            # identity, not equality: a default of 0 or 0.0 is shown (0 == False)
            and not any(action.default is hidden for hidden in (None, False, argparse.SUPPRESS))
            and "default" not in action.help.lower()
        ):
            action.help = f"{action.help} (default: %(default)s)"


def _set_threads(threads: int) -> None:
    """Use `threads` CPU threads in torch and faiss (0: leave the library default)."""
    if threads <= 0:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `neco` console script; returns the process exit code."""
    from neco.utils.logging import quiet_console

    quiet_console()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _take_overrides(parser, args, extra)
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


def _take_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Append `key=value` tokens argparse left over to the command's overrides, else exit with its usage.

    Why: argparse binds a `nargs="*"` positional at its first chance, so `key=value` overrides placed
    after options come back unrecognized; a command opts in with `set_defaults(overrides_dest=...)`.
    """
    dest = getattr(args, "overrides_dest", None)
    command = _subparser(parser, args.command) or parser
    bad = [token for token in extra if token.startswith("-") or "=" not in token]
    if dest is None or bad:
        command.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    setattr(args, dest, [*getattr(args, dest), *extra])


def _subparser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    """The subparser of command `name` (None when there is none)."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
