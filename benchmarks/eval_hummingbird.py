"""Speed and memory of the Hummingbird evaluation: memory-bank building and querying.

Two modes, both printing one table:
- random features (no backbone): (B, D, h, w) Gaussian features and blob masks stand in for the
  backbone, so the numbers are those of the bank, the search and the metric alone;
- a tiny backbone (`--backbone vit_tiny`) on generated colour-coded images, end to end.

    python benchmarks/eval_hummingbird.py --quick
    python benchmarks/eval_hummingbird.py --memory-size 1024000 --train-images 2000 --val-images 200
    python benchmarks/eval_hummingbird.py --backbone vit_tiny --input-size 128

"Projected" rows scale the measured rates to the full VOC protocol (10,582 train images x 2
augmentation passes, 1,449 val images) at the same memory size, without the backbone's time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _peak_device_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _blob_masks(n: int, size: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """Piecewise-constant masks: a coarse random label grid upsampled (like objects on a background)."""
    coarse = torch.randint(0, classes, (n, 1, 6, 6), generator=generator).float()
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()


def bench_random(args: argparse.Namespace) -> list[tuple]:
    """Bank building and querying with random features of dimension `--dim`."""
    from neco.evaluation.blocks.metrics import ConfusionMatrix
    from neco.evaluation.blocks.search import build_searcher
    from neco.evaluation.protocols.hummingbird import build_memory_bank, evaluate_queries

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    grid, patch = args.grid, 14
    size = grid * patch
    batch = args.batch_size

    # a small pool of pre-generated batches, cycled: generating features is not what is measured
    pool = [
        (
            torch.randn(batch, args.dim, grid, grid, generator=g).to(device),
            _blob_masks(batch, size, args.classes, g).to(device),
        )
        for _ in range(4)
    ]

    def stream(n):
        for i, start in enumerate(range(0, n, batch)):
            b = min(batch, n - start)
            features, masks = pool[i % len(pool)]
            yield features[:b], masks[:b]

    rows = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    bank = build_memory_bank(
        stream(args.train_images * args.aug_epochs),
        num_images=args.train_images,
        memory_size=args.memory_size,
        augmentation_epochs=args.aug_epochs,
        num_classes=args.classes,
        ignore_index=255,
        dtype={"fp32": torch.float32, "fp16": torch.float16}[args.bank_dtype],
        device=device,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - start
    n_build = args.train_images * args.aug_epochs
    rows.append(
        (
            "build (random features)",
            n_build,
            build_s,
            n_build / build_s,
            bank.nbytes() / 2**20,
            _peak_rss_mb(),
            _peak_device_mb(device),
        )
    )

    start = time.perf_counter()
    searcher = build_searcher(bank.stored()[0], args.search, nprobe=args.nprobe)
    index_s = time.perf_counter() - start
    confusion = ConfusionMatrix(args.classes, 255, device=device)
    start = time.perf_counter()
    evaluate_queries(stream(args.val_images), bank, searcher, confusion, k=30, temperature=0.02)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    query_s = time.perf_counter() - start
    rows.append(
        (
            f"query ({searcher.name}, index {index_s:.1f} s)",
            args.val_images,
            query_s,
            args.val_images / query_s,
            bank.nbytes() / 2**20,
            _peak_rss_mb(),
            _peak_device_mb(device),
        )
    )
    voc = 10582 * 2 / (n_build / build_s) + index_s + 1449 / (args.val_images / query_s)
    rows.append(("projected full VOC (no backbone)", 10582 * 2 + 1449, voc, None, None, None, None))
    return rows


def bench_backbone(args: argparse.Namespace) -> list[tuple]:
    """End to end with a real (tiny, random-init) backbone on generated colour-coded images."""
    from neco.backbones import create
    from neco.data import build_segmentation_dataset
    from neco.data.synthetic import write_scenes
    from neco.evaluation import EvalData, Features, evaluate
    from neco.evaluation.protocols.hummingbird import HummingbirdSettings

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_scenes(
            Path(tmp) / "scenes", args.train_images, args.val_images, args.input_size, 0, progress=False
        )
        data = EvalData(
            train=build_segmentation_dataset("scenes", root, "train"),
            val=build_segmentation_dataset("scenes", root, "val"),
        )
        settings = HummingbirdSettings(
            memory_size=args.memory_size,
            augmentation_epochs=args.aug_epochs,
            search=args.search,
            bank_dtype=args.bank_dtype,
            nprobe=args.nprobe,
        )
        out = evaluate(
            "hummingbird",
            Features.of_model(model, device),
            data,
            settings,
            input_size=args.input_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=str(device),
            progress=False,
        )
    t = out.result["timings"]
    n_build = args.train_images * args.aug_epochs
    mb = out.result["settings"]["memory_bytes"] / 2**20
    return [
        (
            f"build ({args.backbone} @ {args.input_size})",
            n_build,
            t["build_s"],
            n_build / t["build_s"],
            mb,
            _peak_rss_mb(),
            _peak_device_mb(device),
        ),
        (
            f"query ({out.result['settings']['search_backend']})",
            args.val_images,
            t["query_s"],
            args.val_images / t["query_s"],
            mb,
            _peak_rss_mb(),
            _peak_device_mb(device),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the chosen mode, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds on a laptop CPU)")
    parser.add_argument(
        "--backbone", default=None, help="e.g. vit_tiny; default: random features, no backbone"
    )
    parser.add_argument("--memory-size", type=int, default=1_024_000)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--aug-epochs", type=int, default=2)
    parser.add_argument("--dim", type=int, default=384, help="feature dimension (random mode)")
    parser.add_argument(
        "--grid", type=int, default=36, help="patch grid side (random mode; 36 = 504 px at patch 14)"
    )
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--input-size", type=int, default=128, help="image size (backbone mode)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--search", default="auto")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--bank-dtype", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.memory_size, args.train_images, args.val_images = min(args.memory_size, 102_400), 100, 8
    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    rows = bench_backbone(args) if args.backbone else bench_random(args)
    print(
        f"# Hummingbird benchmark: memory {args.memory_size:,} patches, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, bank {args.bank_dtype}"
    )
    print("| stage | images | seconds | images/s | bank MiB | peak RSS MiB | peak device MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, n, sec, rate, bank_mb, rss, dev in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(
            f"| {name} | {n:,} | {sec:.1f} | {fmt(rate, '.1f')} | {fmt(bank_mb, '.0f')} | {fmt(rss, '.0f')} | {fmt(dev, '.0f')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
