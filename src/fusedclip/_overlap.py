"""Overlap between buffers' byte extents: one checker for every engine.

The CPU plan (``_buffers``), the CUDA plan (``_gpu``) and ``clip_unitwise_``
(a grad in a param's memory) all find their candidate pairs with the same
sweep over sorted extents, and name two buffers that share some but not all
elements with the same message.
"""
from __future__ import annotations

import numpy as np

from .kernels import cpu

_F = cpu


def overlap_clusters(lo: np.ndarray, hi: np.ndarray, order: np.ndarray):
    """Chained overlapping extents: with ``order`` sorting the byte extents
    [lo, hi) by start, the cluster id of each sorted position (a new cluster
    starts where no earlier extent reaches), and whether that cluster has
    more than one member.  The CPU plan and the CUDA plan both use it."""
    lo, hi = lo[order], hi[order]
    start = np.ones(order.size, bool)
    start[1:] = lo[1:] >= np.maximum.accumulate(hi)[:-1]
    cid = np.cumsum(start) - 1
    return cid, np.bincount(cid)[cid] > 1


def extent_pairs(lo: np.ndarray, hi: np.ndarray, order: np.ndarray, n_first: int) -> list[tuple[int, int]]:
    """Two lists in one: items ``< n_first`` are the first list's, the rest the
    second's.  Every pair ``(i, j - n_first)`` of an item of each whose byte
    extents [lo, hi) overlap, sorted.  The same sweep as a list's own
    (``overlap_clusters``, ``order`` sorting the non-empty extents by
    start): only clusters holding items of both lists are compared."""
    cid, busy = overlap_clusters(lo, hi, order)
    clusters: dict[int, list[int]] = {}
    for pos in np.flatnonzero(busy).tolist():  # by start within each cluster
        clusters.setdefault(int(cid[pos]), []).append(int(order[pos]))
    out = []
    for members in clusters.values():
        for q, j in enumerate(members):
            for i in members[:q]:
                if (i < n_first) != (j < n_first) and hi[i] > lo[j]:
                    a, b = (i, j) if i < n_first else (j, i)
                    out.append((a, b - n_first))
    return sorted(out)


def first_shared(first: list[np.ndarray], second: list[np.ndarray]) -> tuple[int, int] | None:
    """The first pair (i, j), in that order, such that ``first[i]`` and
    ``second[j]`` share an element (``clip_unitwise_``: a grad in a param's
    memory), or None.  One ``describe()`` pass over both lists; when the
    extents are not in increasing, disjoint order, the extents sweep finds
    the candidate pairs and ``np.shares_memory`` decides each (interleaved
    views share none; a ``TooHardError`` counts as shared)."""
    d, flags = cpu.describe(list(first) + list(second))
    if flags[_F.S_UNORDERED] < 0:
        return None
    order, suspects = cpu.overlap_suspects(d)
    if not suspects.size:
        return None
    for i, j in extent_pairs(d[_F.F_LO], d[_F.F_HI], order, len(first)):
        try:
            if np.shares_memory(first[i], second[j]):
                return i, j
        except np.exceptions.TooHardError:
            return i, j
    return None


def partial_overlap(fn: str, a: int, b: int, where: str = "memory", why: str = "") -> ValueError:
    """The one message for two buffers that share some but not all elements."""
    a, b = sorted((a, b))
    return ValueError(
        f"{fn}: buffers {a} and {b} partially overlap in {where}; each element must belong to "
        f"one buffer (pass the same array once, or non-overlapping views){why}; nothing was modified"
    )
