"""One logger name for the package, and a helper to log a message only once."""

from __future__ import annotations

import logging
import sys

__all__ = ["get_logger", "log_once"]

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
