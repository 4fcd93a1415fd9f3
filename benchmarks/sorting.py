"""Benchmark: diffsort 0.2.0 vs neco's DiffSort, forward and forward+backward, side by side.

Usage:
    python benchmarks/sorting.py                 # B in {1024, 3136, 12544}, n = 49, both networks
    python benchmarks/sorting.py --quick         # small smoke run
    python benchmarks/sorting.py --device cuda   # on a GPU (Triton path)

Prints a Markdown table of median times (time.perf_counter, after a warm-up), the diffsort / neco ratio, and the
memory autograd keeps for the backward (bytes of the distinct tensors saved by the graph, measured with
torch.autograd.graph.saved_tensors_hooks); on CUDA also the peak allocated memory of forward+backward.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    fn()  # warm-up (kernel build / load, caches)
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _saved_bytes(sorter: torch.nn.Module, x: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    leaf = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        values, perm = sorter(leaf)
    del values, perm  # the count includes the saved input rows (B, n)
    return sum(storages.values())


def _peak_cuda(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def _measure(
    sorter: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, reps: int
) -> dict[str, float | None]:
    device = x.device

    def forward() -> None:
        with torch.no_grad():
            sorter(x)

    def forward_backward() -> None:
        leaf = x.clone().requires_grad_()
        _, perm = sorter(leaf)
        (perm * weight).sum().backward()

    return {
        "fwd": _median_time(forward, reps, device),
        "fwd_bwd": _median_time(forward_backward, reps, device),
        "saved": _saved_bytes(sorter, x),
        "peak": _peak_cuda(forward_backward, device),
    }


def _fmt_time(seconds: float | None) -> str:
    return "skipped" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _fmt_bytes(num: float | None) -> str:
    return "-" if num is None else f"{num / 2**20:.1f} MB"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.1f}x"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 3136, 12544])
    parser.add_argument("--n", type=int, default=49)
    parser.add_argument("--networks", nargs="+", default=["bitonic", "odd_even"])
    parser.add_argument("--steepness", type=float, default=100.0)
    parser.add_argument("--distribution", default="cauchy")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--max-diffsort-batch",
        type=int,
        default=None,
        help="skip diffsort above this batch size (it takes minutes per call on small CPUs)",
    )
    parser.add_argument(
        "--flush-denormal",
        action="store_true",
        help="torch.set_flush_denormal(True) on the main thread (use with --threads 1 to cover every kernel)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: B=256, n=49, 2 reps")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.reps = [256], 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)

    import diffsort

    from neco.method.sorting import DiffSort
    from neco.method.sorting.backends import select

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    path, _ = select("auto", torch.zeros(1, args.n, device=device))
    cpu = platform.processor() or platform.machine()
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu}, {torch.get_num_threads()} threads"
    )
    print(f"# device: {where}; torch {torch.__version__}; neco path: {path}")
    print(
        f"# n={args.n}, steepness={args.steepness}, {args.distribution}, median of {args.reps} reps, float32, "
        f"flush denormals: {args.flush_denormal}\n"
    )
    print(
        "| network | B | diffsort fwd | neco fwd | ratio | diffsort fwd+bwd | neco fwd+bwd | ratio "
        "| diffsort saved | neco saved | ratio |"
        + (" diffsort peak | neco peak |" if device.type == "cuda" else "")
    )
    print("|---" * (11 + (2 if device.type == "cuda" else 0)) + "|")
    for network in args.networks:
        for batch in args.batch_sizes:
            x = torch.randn(batch, args.n, generator=generator).to(device)
            weight = torch.randn(batch, args.n, args.n, generator=generator).to(device)
            neco = DiffSort(network, args.n, args.steepness, args.distribution).to(device)
            ours = _measure(neco, x, weight, args.reps)
            if args.max_diffsort_batch is not None and batch > args.max_diffsort_batch:
                ref: dict[str, float | None] = {"fwd": None, "fwd_bwd": None, "saved": None, "peak": None}
            else:
                reference = diffsort.DiffSortNet(
                    network,
                    args.n,
                    device=str(device),
                    steepness=args.steepness,
                    distribution=args.distribution,
                )
                ref = _measure(reference, x, weight, args.reps)
            row = [
                network,
                str(batch),
                _fmt_time(ref["fwd"]),
                _fmt_time(ours["fwd"]),
                _ratio(ref["fwd"], ours["fwd"]),
                _fmt_time(ref["fwd_bwd"]),
                _fmt_time(ours["fwd_bwd"]),
                _ratio(ref["fwd_bwd"], ours["fwd_bwd"]),
                _fmt_bytes(ref["saved"]),
                _fmt_bytes(ours["saved"]),
                _ratio(ref["saved"], ours["saved"]),
            ]
            if device.type == "cuda":
                row += [_fmt_bytes(ref["peak"]), _fmt_bytes(ours["peak"])]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
