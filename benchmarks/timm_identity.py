"""Are the timm-built backbones bit-identical to an earlier neco revision's? (issue 24)

Record the outputs at the old revision, then compare with the current tree:

    git worktree add /tmp/old e2f65e0   # or any copy of the old src/
    PYTHONPATH=/tmp/old/src python benchmarks/timm_identity.py record /tmp/ref_old.pt
    PYTHONPATH=src python benchmarks/timm_identity.py compare /tmp/ref_old.pt \
        --out benchmarks/results/timm_backbones_issue24.json

Compared: the shipped `vit_tiny_scenes` (patch tokens, CLS, last-block attention, two intermediate
layers) at 224 and three smaller / non-square sizes; seeded random-init `vit_tiny` / `vit_tiny_reg`
at 224, 448, 224x336 and 72x104; and the old random-init weights loaded into the new models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neco.backbones import create

SIZES = [(224, 224), (448, 448), (224, 336), (72, 104)]
SCENE_SIZES = [(112, 112), (160, 240), (64, 96)]


def _image(size: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def outputs(weights: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """Every compared output of the current `neco.backbones` (random init, or `weights` per name)."""
    out: dict[str, torch.Tensor] = {}
    scenes = create("vit_tiny_scenes", pretrained=True).eval()
    x = torch.cat([_image((224, 224), 0), _image((224, 224), 5)])
    features = scenes.forward_features(x)
    out["scenes 224 patch tokens"] = features["x_norm_patchtokens"]
    out["scenes 224 cls"] = features["x_norm_clstoken"]
    out["scenes 224 attention"] = scenes.get_last_self_attention(x)
    out["scenes 224 layers 3-4"] = torch.stack(scenes.get_intermediate_layers(x, n=2, reshape=True))
    for size in SCENE_SIZES:
        out[f"scenes {size} patch tokens"] = scenes.forward_features(_image(size, 1))["x_norm_patchtokens"]
    for name in ("vit_tiny", "vit_tiny_reg"):
        torch.manual_seed(3)
        model = create(name) if weights is None else create(name, weights=weights[name])
        model.eval()
        if weights is None:
            out[f"{name} state"] = {k: v.clone() for k, v in model.state_dict().items()}  # type: ignore[assignment]
        for size in SIZES:
            out[f"{name} {size} patch tokens"] = model.forward_features(_image(size, 2))["x_norm_patchtokens"]
    return out


def main() -> None:
    """`record OUT` or `compare REF --out JSON`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "compare"])
    parser.add_argument("path", type=Path, help="reference file written by `record`")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the comparison")
    args = parser.parse_args()
    if args.mode == "record":
        torch.save(outputs(), args.path)
        return
    ref = torch.load(args.path, weights_only=True)
    rows = {}
    for label, run in (
        ("random init", outputs()),
        ("old weights loaded", outputs({n: ref[f"{n} state"] for n in ("vit_tiny", "vit_tiny_reg")})),
    ):
        for key, old in ref.items():
            if key.endswith(" state") or (label == "old weights loaded" and key.startswith("scenes")):
                continue
            new = run[key]
            rows[f"{key} ({label})" if not key.startswith("scenes") else key] = {
                "shape": list(old.shape),
                "bit_identical": bool(torch.equal(old, new)),
                "max_abs_diff": float((old - new).abs().max()),
            }
    for key, row in rows.items():
        print(f"{key:55s} {'identical' if row['bit_identical'] else row['max_abs_diff']}")
    if args.out is not None:
        args.out.write_text(json.dumps({"reference": str(args.path), "outputs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
