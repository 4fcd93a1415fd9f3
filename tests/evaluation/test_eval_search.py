"""Top-k search backends against brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neco.evaluation.blocks.search import TorchSearcher, build_searcher


def _data(seed=0, m=500, q=40, d=16):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(m, d, generator=g), dim=1), F.normalize(
        torch.randn(q, d, generator=g), dim=1
    )


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_backends_equal_brute_force(backend):
    bank, queries = _data()
    sims, idx = build_searcher(bank, backend).search(queries, 7)
    ref_sims, ref_idx = torch.topk(queries @ bank.T, 7, dim=1)
    torch.testing.assert_close(sims, ref_sims, atol=1e-5, rtol=0)
    assert torch.equal(idx, ref_idx)


def test_torch_search_merges_chunks():
    bank, queries = _data(1)
    sims, idx = TorchSearcher(bank, query_chunk=7, bank_chunk=33).search(queries, 5)
    ref_sims, ref_idx = torch.topk(queries @ bank.T, 5, dim=1)
    torch.testing.assert_close(sims, ref_sims, atol=1e-5, rtol=0)
    assert torch.equal(idx, ref_idx)


def test_fp16_bank_searches_the_rounded_vectors():
    bank, queries = _data(2)
    half = bank.half()
    sims, idx = build_searcher(half, "faiss").search(queries, 5)
    ref_sims, ref_idx = torch.topk(queries @ half.float().T, 5, dim=1)
    torch.testing.assert_close(sims, ref_sims, atol=1e-5, rtol=0)
    assert torch.equal(idx, ref_idx)


def test_ivf_probing_every_list_is_exact():
    bank, queries = _data(3)
    searcher = build_searcher(bank, "ivf", nlist=4, nprobe=4)
    sims, idx = searcher.search(queries, 5)
    ref_sims, ref_idx = torch.topk(queries @ bank.T, 5, dim=1)
    torch.testing.assert_close(sims, ref_sims, atol=1e-5, rtol=0)
    assert torch.equal(idx, ref_idx)


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="`search` must be one of"):
        build_searcher(torch.zeros(2, 2), "scann")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_search_on_gpu_with_fp16_bank_matches_cpu():
    bank, queries = _data(4, m=5000, q=300, d=64)
    sims, idx = build_searcher(bank.half().cuda(), "auto").search(queries.cuda(), 10)
    ref_sims, _ = torch.topk(queries @ bank.half().float().T, 10, dim=1)
    torch.testing.assert_close(sims.cpu(), ref_sims, atol=2e-3, rtol=0)  # fp16 products
