"""DiffSort against diffsort 0.2.0 (values, P, gradients), gradcheck, properties, API errors."""

from __future__ import annotations

import itertools
import os
import random
import zlib

import pytest
import torch

from neco.method.sorting import DiffSort, build_network
from neco.method.sorting import backends as sort_backends

diffsort = pytest.importorskip("diffsort")

NETWORKS = ["bitonic", "odd_even"]
DISTRIBUTIONS = ["cauchy", "logistic", "logistic_phi", "gaussian", "reciprocal", "optimal"]
SIZES = [2, 5, 49, 64, 100]
CPU_KERNEL = sort_backends.cpu_available()
COMPUTED_BACKENDS = ["reference"] + (["cpu"] if CPU_KERNEL else [])


@pytest.fixture(autouse=True)
def _fast_float_mode():
    # Steep relaxations drive far-off P entries into subnormal floats, which are ~100x slower on x86; flushing them
    # (on one thread, so the flag covers every kernel) keeps diffsort and neco comparable and the tests fast.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def _hard_sort(network: str, values: list[float]) -> list[float]:
    wires = list(values)
    for layer in build_network(network, len(values)):
        for a, b, lo, hi in layer:
            small, large = min(wires[a], wires[b]), max(wires[a], wires[b])
            wires[lo], wires[hi] = small, large
    return wires


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 49, 64, 100])
def test_networks_sort_with_hard_comparators(network: str, n: int) -> None:
    rng = random.Random(n)
    layers = build_network(network, n)
    for layer in layers:
        touched = [w for a, b, _, _ in layer for w in (a, b)]
        assert len(touched) == len(set(touched)), "comparators of a layer must be disjoint"
        assert all(0 <= w < n for w in touched)
    for _ in range(20):
        values = [rng.random() for _ in range(n)]
        assert _hard_sort(network, values) == sorted(values)


def test_network_depths() -> None:
    assert len(build_network("bitonic", 49)) == 21  # padded to 64 wires: 6 * 7 / 2 layers
    assert len(build_network("odd_even", 49)) == 49


def _compare_with_diffsort(network: str, n: int, distribution: str, steepness: float, backend: str) -> None:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{network}-{n}-{distribution}-{steepness}".encode()))
    batch = 4
    x = torch.randn(batch, n, generator=gen)
    w_perm = torch.randn(batch, n, n, generator=gen)
    w_val = torch.randn(batch, n, generator=gen)
    ref = diffsort.DiffSortNet(network, n, steepness=steepness, distribution=distribution)
    ours = DiffSort(network, n, steepness, distribution, backend=backend)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    v_ref, p_ref = ref(x_ref)
    v_ours, p_ours = ours(x_ours)
    ((p_ref * w_perm).sum() + (v_ref * w_val).sum()).backward()
    ((p_ours * w_perm).sum() + (v_ours * w_val).sum()).backward()
    assert p_ours.shape == (batch, n, n) and p_ours.dtype == torch.float32
    if distribution in ("logistic", "logistic_phi"):
        # torch's sigmoid/pow use different vector math for different tensor layouts, so 1-ulp alpha differences
        # can grow through the layers at high steepness.
        atol = 1e-6 if steepness <= 10 else 5e-5
    else:
        atol = 1e-6
    torch.testing.assert_close(p_ours, p_ref, rtol=0, atol=atol)
    torch.testing.assert_close(v_ours, v_ref, rtol=1e-6, atol=max(atol, 1e-6))
    scale = x_ref.grad.abs().max().item()
    # Gradients differ from diffsort's by summation order (and, for gaussian, diffsort's hand-written derivative)
    # only; at high steepness the derivatives of nearly tied
    # comparators are large and that order matters more.
    if distribution in ("logistic", "logistic_phi", "gaussian"):
        grad_tol = 1e-5 if steepness <= 10 else 1e-3
    else:
        grad_tol = 1e-5 if steepness <= 100 else 1e-4
    assert (x_ours.grad - x_ref.grad).abs().max().item() <= grad_tol * scale


@pytest.mark.parametrize("backend", COMPUTED_BACKENDS)
@pytest.mark.parametrize("network,distribution", list(itertools.product(NETWORKS, DISTRIBUTIONS)))
def test_matches_diffsort_n49(backend: str, network: str, distribution: str) -> None:
    for steepness in (1.0, 100.0, 1000.0):
        _compare_with_diffsort(network, 49, distribution, steepness, backend)


@pytest.mark.parametrize("backend", COMPUTED_BACKENDS)
@pytest.mark.parametrize("network,n", list(itertools.product(NETWORKS, [2, 5, 64, 100])))
def test_matches_diffsort_sizes(backend: str, network: str, n: int) -> None:
    for distribution, steepness in (
        ("cauchy", 10.0),
        ("cauchy", 1000.0),
        ("optimal", 30.0),
        ("logistic", 3.0),
    ):
        _compare_with_diffsort(network, n, distribution, steepness, backend)


