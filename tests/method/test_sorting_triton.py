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


# The backward check: every relaxation at n = 25 and 49 on both networks and at n = 100 on bitonic, odd-even
# n = 100 with cauchy (100 layers of 128 x 128 tiles are slow in the interpreter), and steepness 10 besides 100.
# One row per case keeps the interpreter fast; each row still holds n values and n^2 P entries.
NETWORKS = ["bitonic", "odd_even"]
DISTRIBUTIONS = ["cauchy", "logistic", "logistic_phi", "gaussian", "reciprocal", "optimal"]
BACKWARD_CASES = (
    [(network, n, d, 100.0) for network in NETWORKS for n in (25, 49) for d in DISTRIBUTIONS]
    + [("bitonic", 100, d, 100.0) for d in DISTRIBUTIONS]
    + [("odd_even", 100, "cauchy", 100.0)]
    + [(network, 25, d, 10.0) for network in NETWORKS for d in ("cauchy", "logistic_phi")]
)

_BACKWARD_CHECK = textwrap.dedent(
    """
    import json, sys, zlib
    import torch
    import diffsort
    from neco.method.sorting import DiffSort
    from neco.method.sorting import triton_kernel

    torch.set_flush_denormal(True)
    cases = json.loads(sys.argv[1])
    out = {}

    def grads(sorter, x, w_perm, w_val, use_perm=True, use_values=True):
        leaf = x.clone().requires_grad_()
        values, perm = sorter(leaf)
        loss = 0
        if use_perm:
            loss = loss + (perm * w_perm).sum()
        if use_values:
            loss = loss + (values * w_val).sum()
        loss.backward()
        return values.detach(), perm.detach(), leaf.grad

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

    for network, n, distribution, steepness in cases:
        gen = torch.Generator().manual_seed(zlib.crc32(f"{network}-{n}-{distribution}-{steepness}".encode()))
        x = torch.randn(1, n, generator=gen)
        w_perm, w_val = torch.randn(1, n, n, generator=gen), torch.randn(1, n, generator=gen)
        triton_sort = DiffSort(network, n, steepness, distribution, backend="triton")
        ref_sort = DiffSort(network, n, steepness, distribution, backend="reference")
        ours = grads(triton_sort, x, w_perm, w_val)
        ref = grads(ref_sort, x, w_perm, w_val)
        theirs = grads(diffsort.DiffSortNet(network, n, steepness=steepness, distribution=distribution),
                       x, w_perm, w_val)
        x64, w_perm64, w_val64 = x.double(), w_perm.double(), w_val.double()
        ref64 = grads(ref_sort, x64, w_perm64, w_val64)
        result = {
            "grad_vs_reference": rel(ours[2], ref[2]),
            "grad_vs_diffsort": rel(ours[2], theirs[2]),
            "perm_vs_reference": (ours[1] - ref[1]).abs().max().item(),
            # how far float32 rounding alone moves the reference path's gradient
            "reference32_vs_64": rel(ref[2], ref64[2]),
            "grad_vs_reference64": rel(ours[2], ref64[2]),
        }
        if n < 100:  # (the float64 pass doubles the interpreter time; n = 25 and 49 cover the math)
            result["float64_grad_vs_reference64"] = rel(grads(triton_sort, x64, w_perm64, w_val64)[2], ref64[2])
        out[f"{network}-{n}-{distribution}-{steepness}"] = result

    # The kernel's branches: P-only and values-only gradients, float64 input, several workspace launches.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 9, generator=gen)
    w_perm, w_val = torch.randn(5, 9, 9, generator=gen), torch.randn(5, 9, generator=gen)
    triton_sort = DiffSort("bitonic", 9, 30.0, "cauchy", backend="triton")
    ref_sort = DiffSort("bitonic", 9, 30.0, "cauchy", backend="reference")
    for name, flags in (("perm_only", (True, False)), ("values_only", (False, True))):
        out[name] = rel(grads(triton_sort, x, w_perm, w_val, *flags)[2], grads(ref_sort, x, w_perm, w_val, *flags)[2])
    g64 = grads(triton_sort, x.double(), w_perm.double(), w_val.double())[2]
    out["float64_dtype"] = str(g64.dtype)
    out["float64"] = rel(g64, grads(ref_sort, x.double(), w_perm.double(), w_val.double())[2])
    triton_kernel.WORKSPACE_BYTES, triton_kernel._MIN_CHUNK_ROWS = 1, 2  # 2 rows per launch: 3 launches
    out["chunks"] = triton_kernel.backward_chunk_rows(5, 16, 6, True)
    out["chunked"] = rel(grads(triton_sort, x, w_perm, w_val)[2], grads(ref_sort, x, w_perm, w_val)[2])
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def backward_results() -> dict:
    """Run every backward case once in a Triton-interpreter subprocess; return the errors by case."""
    import json

    if not _interpreter_works():
        pytest.skip("this Triton has no tl.gather / interpreter support")
    pytest.importorskip("diffsort")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _BACKWARD_CHECK, json.dumps(BACKWARD_CASES)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout.strip().splitlines()[-1])  # the measured errors, for `pytest -s`
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("network,n,distribution,steepness", BACKWARD_CASES)
def test_triton_backward_matches_reference_and_diffsort(
    backward_results: dict, network: str, n: int, distribution: str, steepness: float
) -> None:
    errors = backward_results[f"{network}-{n}-{distribution}-{steepness}"]
    # float64 rows mix in float64 in the kernel: the backward's math against autograd, free of rounding noise.
    if "float64_grad_vs_reference64" in errors:
        assert errors["float64_grad_vs_reference64"] <= 1e-9, errors
    # float32, relative to the largest gradient, as the issue asks (1e-5). Where float32 rounding alone moves
    # the reference path's own gradient by more than 5e-6 (steep networks: an ulp of exp / erf / atan grows
    # through the layers), the kernel must instead be about as close to the float64 truth as the float32
    # reference path is, and within 1e-4 of it and of diffsort.
    if errors["reference32_vs_64"] <= 5e-6:
        assert errors["grad_vs_reference"] <= 1e-5, errors
        assert errors["grad_vs_diffsort"] <= 1e-5, errors
        assert errors["perm_vs_reference"] <= 1e-5, errors
    else:
        assert errors["grad_vs_reference64"] <= 2 * errors["reference32_vs_64"], errors
        assert errors["grad_vs_reference"] <= 1e-4 and errors["grad_vs_diffsort"] <= 1e-4, errors
        assert errors["perm_vs_reference"] <= 5e-5, errors


@pytest.mark.slow
def test_triton_backward_branches(backward_results: dict) -> None:
    assert backward_results["perm_only"] <= 1e-5
    assert backward_results["values_only"] <= 1e-5
    assert backward_results["float64_dtype"] == "torch.float64"
    assert backward_results["float64"] <= 1e-9  # float64 rows mix in float64
    assert backward_results["chunks"] == 2
    assert backward_results["chunked"] <= 1e-5


def test_backward_chunk_rows_respects_the_workspace_budget() -> None:
    from neco.method.sorting import triton_kernel

    per_row = 4 * 21 * 64 * (1 + 64)  # bitonic n = 49: 21 layers of values and 64 x 64 tiles
    assert triton_kernel.backward_chunk_rows(10**6, 64, 21, True) == triton_kernel.WORKSPACE_BYTES // per_row
    assert triton_kernel.backward_chunk_rows(100, 64, 21, True) == 100  # never more rows than the batch
    # a huge per-row workspace still gets the minimum grid, not one row per launch
    assert triton_kernel.backward_chunk_rows(10**6, 128, 10**4, True) == triton_kernel._MIN_CHUNK_ROWS
    # without a P gradient only the values are kept: many more rows per launch
    assert triton_kernel.backward_chunk_rows(10**7, 64, 21, False) > 50 * triton_kernel.backward_chunk_rows(
        10**7, 64, 21, True
    )


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
