"""The YAML presets (`configs/` of the repository), shipped inside the package as `neco/configs`.

An installed neco reads the presets installed with it; a source checkout (`src/` layout, where
`configs/` is not inside the package) reads the checkout's `configs/`, the very files a wheel packs.
A missing preset is an error, never a silent fall-back to the built-in defaults.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["presets_root", "preset_path", "list_presets"]


def presets_root() -> Path:
    """The folder holding the presets: the installed package's `neco/configs`, else the checkout's `configs/`."""
    packaged = Path(str(resources.files("neco"))) / "configs"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[3]  # src/neco/training/presets.py -> checkout root
    if (checkout / "configs").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout / "configs"
    raise FileNotFoundError(
        f"the YAML presets are missing: neither {packaged} (installed package) nor {checkout / 'configs'} "
        "(source checkout) exists; reinstall neco"
    )


def list_presets() -> list[str]:
    """Names of the presets, e.g. `tiny_cpu`, `small/neco_dinov2r`."""
    root = presets_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of preset `name` (`tiny_cpu`, `small/neco_dinov2r`, with or without `.yaml`)."""
    root = presets_root()
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = root / f"{stem}.yaml"
    if not path.is_file():
        import difflib

        names = list_presets()
        close = difflib.get_close_matches(stem, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FileNotFoundError(f"preset {name!r} does not exist in {root}: the presets are {names}{hint}")
    return path
