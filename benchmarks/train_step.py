"""Images/s and peak memory of one NeCo training step: neco defaults vs "public-code settings".

One step = student forward on all crops + teacher forward on the global crops + NeCo loss +
backward + AdamW step + EMA update, on a fixed multi-crop batch of random-noise images.

Rows:
  neco defaults        precision auto (bf16 autocast on CUDA, fp32 on CPU), neco's sorter (fast
                       kernel path), teacher forward under torch.no_grad.
  public-code settings fp32, the `diffsort` 0.2.0 sorter (dense per-layer matrix products), teacher
                       forward building an autograd graph (teacher parameters requiring grad).
  dinov3 ViT-S/16      neco defaults with `model.backbone=dinov3_vits16` (timm's Eva, RoPE, 4 registers;
                       random init, so no gated weights are needed) on the same crops (`--rows dinov3`).

Examples:
  python benchmarks/train_step.py                                # CPU, configs/tiny_cpu.yaml
  python benchmarks/train_step.py --device cuda --config configs/small/neco_dinov2r.yaml \
      --batch-size 64 model.pretrained=false                     # ViT-S/14 reg, 518/98, batch 64
  python benchmarks/train_step.py --rows neco,dinov3             # tiny ViT vs DINOv3 ViT-S/16, CPU

On CPU each row runs in its own subprocess so that the peak resident memory (ru_maxrss) of one row
does not include the other's. On CUDA the peak is `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"neco": "neco defaults", "public": "public-code settings", "dinov3": "neco defaults, DINOv3 ViT-S/16"}
DINOV3_OVERRIDES = ["model.backbone=dinov3_vits16", "model.pretrained=false", "model.weights=null"]


class _DiffsortSorter(torch.nn.Module):
    """The `diffsort` package's DiffSortNet behind neco's sorter interface `(B, n) -> (sorted, P)`."""

    def __init__(self, reference: Any, device: torch.device) -> None:
        super().__init__()
        from diffsort import DiffSortNet

        network = {"bitonic": "bitonic", "odd_even": "odd_even"}[reference.network]
        self.net = DiffSortNet(
            network,
            reference.size,
            steepness=reference.steepness,
            distribution=reference.distribution,
            device=str(device),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)


def _batch(config: Any, batch_size: int, seed: int = 0) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from neco.training.datamodule import build_crop_sampler, collate_with_position

    sampler = build_crop_sampler(config.data)
    rng = np.random.default_rng(seed)
    side = max(config.data.crops.global_size, 64) * 5 // 4
    samples = []
    for index in range(batch_size):
        image = Image.fromarray(rng.integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8))
        sample = sampler(image, torch.Generator().manual_seed(seed * 100003 + index))
        sample["epoch"], sample["position"] = 0, index
        samples.append(sample)
    return collate_with_position(samples)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: ([v.to(device) for v in value] if isinstance(value, list) else value.to(device))
        for k, value in ((k, batch[k]) for k in batch)
    }


def measure(
    row: str, config_path: str, overrides: list[str], batch_size: int, device: str, steps: int, warmup: int
) -> dict[str, Any]:
    """Time `steps` training steps of one row after `warmup` steps; return images/s and peak memory."""
    from neco.method.ema import ema_update_
    from neco.training.config import load_config
    from neco.training.module import NeCoModule

    torch.manual_seed(0)
    dev = torch.device(device)
    if row == "dinov3":
        overrides = [*overrides, *DINOV3_OVERRIDES]
    config = load_config(config_path, [*overrides, f"data.batch_size={batch_size}"])
    module = NeCoModule(config).to(dev)
    module.train()
    public = row == "public"
    sorter_note = "neco DiffSort (auto backend)"
    if public:
        try:
            module.loss_fn.student_sorter = _DiffsortSorter(module.loss_fn.student_sorter, dev)
            module.loss_fn.teacher_sorter = _DiffsortSorter(module.loss_fn.teacher_sorter, dev)
            sorter_note = "diffsort 0.2.0 DiffSortNet"
        except ImportError:
            for sorter in (module.loss_fn.student_sorter, module.loss_fn.teacher_sorter):
                sorter.backend = "reference"
            sorter_note = "neco reference sorter (diffsort not installed)"
        for param in [*module.teacher.parameters(), *module.teacher_head.parameters()]:
            param.requires_grad_(True)

        def compute_loss(batch: dict[str, Any]) -> Any:
            # The public code's teacher forward: with an autograd graph.
            views = batch["views"]
            teacher_grids, _ = module._forward_views(
                module.teacher, module.teacher_head, views[: module.num_global]
            )
            student_grids, _ = module._forward_views(module.student, module.student_head, views)
            out = module.loss_fn(
                student_grids, teacher_grids, batch["boxes"].float(), batch["valid"], module.patch_size
            )
            return out.loss

    else:

        def compute_loss(batch: dict[str, Any]) -> Any:
            return module.compute_loss(batch)[0]

    optimizer = module.configure_optimizers()
    use_bf16 = (not public) and dev.type == "cuda" and config.run.precision in ("auto", "bf16")
    batch = _to(_batch(config, batch_size), dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for step in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update_(module.teacher, module.student, 0.9995)
        ema_update_(module.teacher_head, module.student_head, 0.9995)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
        memory_kind = "CUDA max allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory_kind = "process peak RSS"
    return {
        "row": ROWS[row],
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)",
        "precision": "bf16 autocast" if use_bf16 else "fp32",
        "sorter": sorter_note,
        "teacher": "autograd graph" if public else "no_grad",
        "backbone": config.model.backbone,
        "crops": f"{config.data.crops.num_global}x{config.data.crops.global_size} + {config.data.crops.num_local}x{config.data.crops.local_size}",
        "roi": config.loss.roi_size,
        "batch_size": batch_size,
        "step_s": seconds,
        "images_per_s": batch_size / seconds,
        "peak_memory_mb": peak_mb,
        "memory_kind": memory_kind,
        "loss": float(loss.detach()),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both rows and print a side-by-side Markdown table (and JSON with --json)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/tiny_cpu.yaml"))
    parser.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's data.batch_size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rows", default="neco,public", help="comma-separated subset of neco,public,dinov3")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--_row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU rows cannot run here", file=sys.stderr)
        return 2
    from neco.training.config import load_config

    batch_size = args.batch_size or load_config(args.config, args.overrides).data.batch_size
    if args._row is not None:  # child process of a CPU run
        print(
            json.dumps(
                measure(
                    args._row, args.config, args.overrides, batch_size, args.device, args.steps, args.warmup
                )
            )
        )
        return 0
    results = []
    for row in args.rows.split(","):
        if row not in ROWS:
            raise SystemExit(f"--rows must name rows of {sorted(ROWS)} but includes {row!r}")
        if args.device == "cpu":
            command = [
                sys.executable,
                __file__,
                "--config",
                args.config,
                *args.overrides,
                "--batch-size",
                str(batch_size),
                "--device",
                "cpu",
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--_row",
                row,
            ]
            out = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        else:
            results.append(
                measure(row, args.config, args.overrides, batch_size, args.device, args.steps, args.warmup)
            )
    first = results[0]
    print(
        f"\nTraining step: {', '.join(dict.fromkeys(r['backbone'] for r in results))}, crops {first['crops']}, ROI {first['roi']}x{first['roi']}, "
        f"batch {first['batch_size']}, {first['device']} (median of {args.steps} steps after {args.warmup} warm-up)\n"
    )
    print("| settings | backbone | precision | sorter | teacher | s/step | images/s | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['row']} | {r['backbone']} | {r['precision']} | {r['sorter']} | {r['teacher']} | {r['step_s']:.3f} | "
            f"{r['images_per_s']:.2f} | {r['peak_memory_mb']:.0f} ({r['memory_kind']}) |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
