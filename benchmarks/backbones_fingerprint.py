"""A fingerprint of `neco.backbones`' public behaviour, to compare two revisions (issue 24, third round).

Dumped as JSON: every registered config and its weight sources per hub, checksums of the shipped and
of seeded random-init backbones, every export format's keys and checksum and its round trip back into
a model, and the messages of a set of bad inputs. Run it against two trees and diff the JSON:

    NECO_CACHE=/tmp/fp_cache PYTHONPATH=<tree>/src python benchmarks/backbones_fingerprint.py OUT.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from neco.backbones import convert, create, get_config, list_backbones, load_weights, read_checkpoint
from neco.backbones.download import HUBS, cached_path, download_weights, weight_source
from neco.backbones.formats import detect_format, meta_state_dict
from neco.backbones.loading import canonical_tensors, read_state_dict, resolve_backbone, state_dict_checksum


def _sha(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().contiguous()
        digest.update(f"{key}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _error(call) -> str:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the message is what is compared
        return f"{type(err).__name__}: {err}"
    return "no error"


def main() -> None:
    """Write the fingerprint to argv[1]."""
    work = Path(os.environ.get("NECO_CACHE", "/tmp/fp_cache")).parent / "fp_files"
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"configs": {}, "sources": {}, "checksums": {}, "exports": {}, "errors": {}}
    for name in [*list_backbones(), "timm:vit_small_patch16_224", "timm:deit_tiny_distilled_patch16_224"]:
        config = get_config(name)
        out["configs"][name] = {**dataclasses.asdict(config), "built_by_timm": config.built_by_timm}
        out["configs"][name]["mask_token"] = config.mask_token
        for hub in HUBS:
            try:
                source = weight_source(config, hub)
                value = {**dataclasses.asdict(source), "cached": str(cached_path(source))}
                value["url"] = source.download_url()
            except ValueError as err:
                value = str(err)
            out["sources"][f"{name} {hub}"] = value
    out["checksums"]["vit_tiny_scenes"] = state_dict_checksum(create("vit_tiny_scenes", pretrained=True))
    for name, overrides in [
        ("vit_tiny", {}),
        ("vit_tiny_reg", {}),
        ("vit_tiny", {"ffn": "swiglu"}),
        ("dino_vits16", {"depth": 2}),
        ("neco_vits14_xr", {"depth": 2}),
    ]:
        torch.manual_seed(0)
        model = create(name, **overrides)
        label = f"{name} {overrides}"
        out["checksums"][label] = state_dict_checksum(model)
        out["checksums"][label + " raw"] = _sha(model.state_dict())
        for fmt in ("official", "timm", "hf"):
            if fmt == "hf" and name.startswith("dino_"):
                pass
            state = convert(model.state_dict(), to=fmt)
            entry = {"sha": _sha(state), "detected": detect_format(state)}
            entry["canonical"] = state_dict_checksum(state)
            back = create(name, **overrides)
            entry["info"] = load_weights(back, state).describe()
            entry["reloaded"] = state_dict_checksum(back)
            entry["official again"] = _sha(convert(state, to="official"))
            path = work / f"{name}_{fmt}.pth"
            torch.save({"model": state}, path)
            official, info = read_state_dict(path)
            entry["read_state_dict"] = [_sha(official), info.describe().replace(str(work), "<work>")]
            out["exports"][f"{label} {fmt}"] = entry
    torch.manual_seed(0)
    eva = create("dinov3_vits16", depth=2)
    meta = meta_state_dict(eva.model)
    back = create("dinov3_vits16", depth=2)
    out["exports"]["dinov3 meta"] = {"sha": _sha(meta), "info": load_weights(back, meta).describe()}
    out["exports"]["dinov3 meta"]["reloaded"] = [state_dict_checksum(eva), state_dict_checksum(back)]
    out["checksums"]["canonical keys vit_tiny_reg"] = sorted(canonical_tensors(create("vit_tiny_reg")))
    empty, text, html = work / "empty.pth", work / "text.pth", work / "page.safetensors"
    empty.write_bytes(b"")
    text.write_text("hello")
    html.write_text("<!doctype html><html></html>")
    tiny = create("vit_tiny").state_dict()
    errors = {
        "unknown name": lambda: get_config("dinov2_vits15"),
        "unknown timm": lambda: get_config("timm:vit_smal_patch16_224"),
        "bad timm pair": lambda: get_config("timm:vit_small_patch16_224,depth"),
        "no timm model": lambda: get_config("timm:"),
        "hub none": lambda: weight_source(get_config("vit_tiny"), "official"),
        "hub timm none": lambda: weight_source(get_config("vit_tiny"), "timm"),
        "hub bad": lambda: weight_source(get_config("vit_tiny"), "xx"),
        "override bad": lambda: create("vit_tiny", colour=1),
        "drop path": lambda: create("vit_tiny", drop_path_rate=1.5),
        "heads": lambda: create("vit_tiny", num_heads=5),
        "mismatch": lambda: load_weights(create("vit_tiny_reg"), tiny),
        "mismatch size": lambda: load_weights(create("vit_tiny", depth=3), tiny),
        "detect garbage": lambda: detect_format({"a": torch.zeros(1)}),
        "detect dinov3": lambda: detect_format(
            {"storage_tokens": torch.zeros(1), "blocks.0.x": torch.zeros(1)}
        ),
        "convert heads": lambda: convert({**tiny, "head.weight": torch.zeros(1)}),
        "convert to": lambda: convert(tiny, to="onnx"),
        "empty": lambda: read_checkpoint(empty),
        "text": lambda: read_checkpoint(text),
        "html": lambda: read_checkpoint(html),
        "missing": lambda: read_checkpoint(work / "none.pth"),
        "resolve folder": lambda: resolve_backbone(str(work)),
        "resolve weights": lambda: resolve_backbone("vit_tiny", work / "none.pth"),
        "resolve file": lambda: resolve_backbone(str(text)),
        "random init": lambda: resolve_backbone("vit_tiny", text, random_init=True),
        "gated": lambda: download_weights(weight_source(get_config("dinov3_vits16"))),
        "input": lambda: create("vit_tiny").forward_features(torch.zeros(1, 1, 8, 8)),
        "small input": lambda: create("vit_tiny").forward_features(torch.zeros(1, 3, 4, 8)),
        "layers": lambda: create("vit_tiny").get_intermediate_layers(torch.zeros(1, 3, 16, 16), n=[9]),
        "registers fixed": lambda: create("dinov3_vits16", depth=1, num_register_tokens=0),
        "meta of vit": lambda: meta_state_dict(create("vit_tiny").model),
    }
    for label, call in errors.items():
        out["errors"][label] = _error(call).replace(str(work), "<work>").replace(str(Path.home()), "~")
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
