"""The caller map: an engine's table rows <-> the caller's buffer indices.

Every engine plans the caller's list into rows over unique, non-empty
memory: row ``r`` is the caller's buffer ``rows[r]``, and further caller
indices that name exactly the same memory (duplicates) are in ``dups[r]``.
Empty buffers and, on the CPU, read-only zero-stride views have no row.
This class is the one place that maps between the two: results per row to
results per caller (``scatter``), caller decisions to rows (``gather``), and
flagged rows to the callers to name (``callers``).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


class CallerMap:
    __slots__ = ("rows", "dups", "_where")

    def __init__(self, rows: np.ndarray, dups: dict[int, list[int]]) -> None:
        self.rows = rows    # row -> caller index (np.int64 array)
        self.dups = dups    # row -> [further caller indices]
        self._where: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def callers(self, rows: Iterable[int]) -> tuple[int, ...]:
        """The caller indices (duplicates included) of these rows, sorted."""
        out: list[int] = []
        for r in rows:
            out.append(int(self.rows[r]))
            out.extend(self.dups.get(int(r), ()))
        return tuple(sorted(out))

    def scatter(self, out: np.ndarray, values: np.ndarray) -> None:
        """``out[caller] = values[row]`` for every row's callers, duplicates included."""
        if len(self.rows):
            out[self.rows] = values
        for r, more in self.dups.items():
            out[more] = values[r]

    def gather(self, per_caller: np.ndarray) -> np.ndarray:
        """Per-caller values (one decision per caller index) as per-row values."""
        return per_caller[self.rows]

    def pairs(self) -> list[tuple[int, int]]:
        """Every (caller index, row), duplicates included."""
        out = list(zip(self.rows.tolist(), range(len(self.rows))))
        for r, more in self.dups.items():
            out.extend((d, r) for d in more)
        return out

    def row_of(self, caller: int) -> int | None:
        """The row holding this caller's buffer (a duplicate's included), or None."""
        if self._where is None:
            self._where = dict(self.pairs())
        return self._where.get(caller)
