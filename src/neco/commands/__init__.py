"""Subcommands of the `neco` CLI.

Each public module here defines `register(subparsers) -> None`, which adds one subparser and sets
its `func` (a callable taking the parsed `argparse.Namespace` and returning an exit code or None).
Heavy imports (torch, ...) belong inside the handler so that `neco --help` stays fast.
"""
