"""One logger name for the package, and a helper to log a message only once."""

from __future__ import annotations

import logging

__all__ = ["get_logger", "log_once"]

_seen: set[str] = set()


def get_logger(name: str = "neco") -> logging.Logger:
    """Return a package logger with a plain handler when the application configured none."""
    logger = logging.getLogger(name)
    root = logging.getLogger("neco")
    if not root.handlers:
        handler = logging.StreamHandler()
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
