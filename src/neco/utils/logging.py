"""One logger name for the package, and a helper to log a message only once."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

__all__ = ["get_logger", "log_once", "quiet_console"]

_seen: set[str] = set()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is now (pytest and tqdm swap it), not the one seen at set-up."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it in __init__
        pass


def get_logger(name: str = "neco") -> logging.Logger:
    """Return a package logger with a plain handler when the application configured none."""
    logger = logging.getLogger(name)
    root = logging.getLogger("neco")
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[neco] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logger


def log_once(message: str, level: int = logging.INFO, logger: logging.Logger | None = None) -> None:
    """Log `message` the first time it is seen in this process."""
    if message in _seen:
        return
    _seen.add(message)
    (logger or get_logger()).log(level, message)


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """One line per warning, without the source line Python echoes by default."""
    stream = file or sys.stderr
    try:
        stream.write(f"[neco] warning: {category.__name__}: {message} ({Path(filename).name}:{lineno})\n")
    except (OSError, ValueError):  # a closed stream: the warning is lost, as with the default
        pass


def quiet_console() -> None:
    """Quiet the console of a `neco` command: one-line warnings, no third-party notices that do not apply.

    Why: torch's `cpp_extension` logs "No CUDA runtime is found" on every CPU-only run where a CUDA
    toolkit folder exists, which says nothing about a neco run.
    """
    warnings.showwarning = _show_warning
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _DropMessage) for f in cpp_logger.filters):
        cpp_logger.addFilter(_DropMessage("No CUDA runtime is found"))
