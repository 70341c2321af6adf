"""A Clipper's bounded record of its calls, for plots and diagnostics."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _state

_FIELDS = ("norm", "threshold", "scale", "clipped", "finite")
_KEYS = ("capacity", "calls") + _FIELDS


#: what each recorded field can be (ClipStats): the norm NaN for a NaN
#: gradient, the threshold inf for "never clip", the scale NaN where the
#: "propagate" policy met a NaN norm
_RULES = {
    "norm": _state.Reals(lambda v: (v >= 0.0) | (v != v), "a number >= 0, or NaN"),
    "threshold": _state.Reals(lambda v: v >= 0.0, "a number >= 0 (inf: never clip)"),
    "scale": _state.Reals(lambda v: (v >= 0.0) & (v <= 1.0) | (v != v), "a number in [0, 1], or NaN"),
    "clipped": _state.Flags(),
    "finite": _state.Flags(),
}


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

    def check_state(self, state: Any) -> tuple[int, np.ndarray]:
        """Check a ``state_dict()`` (ValueError; TypeError for a wrong type)
        without changing anything; returns (calls, the rows this History keeps)."""
        with _state.loading("History.load_state_dict"):
            _state.keys(state, _KEYS, "a History.state_dict()")
            capacity = _state.count("capacity", state["capacity"])
            calls = _state.count("calls", state["calls"])
            cols = [_state.sequence(f, state[f]) for f in _FIELDS]
            n = len(cols[0])
            if any(len(c) != n for c in cols):
                raise ValueError("norm, threshold, scale, clipped and finite must have as many entries "
                                 "each, got " + ", ".join(f"{f} {len(c)}" for f, c in zip(_FIELDS, cols)))
            for name, held in (("capacity", capacity), ("calls", calls)):
                if n > held:
                    raise ValueError(f"{name} must be >= the entries held ({n}), got {held}")
            rows = np.stack([_RULES[f].column(f, col) for f, col in zip(_FIELDS, cols)])
        return calls, rows[:, n - min(n, self.capacity):]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the last min(saved, capacity) entries and the call count;
        a bad state raises and changes nothing."""
        self._restore(self.check_state(state))

    def _restore(self, parsed: tuple[int, np.ndarray]) -> None:
        calls, rows = parsed
        keep = rows.shape[1]
        self._pending = []
        if keep:
            self._data[:, np.arange(calls - keep, calls) % self.capacity] = rows
        self._calls, self._n = calls, keep

    def __repr__(self) -> str:
        return f"History({len(self)} of the last {self.capacity} calls)"
