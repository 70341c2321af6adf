"""A Clipper's bounded record of its calls, for plots and diagnostics."""
from __future__ import annotations

from typing import Any

import numpy as np


_FIELDS = ("norm", "threshold", "scale", "clipped", "finite")


class History:
    """The last ``capacity`` calls of a Clipper: ``norm``, ``threshold``,
    ``scale``, ``clipped``, ``finite`` (numpy arrays, oldest first) and
    ``step`` (each call's number, from 0).  Recording costs a few array
    writes per call; on GPU buffers the device's statistics are read in
    batches (a plan keeps RING calls' statistics; see docs/GPU.md), not one
    wait per call."""

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise TypeError(f"history must be an int (the number of calls to keep), got "
                            f"{type(capacity).__name__}")
        if capacity < 0:
            raise ValueError(f"history must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._data = np.zeros((len(_FIELDS), self.capacity))
        self._calls = 0          # calls recorded, ever
        self._n = 0              # entries held (<= capacity)
        self._pending: list = []  # (call number, DeviceClipStats) not read yet

    def __bool__(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        self._flush()
        return self._n

    def record(self, stats: Any) -> None:
        if not self.capacity:
            return
        if hasattr(stats, "result") and getattr(stats, "_host", None) is None:
            self._pending.append((self._calls, stats))  # DeviceClipStats: read later
            self._calls += 1
            self._n = min(self._n + 1, self.capacity)
            from .kernels.cuda import RING

            if len(self._pending) >= RING - 1:
                self._flush()
            return
        self._put(self._calls, stats)
        self._calls += 1
        self._n = min(self._n + 1, self.capacity)

    def _put(self, call: int, s: Any) -> None:
        self._data[:, call % self.capacity] = (s.norm, s.threshold, s.scale, s.clipped, s.finite)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for call, s in pending:
            self._put(call, s.result())

    def _order(self) -> np.ndarray:
        n = len(self)
        if not self.capacity:
            return np.zeros(0, int)
        start = self._calls - n
        return (np.arange(start, self._calls) % max(self.capacity, 1)) if n else np.zeros(0, int)

    def _field(self, name: str) -> np.ndarray:
        return self._data[_FIELDS.index(name), self._order()]

    @property
    def step(self) -> np.ndarray:
        n = len(self)
        return np.arange(self._calls - n, self._calls)

    norm = property(lambda self: self._field("norm"))
    threshold = property(lambda self: self._field("threshold"))
    scale = property(lambda self: self._field("scale"))
    clipped = property(lambda self: self._field("clipped").astype(bool))
    finite = property(lambda self: self._field("finite").astype(bool))

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"step": self.step, **{f: getattr(self, f) for f in _FIELDS}}

    def state_dict(self) -> dict[str, Any]:
        d = self.as_dict()
        return {"capacity": self.capacity, "calls": self._calls,
                **{k: v.tolist() for k, v in d.items() if k != "step"}}

    def check_state(self, state: Any) -> None:
        """ValueError unless ``state`` is a History.state_dict()."""
        try:
            n, calls = len(state["norm"]), int(state["calls"])
            ok = all(len(state[f]) == n for f in _FIELDS) and 0 <= n <= calls
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError("History.load_state_dict: expected a History.state_dict() "
                             "(as many entries of each field, and no more than calls)")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the last min(saved, capacity) entries and the call count."""
        self.check_state(state)
        calls = int(state["calls"])
        keep = min(len(state["norm"]), self.capacity)
        self._pending = []
        self._calls, self._n = calls - keep, 0
        for i in range(len(state["norm"]) - keep, len(state["norm"])):
            s = type("S", (), {f: state[f][i] for f in _FIELDS})
            self._put(self._calls, s)
            self._calls += 1
            self._n += 1
        self._calls = calls

    def __repr__(self) -> str:
        return f"History({len(self)} of the last {self.capacity} calls)"
