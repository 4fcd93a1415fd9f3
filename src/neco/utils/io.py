"""Atomic file writes: a crash or Ctrl-C never leaves a half-written checkpoint or result."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_write",
    "atomic_torch_save",
    "write_json",
    "ensure_writable_dir",
    "check_new_file",
    "save_png",
    "process_alive",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the result should look like any new file
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[Any]], None], mode: str = "wb") -> Path:
    """Call `writer(handle)` on a temporary file and atomically move it to `path`."""
    with atomic_open(path, mode) as handle:
        writer(handle)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` that never leaves a partial file at `path`."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write `obj` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda handle: handle.write(text), mode="w")


def ensure_writable_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create `path` if needed and check that it is a writable directory, naming `option` on failure."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"{option} {path}: cannot create the directory ({err.strerror})") from err
    if not path.is_dir():
        raise NotADirectoryError(f"{option} {path}: exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: the directory is not writable")
    return path


def check_new_file(path: str | os.PathLike, force: bool, option: str = "-o") -> Path:
    """Refuse to replace an existing output file unless `force` (a rerun must not silently overwrite)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file name")
    if path.exists() and not force:
        raise FileExistsError(f"{option} {path} exists; pass --force to overwrite it, or choose another file")
    return path


def save_png(image: Any, path: str | os.PathLike, **options: Any) -> Path:
    """Write a PIL image or a matplotlib figure as PNG, atomically (`options` go to save / savefig)."""
    if hasattr(image, "savefig"):
        return atomic_write(path, lambda handle: image.savefig(handle, format="png", **options))
    return atomic_write(path, lambda handle: image.save(handle, format="PNG", **options))


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (one owned by another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
