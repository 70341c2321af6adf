"""Clipping thresholds that follow the training run.

A ``Clipper``'s ``max_norm`` may be a number or one of these objects.  Each
call, the Clipper computes the global norm g and asks the threshold for this
step's value v (``step(g)``); it clips when g > v, and the threshold updates
its state from g.  A non-finite g (inf/NaN gradients) leaves the state
unchanged: the non-finite policy handles that step.

* ``Fixed(v)``: a constant, the same as passing the number.
* ``Percentile(p=10, window=None, warmup=0)``: AutoClip (Seetharaman,
  Wichern, Pardo & Le Roux, *AutoClip: Adaptive Gradient Clipping for Source
  Separation Networks*, 2020): clip at the p-th percentile of the norms seen
  so far, this step's included.  This is Pascanu et al.'s own heuristic for
  the threshold ("look at statistics on the average norm over a
  sufficiently large number of updates").
* ``ZScore(alpha=0.97, z=2.5, warmup=25)``: in the style of ZClip (Kumar
  et al., *ZClip: Adaptive Spike Mitigation for LLM Pre-Training*, 2025):
  exponential moving averages of the norm's mean and variance flag a step
  whose z-score exceeds ``z`` as a spike, and clip it to
  mu + (z**2 / z_t) * sigma.

Every threshold saves and restores its state (``state_dict()`` /
``load_state_dict()``), so that a resumed run clips exactly as an
uninterrupted one; a state that no run can reach (a negative or NaN
variance, a history that disagrees with its count, ...) raises ValueError
(TypeError for a wrong type) before anything changes.  Each step costs O(log n) at most: Percentile keeps its
window sorted (a bounded window) or two heaps (the whole history); it never
sorts the history.  On GPU buffers a ZScore or Fixed threshold runs inside
the device's finalize step (no host wait, see docs/GPU.md); a Percentile
needs the norm on the host, one wait per call.
"""
from __future__ import annotations

import bisect
import copy
import heapq
import math
from collections import deque
from typing import Any, Sequence

from . import _policy, _state

__all__ = ["Threshold", "Fixed", "Percentile", "ZScore"]

_INF = math.inf


class Threshold:
    """A threshold object: ``step(norm) -> this step's threshold``."""

    #: whether the CUDA finalize kernel can run it on the device (see ZScore)
    device_mode = 0

    def step(self, norm: float) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    # load_state_dict in two steps, so that a Clipper checks its whole state
    # (threshold and history) before it changes anything:
    def _parse_state(self, state: Any) -> Any:
        """Check ``state`` (ValueError; TypeError for a wrong type) and return
        what ``_set_state`` takes; changes nothing.  This default, for a
        threshold that defines only load_state_dict, loads it into a copy."""
        copy.deepcopy(self).load_state_dict(state)
        return state

    def _set_state(self, parsed: Any) -> None:
        """Install what ``_parse_state`` returned."""
        self.load_state_dict(parsed)

    def _check_type(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("type") != type(self).__name__:
            got = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected the state of a "
                             f"{type(self).__name__}, got {got!r}")


