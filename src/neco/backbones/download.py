"""Download pretrained backbone weights into a local cache, with an offline error that says what to do.

The cache is `$NECO_CACHE` or `~/.cache/neco`. Direct URLs (official DINOv2 / DINO) land in
`<cache>/checkpoints/<file name>`; Hugging Face hub files (the NeCo release) in
`<cache>/hub/<repo>/<path in repo>` (the NeCo repo reuses file names across sizes).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from neco.backbones.registry import BackboneConfig, WeightSource
from neco.utils.logging import get_logger

__all__ = ["HUBS", "cache_dir", "cached_path", "download_weights", "weight_source"]

HUBS = {
    "official": "the registered source (official DINOv2 / DINO URL, or the NeCo release on the HF hub)",
    "timm": "the timm copy on the Hugging Face hub (`timm/<timm name>`, model.safetensors)",
    "hf": "the transformers copy on the Hugging Face hub (`facebook/dinov2-*`, model.safetensors)",
}


def weight_source(config: BackboneConfig, hub: str = "official") -> WeightSource:
    """The weights of `config` from one of `HUBS`; a ValueError when that hub has no copy."""
    if hub not in HUBS:
        raise ValueError(f"`hub` must be one of {sorted(HUBS)} but is {hub!r}")
    if config.family == "timm" and hub in ("official", "timm"):
        source = _timm_hub_source(config)
    elif hub == "official":
        source = config.weights
    else:
        repo = f"timm/{config.timm_name}" if hub == "timm" and config.timm_name else None
        repo = config.hf_name if hub == "hf" else repo
        source = (
            WeightSource("model.safetensors", hf_repo=repo, hf_filename="model.safetensors") if repo else None
        )
    if source is None:
        raise ValueError(f"backbone {config.name!r} has no pretrained weights on the {hub!r} hub")
    return source


def _timm_hub_source(config: BackboneConfig) -> WeightSource | None:
    """The timm copy on the Hugging Face hub of a `timm:<name>` backbone (timm's pretrained config)."""
    import timm

    try:
        pretrained = timm.models.get_pretrained_cfg(str(config.timm_name))
    except (RuntimeError, ValueError):
        return None
    repo = getattr(pretrained, "hf_hub_id", None)
    if not repo:
        return None
    return WeightSource("model.safetensors", hf_repo=repo, hf_filename="model.safetensors")


def cache_dir() -> Path:
    """The weights cache: `$NECO_CACHE`, else `~/.cache/neco`."""
    env = os.environ.get("NECO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neco"


def cached_path(source: WeightSource) -> Path:
    """Where the file of `source` is (or will be) cached."""
    if source.hf_repo is not None:
        return cache_dir() / "hub" / source.hf_repo / str(source.hf_filename)
    return cache_dir() / "checkpoints" / source.filename


def _hub_endpoint() -> str:
    """The Hugging Face hub address that `hf_hub_download` uses ($HF_ENDPOINT, else huggingface.co)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return str(constants.ENDPOINT)


def _fetch_url(source: WeightSource) -> str:
    """The address `_fetch` will contact for `source`."""
    if source.hf_repo is not None:
        return f"{_hub_endpoint().rstrip('/')}/{source.hf_repo}/resolve/main/{source.hf_filename}"
    return source.download_url()


def _check_reachable(url: str, timeout: float = 5.0) -> None:
    """Raise OSError at once when the host of `url` does not accept a connection.

    Why: the hub client retries an unreachable host for ~23 s before giving up; one probe of the
    host decides that in one connection timeout instead.
    """
    parts = urlsplit(url)
    if parts.hostname is None:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        raise OSError(f"{parts.hostname}:{port} is unreachable ({err})") from err


def _fetch(source: WeightSource, target: Path, progress: bool) -> None:
    """Download `source` to `target` (atomically: a partial download never sits at `target`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_reachable(_fetch_url(source))
    if source.hf_repo is not None:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            hf_hub_download = None
        if hf_hub_download is not None:
            local_dir = cache_dir() / "hub" / source.hf_repo
            hf_hub_download(
                repo_id=source.hf_repo, filename=str(source.hf_filename), local_dir=str(local_dir)
            )
            return
    import torch

    tmp = target.with_name(f".{target.name}.partial")
    try:
        torch.hub.download_url_to_file(source.download_url(), str(tmp), progress=progress)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _package_asset(name: str) -> Path:
    """A weights file shipped inside the package; a clear error naming the command that rebuilds it."""
    path = Path(__file__).resolve().parent.parent / "assets" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"the packaged weights file {path} is missing; rebuild it with `neco pretrain-tiny -o {path}`"
        )
    return path


def _gated_file(source: WeightSource) -> Path:
    """A gated file (DINOv3) from the cache; never downloaded: the error says where to get it and put it."""
    folder = cache_dir() / "checkpoints"
    found = sorted(folder.glob(source.filename)) if folder.is_dir() else []
    if found:
        return found[-1]
    raise FileNotFoundError(
        f"{source.filename} is not in the cache and neco does not download it: get {source.gated}, then "
        f"pass the file with --weights PATH (`model.weights=PATH` in a training config, weights=PATH in "
        f"Python), or place it in {folder}/ (the cache root is $NECO_CACHE or ~/.cache/neco). "
        "A timm copy of the same weights also loads (pretrained='timm' where its hub is reachable)"
    )


def download_weights(source: WeightSource, *, progress: bool = True) -> Path:
    """Return the cached file of `source`, downloading it first if needed.

    Raises:
        FileNotFoundError: when the download fails (for example offline); the message names the file,
            its URL and the exact path to place it at by hand.
    """
    if source.asset is not None:
        return _package_asset(source.asset)
    if source.gated is not None:
        return _gated_file(source)
    target = cached_path(source)
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
            "(the cache root is $NECO_CACHE or ~/.cache/neco), or pass the file itself: `--weights FILE` "
            "to neco eval / features / explore / demo / train (`model.weights=FILE` in a training config), "
            "`weights=FILE` in Python"
        ) from err
    if not target.is_file():
        raise FileNotFoundError(
            f"download of {url} finished but {target} is missing; place the file there by hand"
        )
    return target