@pytest.mark.skipif(
    not (CPU_KERNEL and torch.ops.neco_sort.has_mkl_vml()), reason="bitwise needs torch's MKL"
)
@pytest.mark.parametrize("network", NETWORKS)
def test_cauchy_is_bitwise_identical_to_diffsort(network: str) -> None:
    x = torch.randn(16, 49, generator=torch.Generator().manual_seed(3))
    v_ref, p_ref = diffsort.DiffSortNet(network, 49, steepness=100.0)(x)
    v_ours, p_ours = DiffSort(network, 49, 100.0, backend="cpu")(x)
    # diffsort's one-hot matmuls can round a subnormal 0.5 * p + 0.5 * p differently; nothing else may differ.
    assert (p_ours - p_ref).abs().max().item() < 1e-30
    assert torch.equal(v_ours, v_ref)


@pytest.mark.parametrize("backend", COMPUTED_BACKENDS)
@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("distribution", ["cauchy", "logistic_phi", "gaussian", "optimal"])
def test_gradcheck_float64(backend: str, network: str, distribution: str) -> None:
    sorter = DiffSort(network, 5, 3.0, distribution, backend=backend)
    x = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sorter(t), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", COMPUTED_BACKENDS)
def test_gradient_of_values_only_and_of_p_only(backend: str) -> None:
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(5))
    for use in ("values", "perm"):
        grads = []
        for name in ("reference", backend):
            xx = x.clone().requires_grad_()
            values, perm = DiffSort("bitonic", 7, 5.0, backend=name)(xx)
            (values.pow(2).sum() if use == "values" else perm[:, :, 0].sum()).backward()
            grads.append(xx.grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
        assert grads[0].abs().max() > 0


@pytest.mark.parametrize("backend", COMPUTED_BACKENDS)
@pytest.mark.parametrize("network", NETWORKS)
def test_doubly_stochastic_and_sorted_equals_x_at_p(backend: str, network: str) -> None:
    x = torch.randn(6, 49, generator=torch.Generator().manual_seed(2))
    values, perm = DiffSort(network, 49, 20.0, backend=backend)(x)
    ones = torch.ones(6, 49)
    torch.testing.assert_close(perm.sum(dim=1), ones, atol=1e-5, rtol=0)
    torch.testing.assert_close(perm.sum(dim=2), ones, atol=1e-5, rtol=0)
    assert (perm >= 0).all()
    torch.testing.assert_close(values, torch.einsum("bi,bir->br", x, perm), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", COMPUTED_BACKENDS)
def test_steep_sort_approaches_hard_sort_ascending(backend: str) -> None:
    # Well-separated values: with a steep logistic relaxation P is nearly the hard permutation, ascending.
    x = torch.randperm(33, generator=torch.Generator().manual_seed(4)).float().unsqueeze(0) * 10
    values, perm = DiffSort("bitonic", 33, 10.0, "logistic", backend=backend)(x)
    torch.testing.assert_close(values, x.sort(dim=1).values, atol=0.05, rtol=0)
    hard = torch.zeros(1, 33, 33)
    hard[0, x[0].argsort(), torch.arange(33)] = 1.0  # P[item, rank]
    assert (perm - hard).abs().max() < 0.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_inputs_mix_in_float32(dtype: torch.dtype) -> None:
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(6))
    sorter = DiffSort("odd_even", 10, 10.0)
    values, perm = sorter(x.to(dtype))
    assert values.dtype == dtype and perm.dtype == dtype
    _, perm32 = sorter(x.to(dtype).float())
    torch.testing.assert_close(perm, perm32.to(dtype))


def test_module_buffers_move_and_are_not_saved() -> None:
    sorter = DiffSort("bitonic", 49)
    assert "comparators" not in sorter.state_dict()
    moved = sorter.to(torch.float64)
    assert moved.comparators.dtype == torch.int64  # index buffers keep their dtype
    values, perm = moved(torch.randn(2, 49, dtype=torch.float64))
    assert perm.dtype == torch.float64
    assert sorter.num_layers == 21


def test_auto_uses_the_compiled_kernel_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = sort_backends.select("auto", torch.zeros(1, 3))
    assert name == ("compiled CPU kernel" if CPU_KERNEL else "PyTorch reference")
    monkeypatch.setenv("NECO_SORT_DISABLE_CPU_KERNEL", "1")
    name, _ = sort_backends.select("auto", torch.zeros(1, 3))
    assert name == "PyTorch reference"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"network": "bubble"}, "`network` must be one of"),
        ({"distribution": "softmax"}, "`distribution` must be one of"),
        ({"backend": "gpu"}, "`backend` must be one of"),
        ({"steepness": 0.0}, "`steepness` must be > 0"),
        ({"size": 0}, "`size` must be"),
    ],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DiffSort(**kwargs)


def test_bad_input_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"`x` must have shape \(B, 49\)"):
        DiffSort("bitonic", 49)(torch.randn(2, 48))
    with pytest.raises(ValueError, match="floating-point"):
        DiffSort("bitonic", 4)(torch.ones(2, 4, dtype=torch.int64))


def test_cpu_backend_rejects_gpu_only_setup() -> None:
    if os.environ.get("NECO_SORT_DISABLE_CPU_KERNEL"):
        pytest.skip("kernel disabled")
    with pytest.raises(ValueError, match="needs a CPU tensor"):
        sort_backends.select("cpu", torch.zeros(1, 3, device="meta"))
