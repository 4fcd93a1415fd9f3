"""The Triton kernel: numbers checked in the Triton CPU interpreter; real CUDA runs behind the `gpu` marker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

_INTERPRETER_CHECK = textwrap.dedent(
    """
    import torch
    from neco.method.sorting import DiffSort
    gen = torch.Generator().manual_seed(0)
    worst_p = worst_g = 0.0
    for network, n, distribution in [("bitonic", 5, "cauchy"), ("bitonic", 49, "cauchy"),
                                     ("odd_even", 7, "optimal"), ("bitonic", 6, "gaussian")]:
        x = torch.randn(2, n, generator=gen)
        w = torch.randn(2, n, n, generator=gen)
        outs = []
        for backend in ("reference", "triton"):
            leaf = x.clone().requires_grad_()
            values, perm = DiffSort(network, n, 10.0, distribution, backend=backend)(leaf)
            (perm * w).sum().backward()
            outs.append((values.detach(), perm.detach(), leaf.grad))
        (v0, p0, g0), (v1, p1, g1) = outs
        assert p1.shape == (2, n, n)
        worst_p = max(worst_p, (p0 - p1).abs().max().item(), (v0 - v1).abs().max().item())
        worst_g = max(worst_g, ((g0 - g1).abs().max() / g0.abs().max()).item())
    print(worst_p, worst_g)
    """
)


def _interpreter_works() -> bool:
    return hasattr(triton.language, "gather")


@pytest.mark.skipif(not _interpreter_works(), reason="this Triton has no tl.gather / interpreter support")
def test_triton_kernel_matches_reference_in_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0 and "InterpreterError" in result.stderr and "not supported" in result.stderr:
        pytest.skip(f"Triton interpreter cannot run the kernel: {result.stderr.splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-2000:]
    worst_p, worst_g = map(float, result.stdout.split()[-2:])
    # The interpreter computes atan from elementary ops (no libdevice): ~1e-7 per alpha.
    assert worst_p < 5e-6
    assert worst_g < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("network", ["bitonic", "odd_even"])
@pytest.mark.parametrize("distribution", ["cauchy", "logistic", "optimal"])
def test_triton_matches_diffsort_on_cuda(network: str, distribution: str) -> None:
    diffsort = pytest.importorskip("diffsort")
    device = torch.device("cuda")
    x = torch.randn(64, 49, device=device)
    w = torch.randn(64, 49, 49, device=device)
    ref = diffsort.DiffSortNet(network, 49, device="cuda", steepness=100.0, distribution=distribution)
    from neco.method.sorting import DiffSort

    ours = DiffSort(network, 49, 100.0, distribution).to(device)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    v_ref, p_ref = ref(x_ref)
    v_ours, p_ours = ours(x_ours)
    (p_ref * w).sum().backward()
    (p_ours * w).sum().backward()
    torch.testing.assert_close(p_ours, p_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(v_ours, v_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-4 * x_ref.grad.abs().max().item())
