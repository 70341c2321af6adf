"""Simulated ranks for the distributed tests: k threads of one process, each
with its own ``reduce``, which meets the others at a barrier.

The reducer checks the collective contract itself: every rank must call it
with the same op and shape, else every rank gets an AssertionError; a rank
that stops calling (raised, or took another branch) breaks the barrier after
``timeout`` seconds instead of hanging the test.
"""
from __future__ import annotations

import threading

import numpy as np


class World:
    def __init__(self, k: int, timeout: float = 20.0):
        self.k = k
        self._bar = threading.Barrier(k, timeout=timeout)
        self._slots: list = [None] * k
        self._out = None
        self.calls: list[list[tuple[str, int]]] = [[] for _ in range(k)]

    def reducer(self, rank: int):
        def reduce(x, op):
            x = np.asarray(x)
            assert x.dtype == np.float64 and x.ndim == 1, (x.dtype, x.shape)
            self.calls[rank].append((op, x.size))
            self._slots[rank] = (x.copy(), op)
            if self._bar.wait() == 0:
                xs = [s[0] for s in self._slots]
                ops = {s[1] for s in self._slots}
                if len(ops) != 1 or len({a.shape for a in xs}) != 1:
                    self._out = AssertionError(f"ranks disagree: {[(s[1], s[0].shape) for s in self._slots]}")
                else:
                    acc = xs[0].copy()
                    with np.errstate(over="ignore"):  # an overflowing sum is inf, as in MPI
                        for a in xs[1:]:  # rank order: the same bits for every rank
                            acc = acc + a if op == "sum" else np.maximum(acc, a)
                    self._out = acc
            self._bar.wait()
            out = self._out
            self._bar.wait()  # nobody starts the next round before all have read
            if isinstance(out, Exception):
                raise out
            return out.copy()

        return reduce

    def run(self, fn):
        """fn(rank, reduce) on every rank (thread); returns [result or exception]."""
        res: list = [None] * self.k

        def body(r):
            try:
                res[r] = fn(r, self.reducer(r))
            except BaseException as e:  # noqa: BLE001 - returned to the test
                res[r] = e

        ts = [threading.Thread(target=body, args=(r,)) for r in range(self.k)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return res


def run_ranks(k: int, fn):
    """Run fn(rank, reduce) on k simulated ranks; re-raise the first unexpected
    threading failure (a broken barrier means a rank took another path)."""
    w = World(k)
    res = w.run(fn)
    for r in res:
        if isinstance(r, threading.BrokenBarrierError):
            raise AssertionError("a rank stopped calling reduce: the ranks took different paths")
    return res, w
