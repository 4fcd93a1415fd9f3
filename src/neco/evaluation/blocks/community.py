"""Community detection (CD) over cluster co-occurrence: overclusters merged into segments by Infomap.

- Foreground tokens are overclustered (k-means, K searched). Cluster maps keep -1 on background.
- Co-occurrence like a grey-level co-occurrence matrix (GLCM), with cluster ids as grey levels:
  for every distance d in (1, 2) and the 8 angles t = 0, 45, ..., 315 degrees, the pixel (r, c) is
  paired with (r + round(d sin t), c + round(d cos t)) (the scikit-image `graycomatrix` offset rule,
  so the d = 2 diagonal offsets are (+-1, +-1)); pairs with a background side are not counted.
  Counts are summed over images, distances and angles (symmetric, since opposite angles are both used).
- Graph: off-diagonal counts normalised by the geometric mean of the two clusters' off-diagonal
  totals, W_ab = C_ab / sqrt(C_a C_b) in [0, 1]; edges with W_ab < threshold are dropped.
- Infomap (the `infomap` package, two-level, undirected) splits the graph into communities; each
  cluster takes its community's id; isolated clusters are communities of their own.
- The hyper-parameters (K, threshold, Markov time) are searched on the train split with optuna (TPE,
  seeded), maximising the Hungarian mIoU of the resulting segmentation.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neco.evaluation.blocks.matching import matched_miou
from neco.evaluation.blocks.transforms import resize_ids

__all__ = [
    "glcm_offsets",
    "cooccurrence",
    "cooccurrence_graph",
    "infomap_communities",
    "segment_communities",
    "search_cd",
]


def glcm_offsets(distances: tuple[int, ...] = (1, 2), num_angles: int = 8) -> list[tuple[int, int]]:
    """(row, col) offsets, one per (distance, angle), angles evenly spaced from 0 (scikit-image rule)."""
    angles = [2.0 * math.pi * i / num_angles for i in range(num_angles)]
    return [
        (int(np.round(math.sin(a) * d)), int(np.round(math.cos(a) * d))) for d in distances for a in angles
    ]


def cooccurrence(
    maps: np.ndarray | torch.Tensor, k: int, distances: tuple[int, ...] = (1, 2), num_angles: int = 8
) -> np.ndarray:
    """(k, k) int64 counts of cluster pairs at the GLCM offsets over (N, h, w) maps; ids < 0 are skipped."""
    maps = torch.as_tensor(maps).cpu().numpy().astype(np.int64)
    if maps.ndim != 3:
        raise ValueError(f"`maps` must be (N, h, w) cluster ids but has shape {maps.shape}")
    if maps.max(initial=-1) >= k:
        raise ValueError(f"`maps` ids must be < k = {k} but reach {maps.max()}")
    _, h, w = maps.shape
    counts = np.zeros(k * k, dtype=np.int64)
    for dr, dc in glcm_offsets(distances, num_angles):
        if abs(dr) >= h or abs(dc) >= w:
            continue
        src = maps[:, max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
        dst = maps[:, max(0, dr) : h + min(0, dr), max(0, dc) : w + min(0, dc)]
        keep = (src >= 0) & (dst >= 0)
        counts += np.bincount(src[keep] * k + dst[keep], minlength=k * k)
    return counts.reshape(k, k)


def cooccurrence_graph(counts: np.ndarray, threshold: float) -> np.ndarray:
    """Symmetric weights (k, k) in [0, 1]: C_ab / sqrt(C_a C_b) off the diagonal, below `threshold` zeroed."""
    sym = 0.5 * (counts + counts.T).astype(np.float64)
    np.fill_diagonal(sym, 0.0)
    strength = sym.sum(1)
    norm = np.sqrt(np.outer(strength, strength))
    weights = np.divide(sym, norm, out=np.zeros_like(sym), where=norm > 0)
    weights[weights < threshold] = 0.0
    return weights


def infomap_communities(
    weights: np.ndarray, *, seed: int, markov_time: float = 1.0, num_trials: int = 5
) -> np.ndarray:
    """Community id (k,) int64 of every node of a weighted undirected graph, ids 0..M-1 by first node.

    Infomap seeds must be >= 1: seed s runs Infomap with seed s + 1.
    """
    from infomap import Infomap

    k = weights.shape[0]
    im = Infomap(
        silent=True, two_level=True, seed=int(seed) + 1, num_trials=int(num_trials), markov_time=markov_time
    )
    im.add_nodes(range(k))
    rows, cols = np.nonzero(np.triu(weights, 1))
    im.add_links(zip(rows.tolist(), cols.tolist(), weights[rows, cols].tolist()))
    result = im.run()
    # Infomap's node accessors iterate SWIG vectors from Python; with faiss (another SWIG module) loaded
    # first, the shared SWIG runtime can hand them faiss's iterator class and segfault (seen under
    # pytest). The C++ .clu writer avoids Python-side iteration altogether.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "modules.clu"
        result.write_clu(str(path))
        clu = np.loadtxt(path, comments="#", usecols=(0, 1), dtype=np.int64, ndmin=2)  # node, module
    raw = -1 - np.arange(k)  # unseen nodes: a module of their own
    raw[clu[:, 0]] = clu[:, 1]
    # renumber by first appearance so ids do not depend on Infomap's module numbering
    _, first, ids = np.unique(raw, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[ids].astype(np.int64)


def segment_communities(
    cluster_maps: np.ndarray,
    k: int,
    *,
    threshold: float,
    markov_time: float,
    seed: int,
    distances: tuple[int, ...] = (1, 2),
    num_angles: int = 8,
    infomap_trials: int = 5,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """(community maps (N, h, w) with -1 on background, number of communities) of overcluster maps."""
    if counts is None:
        counts = cooccurrence(cluster_maps, k, distances, num_angles)
    communities = infomap_communities(
        cooccurrence_graph(counts, threshold), seed=seed, markov_time=markov_time, num_trials=infomap_trials
    )
    out = np.where(cluster_maps >= 0, communities[np.maximum(cluster_maps, 0)], -1)
    return out, int(communities.max()) + 1


def search_cd(
    cluster_maps_by_k: dict[int, np.ndarray],
    gt: torch.Tensor,
    num_classes: int,
    ignore_index: int | None,
    *,
    threshold_range: tuple[float, float] = (0.0, 0.3),
    markov_range: tuple[float, float] = (0.5, 2.0),
    trials: int = 30,
    infomap_trials: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Optuna search of (K, threshold, Markov time) maximising train Hungarian mIoU.

    `cluster_maps_by_k[K]` are (N, h, w) overcluster maps of the train split (-1 background);
    predictions are nearest-upsampled to the (N, T, T) GT maps. Defaults are the published search space.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts_by_k = {k: cooccurrence(m, k) for k, m in cluster_maps_by_k.items()}

    def objective(trial: Any) -> float:
        k = trial.suggest_categorical("k", sorted(cluster_maps_by_k))
        maps, num = segment_communities(
            cluster_maps_by_k[k],
            k,
            threshold=trial.suggest_float("threshold", *threshold_range),
            markov_time=trial.suggest_float("markov_time", *markov_range, log=True),
            seed=seed,
            infomap_trials=infomap_trials,
            counts=counts_by_k[k],
        )
        pred = resize_ids(np.where(maps >= 0, maps, num), gt.shape[-2:])
        miou, _, _ = matched_miou(pred, gt, num + 1, num_classes, ignore_index)
        trial.set_user_attr("num_communities", num)
        return miou

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    from tqdm.auto import tqdm

    # our own bar (optuna's is experimental and logs a warning); one tick per finished trial
    with tqdm(total=int(trials), desc="community search", disable=not progress, leave=False) as bar:
        study.optimize(objective, n_trials=int(trials), callbacks=[lambda *_: bar.update()])
    best = study.best_trial
    return {
        **best.params,  # k, threshold, markov_time (python numbers, in the order suggested)
        "train_miou": best.value,
        "train_num_communities": best.user_attrs["num_communities"],
        "trials": int(trials),
        "sampler": "optuna-tpe",
    }
