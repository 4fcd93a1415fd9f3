"""Differentiable sorting networks (bitonic, odd-even) with diffsort 0.2.0 semantics and fast kernels."""

from __future__ import annotations

from neco.method.sorting.module import DiffSort
from neco.method.sorting.networks import NETWORKS, build_network
from neco.method.sorting.relaxations import RELAXATIONS

__all__ = ["DiffSort", "NETWORKS", "RELAXATIONS", "build_network"]
