"""Pretrained backbone weights: where each hub keeps them, the local cache, and the offline error.

The cache is `$NECO_CACHE` or `~/.cache/neco`. Direct URLs (official DINOv2 / DINO) land in
`<cache>/checkpoints/<file name>`; Hugging Face hub files (the NeCo release, timm / transformers copies)
in `<cache>/hub/<repo>/<path in repo>` (the NeCo repo reuses file names across sizes). Both are fetched
with `torch.hub.download_url_to_file`, which writes to a temporary file and moves it into place.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import torch

from neco.backbones.registry import BackboneConfig, WeightSource
from neco.utils.logging import get_logger

__all__ = ["HUBS", "cache_dir", "cached_path", "download_weights", "weight_source"]

# the registered source, the timm copy (`timm/<timm name>`), the transformers copy (docs/weights.md)
HUBS = ("official", "timm", "hf")


def weight_source(config: BackboneConfig, hub: str = "official") -> WeightSource:
    """The weights of `config` from one of `HUBS`; a ValueError when that hub has no copy."""
    if hub not in HUBS:
        raise ValueError(f"`hub` must be one of {sorted(HUBS)} but is {hub!r}")
    source, repo = config.weights if hub == "official" else None, None
    if config.family == "timm" and hub != "hf":
        import timm

        try:  # timm's pretrained config names the hub copy of a `timm:` model
            repo = getattr(timm.models.get_pretrained_cfg(str(config.timm_name)), "hf_hub_id", None)
        except (RuntimeError, ValueError):
            repo = None
    elif hub != "official":
        repo = config.hf_name if hub == "hf" else config.timm_name and f"timm/{config.timm_name}"
    if repo:
        source = WeightSource("model.safetensors", hf_repo=repo, hf_filename="model.safetensors")
    if source is None:
        raise ValueError(
            f"backbone {config.name!r} has no pretrained weights on the {hub!r} hub; pass --weights FILE "
            "(`weights=` in Python), or --random-init for an untrained baseline"
        )
    return source


def cache_dir() -> Path:
    """The weights cache: `$NECO_CACHE`, else `~/.cache/neco`."""
    env = os.environ.get("NECO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neco"


def cached_path(source: WeightSource) -> Path:
    """Where the file of `source` is (or will be) cached."""
    if source.hf_repo is not None:
        return cache_dir() / "hub" / source.hf_repo / str(source.hf_filename)
    return cache_dir() / "checkpoints" / source.filename


def _fetch(source: WeightSource, target: Path, progress: bool) -> None:
    """Download `source` to `target`; an unreachable host fails at once.

    Why the probe: an unreachable host would otherwise cost one long TCP timeout per retry; one
    connection attempt decides it.
    """
    url = source.download_url()
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((str(parts.hostname), port), timeout=5.0).close()
    except OSError as err:
        raise OSError(f"{parts.hostname}:{port} is unreachable ({err})") from err
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(target), progress=progress)


def download_weights(source: WeightSource, *, progress: bool = True) -> Path:
    """Return the local file of `source`, downloading it into the cache first if needed.

    Raises:
        FileNotFoundError: when the file cannot be had (offline, gated, missing asset); the message
            names the file, where it comes from and the exact path to place it at by hand.
    """
    if source.asset is not None:
        path = Path(__file__).resolve().parent.parent / "assets" / source.asset
        if not path.is_file():
            raise FileNotFoundError(
                f"the packaged weights file {path} is missing; rebuild it with `neco pretrain-tiny -o {path}`"
            )
        return path
    target = cached_path(source)
    use = (
        "pass the file itself: `--weights FILE` to neco eval / features / explore / demo / train "
        "(`model.weights=FILE` in a training config), `weights=FILE` in Python"
    )
    if source.gated is not None:  # never downloaded: the release hash in the name is globbed in the cache
        found = sorted(target.parent.glob(source.filename)) if target.parent.is_dir() else []
        if found:
            return found[-1]
        raise FileNotFoundError(
            f"{source.filename} is not in the cache and neco does not download it: get {source.gated}, then "
            f"{use}, or place it in {target.parent}/ (the cache root is $NECO_CACHE or ~/.cache/neco). "
            "A timm copy of the same weights also loads (pretrained='timm' where its hub is reachable)"
        )
    if target.is_file():
        return target
    url = source.download_url()
    get_logger("neco.backbones").info(f"downloading {url} to {target}")
    try:
        _fetch(source, target, progress)
    except Exception as err:  # noqa: BLE001 - any network/hub failure gets the same actionable message
        raise FileNotFoundError(
            f"could not download {source.filename} from {url} ({type(err).__name__}: {err}). "
            f"If this machine is offline, download the file elsewhere and place it at {target} "
            f"(the cache root is $NECO_CACHE or ~/.cache/neco), or {use}"
        ) from err
    return target