class Fixed(Threshold):
    """A constant threshold v > 0 (``inf``: never clip)."""

    def __init__(self, v: float) -> None:
        self.v = _policy.check_max_norm(v, "v")

    def step(self, norm: float) -> float:
        return self.v

    def state_dict(self) -> dict[str, Any]:
        return {"type": "Fixed", "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; a bad state raises and changes nothing."""
        self._set_state(self._parse_state(state))

    def _parse_state(self, state: Any) -> Fixed:
        self._check_type(state)
        with _state.loading("Fixed.load_state_dict"):
            _state.keys(state, ("type", "v"), "a Fixed.state_dict()")
            return Fixed(state["v"])

    def _set_state(self, new: Fixed) -> None:
        self.v = new.v

    def __repr__(self) -> str:
        return f"Fixed({self.v})"


class Percentile(Threshold):
    """AutoClip: the p-th percentile (numpy's default, linear interpolation)
    of the finite norms seen so far, this step's included; over the last
    ``window`` of them if given.  The first ``warmup`` steps only record
    (threshold inf)."""

    def __init__(self, p: float = 10.0, window: int | None = None, warmup: int = 0) -> None:
        p = _policy.real("p", p)
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"p must be a percentile in [0, 100], got {p}")
        self.p = p
        self.window = None if window is None else _state.count("window", window, 1)
        self.warmup = _state.count("warmup", warmup)
        self._reset()

    def _reset(self) -> None:
        self.count = 0                      # finite norms seen
        self._fifo: deque = deque()         # windowed: arrival order
        self._sorted: list[float] = []      # windowed: sorted
        self._lo: list[float] = []          # whole history: max-heap (negated), lower part
        self._hi: list[float] = []          # whole history: min-heap, upper part

    def __len__(self) -> int:
        return len(self._sorted) if self.window is not None else len(self._lo) + len(self._hi)

    def _add(self, g: float) -> None:
        if self.window is not None:
            self._fifo.append(g)
            bisect.insort(self._sorted, g)
            if len(self._fifo) > self.window:
                old = self._fifo.popleft()
                del self._sorted[bisect.bisect_left(self._sorted, old)]
            return
        # two heaps: _lo holds the k smallest, k = floor((n - 1) p / 100) + 1
        if self._lo and g <= -self._lo[0]:
            heapq.heappush(self._lo, -g)
        else:
            heapq.heappush(self._hi, g)
        n = len(self._lo) + len(self._hi)
        k = int(math.floor((self.p / 100.0) * (n - 1))) + 1
        while len(self._lo) > k:
            heapq.heappush(self._hi, -heapq.heappop(self._lo))
        while len(self._lo) < k:
            heapq.heappush(self._lo, -heapq.heappop(self._hi))

    def value(self) -> float:
        """The percentile of the recorded norms (inf while fewer than warmup)."""
        n = len(self)
        if n == 0 or self.count <= self.warmup:
            return _INF
        idx = (self.p / 100.0) * (n - 1)  # numpy's virtual index, the same rounding
        j = int(math.floor(idx))
        if self.window is not None:
            a = self._sorted[j]
            b = self._sorted[j + 1] if j + 1 < n else a
        else:
            a = -self._lo[0]
            b = self._hi[0] if self._hi else a
        return _lerp(a, b, idx - j)

    def step(self, norm: float) -> float:
        if math.isfinite(norm):
            self.count += 1
            self._add(float(norm))
        return self.value()

    def state_dict(self) -> dict[str, Any]:
        hist = list(self._fifo) if self.window is not None else sorted(
            [-x for x in self._lo] + self._hi)
        return {"type": "Percentile", "p": self.p, "window": self.window, "warmup": self.warmup,
                "count": self.count, "history": hist}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; a bad state raises and changes nothing."""
        self._set_state(self._parse_state(state))

    _KEYS = ("type", "p", "window", "warmup", "count", "history")

    def _parse_state(self, state: Any) -> Percentile:
        """The state's Percentile: its parameters as the constructor checks them,
        finite norms >= 0, as many as count (a window: the last min(count, window))."""
        self._check_type(state)
        with _state.loading("Percentile.load_state_dict"):
            _state.keys(state, self._KEYS, "a Percentile.state_dict()")
            new = Percentile(state["p"], state["window"], state["warmup"])
            count = _state.count("count", state["count"])
            hist = _state.FINITE_NONNEGATIVE.column("history", _state.sequence("history", state["history"]))
            held = count if new.window is None else min(count, new.window)
            if len(hist) != held:
                rule = "count" if new.window is None else f"min(count, window {new.window})"
                raise ValueError(f"count {count} and history disagree: history must hold {rule} = "
                                 f"{held} norms, it holds {len(hist)}")
        for g in hist.tolist():
            new._add(g)
        new.count = count
        return new

    def _set_state(self, new: Percentile) -> None:
        self.__dict__.update(new.__dict__)

    def __repr__(self) -> str:
        return f"Percentile(p={self.p}, window={self.window}, warmup={self.warmup})"


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation for percentiles (the same expression)."""
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t


