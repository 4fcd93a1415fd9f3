"""A lock on a run folder: two `neco train` into one folder at once would overwrite each other's run.

The lock is a file `.neco-train.lock` holding the owner's host, pid and start time, created with
O_EXCL (atomic, also on network file systems) and removed when the run ends. A lock left by a killed
run on this host is stale when its pid is gone, and is taken over with a warning; a lock of another
host cannot be checked from here and is refused with the command to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from neco.utils.io import process_alive
from neco.utils.logging import get_logger

__all__ = ["LOCK_NAME", "RunFolderLocked", "RunLock"]

LOCK_NAME = ".neco-train.lock"


class RunFolderLocked(FileExistsError):
    """Another live `neco train` holds the run folder."""


class RunLock:
    """Context manager holding `<folder>/.neco-train.lock` for the duration of a run."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def _owner(self) -> dict[str, object] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written this instant, or damaged: treated as held by an unknown run

    def acquire(self) -> RunLock:
        """Create the lock file or raise RunFolderLocked naming the live owner; stale locks are taken over."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released in between: try again
                host, pid = owner.get("host"), owner.get("pid")
                if host == me["host"] and isinstance(pid, int) and not process_alive(pid):
                    get_logger("neco.training").warning(
                        f"{self.path}: removing the stale lock of process {pid} (no longer running)"
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                who = f"process {pid} on {host}, started {owner.get('started')}" if owner else "another run"
                raise RunFolderLocked(
                    f"run folder {self.folder} is in use by another neco train ({who}); wait for it to end or "
                    f"choose another --out (if that run is gone, delete {self.path})"
                ) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(me))
            self.held = True
            return self
        raise RunFolderLocked(f"run folder {self.folder}: could not take the lock {self.path}")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()
