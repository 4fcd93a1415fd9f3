"""Choosing the implementation of the sort: compiled CPU kernel, Triton on CUDA, or the PyTorch reference."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from neco.method.sorting.reference import sort_reference
from neco.utils.logging import log_once

__all__ = ["BACKENDS", "select", "cpu_available", "triton_available"]

SortFn = Callable[[Tensor, Tensor, Tensor, list[int], float, str, float], tuple[Tensor, Tensor]]


def _sort(
    kind: str,
    x: Tensor,
    comparators: Tensor,
    offsets: Tensor,
    layer_offsets: list[int],
    steepness: float,
    distribution: str,
    art_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Sort with the `kind` implementation: reference, cpu, triton, or triton_or_reference.

    triton_or_reference falls back to the reference path (with a one-line warning) once the Triton
    kernel failed to compile or launch; the reference path's backward is autograd's, the kernels
    recompute the layer states in their own backward.
    """
    settings = (steepness, distribution, art_lambda)
    if kind == "cpu":
        from neco.method.sorting.cpu_kernel import sort_cpu

        return sort_cpu(x, comparators.to(torch.int32), offsets, *settings)
    if kind == "triton" or (kind == "triton_or_reference" and not _triton_broken):
        try:
            from neco.method.sorting.triton_kernel import sort_triton

            return sort_triton(x, comparators.to(torch.int32), layer_offsets, *settings)
        except Exception as error:  # compile / launch failure: keep training on the reference path
            if kind == "triton":
                raise
            _triton_broken.append(True)
            log_once(
                f"DiffSort: Triton kernel failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                "using the PyTorch reference path",
                level=logging.WARNING,
            )
    return sort_reference(x, comparators, layer_offsets, *settings)


_triton_broken: list[bool] = []


def cpu_available() -> bool:
    """Whether the compiled CPU kernel builds and loads (built once per process, cached on disk)."""
    if os.environ.get("NECO_SORT_DISABLE_CPU_KERNEL", "") not in ("", "0"):
        return False
    from neco.method.sorting.cpu_kernel import load

    return load()


def triton_available() -> bool:
    """Whether Triton imports (the kernel itself needs a CUDA device or TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except Exception:  # Triton missing or broken: the reference path runs instead
        return False
    return True


BACKENDS: dict[str, str] = {
    "auto": "compiled kernel for the input's device when it works, else reference",
    "reference": "plain PyTorch with autograd",
    "cpu": "compiled C++ kernel (CPU tensors)",
    "triton": "Triton kernel (CUDA tensors)",
}


def select(backend: str, x: Tensor) -> tuple[str, SortFn]:
    """Return (name, function) of the implementation that sorts `x` for the requested `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {sorted(BACKENDS)} but is {backend!r}")
    supported = x.dtype in (torch.float32, torch.float64)
    if backend == "cpu":
        if x.device.type != "cpu":
            raise ValueError(f"`backend` 'cpu' needs a CPU tensor but `x` is on {x.device}")
        if not cpu_available():
            raise RuntimeError("`backend` 'cpu': the compiled CPU kernel could not be built or loaded")
        return "compiled CPU kernel", partial(_sort, "cpu")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("`backend` 'triton': triton is not importable")
        return "Triton kernel", partial(_sort, "triton")
    if backend == "auto" and supported:
        if x.device.type == "cpu" and cpu_available():
            return "compiled CPU kernel", partial(_sort, "cpu")
        if x.device.type == "cuda" and triton_available():
            return "Triton kernel", partial(_sort, "triton_or_reference")
    return "PyTorch reference", partial(_sort, "reference")
