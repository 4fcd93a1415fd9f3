"""How far an HF `Dinov2Model` export drifts from neco away from the exported grid (random tiny weights).

HF's Dinov2 interpolates the position embedding with its own rule, so its patch tokens equal neco's
(= the official model's) only at the exported grid. Prints a table and writes JSON:
`python benchmarks/hf_sizes.py --out benchmarks/results/hf_sizes.json`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import transformers

from neco.backbones import create
from neco.cli import main as neco_main

SIZES = ((224, 224), (64, 64), (112, 112), (96, 160))  # 224 = the exported 28 x 28 grid of the tiny ViTs


def measure(name: str, folder: Path) -> list[dict]:
    """Max |HF - neco| of the patch tokens of one exported tiny backbone at each size."""
    torch.manual_seed(0)
    model = create(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # away from the init, as in the export test
    state = model.state_dict()
    registers = model.num_register_tokens
    ckpt = {"format": "neco-checkpoint", "version": 1, "backbone": name, "num_register_tokens": registers}
    path = folder / f"{name}.ckpt"
    torch.save({**ckpt, "teacher": state, "student": state}, path)
    assert neco_main(["export", str(path), "--format", "hf", "-o", str(folder / name)]) == 0
    hf = transformers.AutoModel.from_pretrained(str(folder / name)).eval()
    rows = []
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours = model.forward_features(x)["x_norm_patchtokens"]
            theirs = hf(pixel_values=x).last_hidden_state[:, 1 + registers :]
        rows.append(
            {"backbone": name, "size": f"{h}x{w}", "max_abs_diff": float((theirs - ours).abs().max())}
        )
    return rows


def main() -> None:
    """Measure both tiny ViTs and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (default: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in ("vit_tiny", "vit_tiny_reg") for r in measure(name, Path(tmp))]
    print("| backbone | input | max abs diff HF vs neco |\n|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['size']} | {r['max_abs_diff']:.2e} |")
    if args.out:
        args.out.write_text(
            json.dumps({"transformers": transformers.__version__, "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
