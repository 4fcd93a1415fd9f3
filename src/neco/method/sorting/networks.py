"""Comparator layouts of the sorting networks, matching `diffsort` 0.2.0 wire for wire.

A network is a list of layers; a layer is a set of disjoint comparators. Comparator `(a, b, lo, hi)` reads
wires `a` and `b` (`a` is the wire diffsort calls `split_a`), writes the relaxed minimum to wire `lo` and the
relaxed maximum to wire `hi` (`{lo, hi} == {a, b}`). Wires no comparator touches pass through unchanged;
diffsort represents them as comparators of a wire with itself (alpha = 1/2), which is exactly the identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["Comparator", "Layer", "NETWORKS", "bitonic_layers", "odd_even_layers", "build_network"]

Comparator = tuple[int, int, int, int]
Layer = list[Comparator]


def bitonic_layers(n: int) -> list[Layer]:
    """Bitonic network on `n` wires, padded to the next power of two with virtual top wires."""
    if n < 1:
        raise ValueError(f"`size` must be >= 1 but is {n}")
    num_blocks = math.ceil(math.log2(n)) if n > 1 else 0
    width = 2**num_blocks
    # diffsort drops the *first* `width - n` wires; a comparator touching one of them passes the real wire through.
    offset = width - n
    layers: list[Layer] = []
    for block in range(num_blocks):
        for stage in range(block + 1):
            m = 2 ** (block - stage)
            layer: Layer = []
            for start in range(0, width, 2 * m):
                for j in range(m):
                    a, b = start + j, start + j + m
                    if a < offset or b < offset:
                        continue
                    descending = ((start + j) // 2 ** (block + 1)) % 2 == 1
                    lo, hi = (b, a) if descending else (a, b)
                    layer.append((a - offset, b - offset, lo - offset, hi - offset))
            layers.append(layer)
    return layers


def odd_even_layers(n: int) -> list[Layer]:
    """Odd-even transposition network: `n` layers alternating even and odd neighbour pairs."""
    if n < 1:
        raise ValueError(f"`size` must be >= 1 but is {n}")
    layers: list[Layer] = []
    for index in range(n):
        shifted = index % 2 == 1
        layers.append([(i, i + 1, i, i + 1) for i in range(int(shifted), n - 1, 2)])
    return layers


NETWORKS: dict[str, Callable[[int], list[Layer]]] = {"bitonic": bitonic_layers, "odd_even": odd_even_layers}


def build_network(network: str, size: int) -> list[Layer]:
    """Return the layers of sorting network `network` on `size` wires."""
    if network not in NETWORKS:
        raise ValueError(f"`network` must be one of {sorted(NETWORKS)} but is {network!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be an int >= 1 but is {size!r}")
    return NETWORKS[network](size)
