"""Inner-product top-k search over a memory bank: exact (faiss or chunked torch) or approximate (IVF)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["SEARCH_BACKENDS", "build_searcher", "TorchSearcher", "FaissFlatSearcher", "FaissIVFSearcher"]

SEARCH_BACKENDS = {
    "auto": "torch on CUDA banks, faiss on CPU",
    "faiss": "exact inner product with faiss.knn (CPU)",
    "torch": "exact inner product, chunked matrix product + top-k (any device)",
    "ivf": "approximate: faiss IndexIVFFlat (inner product), nlist / nprobe",
}


def _merge_topk(
    best: tuple[torch.Tensor, torch.Tensor] | None, sims: torch.Tensor, idx: torch.Tensor, k: int
):
    if best is not None:
        sims, idx = torch.cat([best[0], sims], dim=1), torch.cat([best[1], idx], dim=1)
    top, pos = torch.topk(sims, min(k, sims.shape[1]), dim=1)
    return top, torch.gather(idx, 1, pos)


class TorchSearcher:
    """Exact search by chunked matrix products on the bank's device (fp16 banks multiply in fp16 on GPU)."""

    name = "torch"

    def __init__(
        self, bank: torch.Tensor, query_chunk: int | None = None, bank_chunk: int | None = None
    ) -> None:
        # similarity blocks of query_chunk x bank_chunk floats: 2 GiB on GPU, 256 MiB on CPU by default
        on_gpu = bank.device.type == "cuda"
        self.bank = bank
        self.query_chunk = int(query_chunk or (4096 if on_gpu else 1024))
        self.bank_chunk = int(bank_chunk or (1 << 17 if on_gpu else 1 << 16))

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k similarities and indices (Q, k), both on the bank's device."""
        device = self.bank.device
        # CPU half matmuls are slow and imprecise: compute in float32 there.
        compute = self.bank.dtype if device.type == "cuda" else torch.float32
        out_s, out_i = [], []
        for q0 in range(0, queries.shape[0], self.query_chunk):
            q = queries[q0 : q0 + self.query_chunk].to(device, compute)
            best = None
            for b0 in range(0, self.bank.shape[0], self.bank_chunk):
                block = self.bank[b0 : b0 + self.bank_chunk].to(compute)
                sims = (q @ block.T).float()  # (q, b)
                top, pos = torch.topk(sims, min(k, sims.shape[1]), dim=1)
                best = _merge_topk(best, top, pos + b0, k)
            out_s.append(best[0])
            out_i.append(best[1])
        return torch.cat(out_s), torch.cat(out_i)


class FaissFlatSearcher:
    """Exact search with `faiss.knn` on the bank array in place (float16 banks are converted by chunk)."""

    name = "faiss"

    def __init__(self, bank: torch.Tensor, bank_chunk: int = 1 << 20) -> None:
        if bank.device.type != "cpu":
            raise ValueError(f"`search` 'faiss' needs a CPU memory bank but it is on {bank.device}")
        self.bank, self.bank_chunk = bank, int(bank_chunk)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k similarities and indices (Q, k) on the CPU."""
        import faiss

        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        if self.bank.dtype == torch.float32:
            sims, idx = faiss.knn(
                q, self.bank.numpy(), min(k, self.bank.shape[0]), metric=faiss.METRIC_INNER_PRODUCT
            )
            return torch.from_numpy(sims), torch.from_numpy(idx)
        best = None
        for b0 in range(0, self.bank.shape[0], self.bank_chunk):
            block = self.bank[b0 : b0 + self.bank_chunk].float().numpy()
            sims, idx = faiss.knn(q, block, min(k, block.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
            best = _merge_topk(best, torch.from_numpy(sims), torch.from_numpy(idx) + b0, k)
        return best


class FaissIVFSearcher:
    """Approximate search: faiss IndexIVFFlat (inner product) trained on a sample of the bank."""

    name = "ivf"

    def __init__(self, bank: torch.Tensor, nlist: int | None = None, nprobe: int = 16, seed: int = 0) -> None:
        import faiss

        data = bank.detach().float().cpu().numpy()  # a copy: IVF owns its vectors
        n, dim = data.shape
        # ~sqrt(M) lists trained on 64 points each keeps training to minutes at M = 10.24 M
        self.nlist = int(nlist) if nlist else max(1, min(int(np.sqrt(n)), n // 39 or 1))
        self.nprobe = int(nprobe)
        quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = data[rng.permutation(n)[: min(n, 64 * self.nlist)]]
        self.index.train(np.ascontiguousarray(sample))
        self.index.add(data)
        self.index.nprobe = self.nprobe
        self._quantizer = quantizer  # keep the Python object alive alongside the index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate top-k similarities and indices (Q, k); missing neighbours get index -1."""
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        sims, idx = self.index.search(q, k)
        return torch.from_numpy(sims), torch.from_numpy(idx)


def build_searcher(
    bank: torch.Tensor, backend: str = "auto", *, nlist: int | None = None, nprobe: int = 16
) -> Any:
    """A searcher over the (M, D) unit-vector bank for the named backend (see `SEARCH_BACKENDS`)."""
    if backend not in SEARCH_BACKENDS:
        raise ValueError(f"`search` must be one of {sorted(SEARCH_BACKENDS)} but is {backend!r}")
    if backend == "auto":
        backend = "torch" if bank.device.type == "cuda" else "faiss"
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:  # faiss is optional at runtime: fall back to the exact torch path
            backend = "torch"
    if backend == "torch":
        return TorchSearcher(bank)
    if backend == "faiss":
        return FaissFlatSearcher(bank)
    return FaissIVFSearcher(bank, nlist=nlist, nprobe=nprobe)