class ZScore(Threshold):
    """ZClip-style spike clipping.

    Keeps exponential moving averages of the norm's mean mu and variance
    sigma**2 with factor ``alpha``; the first ``warmup`` finite norms only
    initialise them (their mean and population variance; no clipping).
    Afterwards, with z_t = (g - mu) / sigma, a step is a spike when
    z_t > z, and its threshold is mu + (z**2 / z_t) * sigma
    (= mu + z**2 sigma**2 / (g - mu), which is mu when sigma is 0);
    otherwise the threshold reported is mu + z * sigma, which g does not
    exceed.  The averages are then updated with the post-clip norm
    min(g, threshold):  mu <- alpha mu + (1 - alpha) g',
    sigma**2 <- alpha sigma**2 + (1 - alpha) (g' - mu)**2 (the new mu).
    The CUDA finalize kernel runs the same arithmetic (``zscore_step``).
    """

    device_mode = 1

    def __init__(self, alpha: float = 0.97, z: float = 2.5, warmup: int = 25) -> None:
        alpha = _policy.real("alpha", alpha)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        z = _policy.real("z", z)
        if not (z > 0.0 and math.isfinite(z)):
            raise ValueError(f"z must be a finite number > 0, got {z}")
        self.alpha, self.z = alpha, z
        self.warmup = _state.count("warmup", warmup, 1)
        self.n, self.mean, self.m2, self.var = 0, 0.0, 0.0, 0.0
        self._device = None  # (download, upload) while a GPU Clipper keeps the state

    def _vector(self) -> list[float]:
        return [float(self.n), self.mean, self.m2, self.var]

    def _set_vector(self, v) -> None:
        self.n, self.mean, self.m2, self.var = int(v[0]), float(v[1]), float(v[2]), float(v[3])

    def _sync(self) -> None:
        if self._device is not None:
            self._set_vector(self._device[0]())

    def step(self, norm: float) -> float:
        self._sync()
        thr, vec = zscore_step(self._vector(), float(norm), self.alpha, self.z, self.warmup)
        self._set_vector(vec)
        if self._device is not None:
            self._device[1](self._vector())
        return thr

    def value(self) -> float:
        """The spike boundary mu + z * sigma for the next step (inf in warmup)."""
        self._sync()
        return _INF if self.n < self.warmup else self.mean + self.z * math.sqrt(self.var)

    def state_dict(self) -> dict[str, Any]:
        self._sync()
        return {"type": "ZScore", "alpha": self.alpha, "z": self.z, "warmup": self.warmup,
                "n": self.n, "mean": self.mean, "m2": self.m2, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` (bound to a GPU plan: uploaded); a bad
        state raises and changes nothing."""
        self._set_state(self._parse_state(state))

    _KEYS = ("type", "alpha", "z", "warmup", "n", "mean", "m2", "var")

    def _parse_state(self, state: Any) -> ZScore:
        """The state's ZScore: its parameters as the constructor checks them,
        0 <= n <= warmup (n counts the warmup norms), mean, m2 and var finite
        and >= 0, all 0 before the first norm, var 0 until the warmup ends."""
        self._check_type(state)
        with _state.loading("ZScore.load_state_dict"):
            _state.keys(state, self._KEYS, "a ZScore.state_dict()")
            new = ZScore(state["alpha"], state["z"], state["warmup"])
            n = _state.count("n", state["n"], 0, new.warmup, "warmup")
            mean, m2, var = (_state.FINITE_NONNEGATIVE(k, state[k]) for k in ("mean", "m2", "var"))
            for k, v in (("mean", mean), ("m2", m2)):
                if n == 0 and v != 0.0:
                    raise ValueError(f"{k} must be 0 while n is 0 (no norm seen), got {v}")
            if n < new.warmup and var != 0.0:
                raise ValueError(f"var must be 0 until the warmup ends (n {n} < warmup {new.warmup}), "
                                 f"got {var}")
        new.n, new.mean, new.m2, new.var = n, mean, m2, var
        return new

    def _set_state(self, new: ZScore) -> None:
        if self._device is not None:  # first: if the upload fails, nothing has changed
            self._device[1](new._vector())
        self.alpha, self.z, self.warmup = new.alpha, new.z, new.warmup
        self._set_vector(new._vector())

    def __repr__(self) -> str:
        return f"ZScore(alpha={self.alpha}, z={self.z}, warmup={self.warmup})"


def zscore_step(vec: Sequence[float], g: float, alpha: float, z: float,
                warmup: int) -> tuple[float, list[float]]:
    """One ZScore step on the state vector (n, mean, m2, var): returns
    (threshold, new vector).  The reference for the device kernel."""
    n, mean, m2, var = vec
    if not (g - g == 0.0):  # inf or NaN: no update; report the boundary
        return (_INF if n < warmup else mean + z * math.sqrt(var)), [n, mean, m2, var]
    if n < warmup:  # Welford: the warmup norms' mean and population variance
        n += 1
        d = g - mean
        mean += d / n
        m2 += d * (g - mean)
        if n == warmup:
            var = m2 / n
        return _INF, [n, mean, m2, var]
    sd = math.sqrt(var)
    thr = mean + z * sd
    if g > thr:
        thr = mean + (z * z) * var / (g - mean)
    gp = g if g < thr else thr
    mean = alpha * mean + (1.0 - alpha) * gp
    d = gp - mean
    var = alpha * var + (1.0 - alpha) * (d * d)
    return thr, [n, mean, m2, var]


def as_threshold(x: Any) -> Threshold | None:
    """None for a plain number (checked by the caller), the object itself
    for a Threshold; TypeError for anything else that is not a number."""
    if isinstance(x, Threshold):
        return x
    return None
