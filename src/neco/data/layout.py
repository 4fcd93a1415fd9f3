"""Up-front checks of dataset folder layouts, with error messages that show the expected tree."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["LayoutSpec", "check_layout", "layout_error", "list_files", "read_id_list"]


class LayoutSpec:
    """The expected tree of a dataset (text for messages) and the paths that must exist."""

    def __init__(self, dataset: str, tree: str, required: Sequence[str]) -> None:
        self.dataset = dataset
        self.tree = tree.strip("\n")
        self.required = tuple(required)


def layout_error(spec: LayoutSpec, root: Path, problems: Sequence[str]) -> FileNotFoundError:
    """A FileNotFoundError naming the root, what is wrong and the expected tree."""
    shown = list(problems[:10])
    if len(problems) > 10:
        shown.append(f"... and {len(problems) - 10} more")
    lines = "\n".join(f"  - {p}" for p in shown)
    return FileNotFoundError(
        f"{spec.dataset}: the folder {root} does not have the expected layout.\n"
        f"Problems:\n{lines}\nExpected layout:\n{spec.tree}"
    )


def check_layout(spec: LayoutSpec, root: str | Path) -> Path:
    """Check that `root` exists and holds every required path of `spec`; return it as a Path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout_error(spec, root, [f"{root} is not an existing directory"])
    missing = [f"missing {rel}" for rel in spec.required if not (root / rel).exists()]
    if missing:
        raise layout_error(spec, root, missing)
    return root


def list_files(directory: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """Map file stem -> path for the files of `directory` (not recursive) with the given suffixes."""
    suffixes = {e.lower() for e in extensions}
    found: dict[str, Path] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in suffixes:
                found[os.path.splitext(entry.name)[0]] = Path(entry.path)
    return found


def read_id_list(path: Path) -> list[str]:
    """Read an image-id list file: one id per line, blank lines ignored, first column only."""
    with open(path) as handle:
        return [line.split()[0] for line in handle if line.strip()]
