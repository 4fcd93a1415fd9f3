"""The compiled CPU kernel: built with torch's extension tools on first use, cached, wrapped in autograd.

The build directory is `$NECO_EXT_DIR/neco_sort_cpu` (default `~/.cache/neco/torch_extensions`); torch rebuilds
only when the source or flags change. If the build fails, `load()` returns False and the caller falls back to the
reference path with a one-line warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path

import torch
from torch import Tensor

from neco.utils.logging import get_logger, log_once

__all__ = ["DISTRIBUTION_IDS", "load", "SortCPUFunction", "extension_dir"]

DISTRIBUTION_IDS: dict[str, int] = {
    "cauchy": 0,
    "logistic": 1,
    "logistic_phi": 2,
    "gaussian": 3,
    "reciprocal": 4,
    "optimal": 5,
}

_SOURCE = Path(__file__).parent / "csrc" / "diffsort_cpu.cpp"
# -ffp-contract=off: no fused multiply-adds, so the arithmetic rounds exactly like diffsort's separate torch ops.
_CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-std=c++20"]
_lock = threading.Lock()
_state: dict[str, bool] = {}


def _cpu_tag() -> str:
    # The kernel is built with -march=native: a cache shared between different CPUs must not mix builds.
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return hashlib.sha1(f"{platform.machine()} {flags} {torch.__version__}".encode()).hexdigest()[:10]


def extension_dir() -> Path:
    """Directory where the compiled extension is cached (one per CPU feature set and torch version)."""
    root = os.environ.get("NECO_EXT_DIR") or os.path.join(Path.home(), ".cache", "neco", "torch_extensions")
    return Path(root) / f"neco_sort_cpu_{_cpu_tag()}"


def load() -> bool:
    """Build (or load the cached) CPU kernel once per process; return whether `torch.ops.neco_sort` works."""
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        try:
            from torch.utils import cpp_extension

            build_dir = extension_dir()
            build_dir.mkdir(parents=True, exist_ok=True)
            cpp_extension.load(
                name="neco_sort_cpu",
                sources=[str(_SOURCE)],
                extra_cflags=_CFLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
            _state["ok"] = hasattr(torch.ops.neco_sort, "forward")
        except Exception as error:  # any build or load failure means: use the reference path
            log_once(
                f"DiffSort: CPU kernel unavailable ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                "using the PyTorch reference path",
                level=logging.WARNING,
                logger=get_logger(),
            )
            _state["ok"] = False
        return _state["ok"]


class SortCPUFunction(torch.autograd.Function):
    """Autograd wrapper: saves only the input rows; backward recomputes every layer state per row."""

    @staticmethod
    def forward(ctx, x, comparators, offsets, steepness, kind, art_lambda):  # noqa: D102
        values, perm = torch.ops.neco_sort.forward(x, comparators, offsets, steepness, kind, art_lambda)
        ctx.save_for_backward(x, comparators, offsets)
        ctx.params = (steepness, kind, art_lambda)
        return values, perm

    @staticmethod
    def backward(ctx, grad_values, grad_perm):  # noqa: D102
        x, comparators, offsets = ctx.saved_tensors
        steepness, kind, art_lambda = ctx.params
        has_v, has_p = grad_values is not None, grad_perm is not None
        empty = x.new_empty(0)
        grad_x = torch.ops.neco_sort.backward(
            x,
            grad_values if has_v else empty,
            grad_perm if has_p else empty,
            comparators,
            offsets,
            steepness,
            kind,
            art_lambda,
            has_v,
            has_p,
        )
        return grad_x, None, None, None, None, None


def sort_cpu(
    x: Tensor,
    comparators32: Tensor,
    offsets32: Tensor,
    steepness: float,
    distribution: str,
    art_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Run the compiled kernel (float32 or float64 CPU tensors)."""
    return SortCPUFunction.apply(
        x, comparators32, offsets32, steepness, DISTRIBUTION_IDS[distribution], art_lambda
    )
