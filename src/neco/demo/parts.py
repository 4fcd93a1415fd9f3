"""Which parts of a demo folder can be reused: a fingerprint of the settings of each part.

The demo writes three parts into its folder: the scenes, the training run, the evaluations. Each part
records the fingerprint of the settings it was made with in `parts.json`; a rerun reuses a part only
when its fingerprint is identical (a part also changes when a part it is made from changes), and
otherwise deletes and redoes it, saying so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["PARTS_FILE", "fingerprint", "Parts"]

PARTS_FILE = "parts.json"


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-able `settings`."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Parts:
    """The `parts.json` ledger of a demo folder: fingerprints and what this run reused or redid."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / PARTS_FILE
        self.previous: dict[str, Any] = {}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                self.previous = loaded if isinstance(loaded, dict) else {}
            except (OSError, json.JSONDecodeError):
                self.previous = {}
        self.current: dict[str, Any] = {k: v for k, v in self.previous.items() if isinstance(v, dict)}
        self.status: dict[str, str] = {}

    def prepare(self, part: str, settings: dict[str, Any], folders: tuple[str, ...]) -> tuple[str, bool]:
        """(fingerprint, reusable) of `part`; when not reusable its `folders` (under `out`) are deleted."""
        print_ = fingerprint(settings)
        before = self.previous.get(part, {})
        present = any((self.out / f).exists() for f in folders)
        reusable = present and before.get("fingerprint") == print_
        if present and not reusable:
            for folder in folders:
                shutil.rmtree(self.out / folder, ignore_errors=True)
            changed = sorted(
                k for k in set(settings) | set(before.get("settings", {}))
                if settings.get(k) != before.get("settings", {}).get(k)
            )  # fmt: skip
            self.status[part] = (
                f"redone (settings changed: {', '.join(changed) or 'unknown earlier settings'})"
            )
        else:
            self.status[part] = "reused" if reusable else "new"
        return print_, reusable

    def record(self, part: str, settings: dict[str, Any], **extra: Any) -> None:
        """Write `part`'s fingerprint (and `extra`, e.g. the step count) to `parts.json` now."""
        from neco.utils.io import write_json

        self.current[part] = {"fingerprint": fingerprint(settings), "settings": settings, **extra}
        write_json(self.current, self.path)

    def summary(self) -> str:
        """One line: what was reused and what was redone."""
        return "; ".join(f"{part}: {state}" for part, state in self.status.items())
