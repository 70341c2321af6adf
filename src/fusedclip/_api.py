"""The public calls.  Each is a thin layer over a validated ``Plan``.

Norm clipping is Algorithm 1 of Pascanu, Mikolov & Bengio, "On the
difficulty of training recurrent neural networks" (2013): if ||g|| > v,
g <- g * v / ||g||, with the norm taken over all buffers jointly.
Element-wise clipping (``clip_grad_value_``) is Mikolov's earlier variant
(Goodfellow et al., *Deep Learning* §10.11.1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Union


from . import _policy, _reduce
from ._engine import Buffers as _Engines, plan_buffers
from ._history import History
from ._policy import ClipStats, NonFiniteError
from ._reduce import HostReduction
from .thresholds import Fixed, Threshold

if TYPE_CHECKING:
    from ._gpu import DeviceClipStats

Buffers = Union[Any, Iterable[Any]]
_INF = float("inf")


class Clipper:
    """A clipping plan: validates the buffers once and keeps their chunk table.

    >>> clipper = Clipper(grads, max_norm=1.0, nonfinite="skip")
    >>> stats = clipper()          # every training step, after backward

    Each call reads the buffers' current values: the plan holds the memory,
    not the numbers (replacing an array in your list does not change the
    plan; build a new one).  Per-call Python work does not grow with the
    number of buffers (strided or misaligned views, which are staged through
    a contiguous copy, are the exception).  A Clipper is not thread-safe:
    give each thread its own.  On GPU buffers it returns ``DeviceClipStats``
    (docs/GPU.md says when it waits for the device) and launches on
    ``stream`` (an int handle or a cuda.core, torch, CuPy or numba stream),
    else on the buffers' library's current stream; CPU buffers ignore it.

    ``max_norm`` is a number or a threshold object from
    ``fusedclip.thresholds`` (``Percentile``, ``ZScore``, ``Fixed``) that
    sees each step's norm and gives that step's threshold.  ``history=N``
    keeps a record of the last N calls (``clipper.history``: norms,
    thresholds, scales, clip events).  ``state_dict()`` and
    ``load_state_dict()`` save and restore the threshold's state and the
    history, so that a resumed run clips as an uninterrupted one.

    ``max_norm``, ``norm_type``, ``nonfinite`` and ``num_threads`` may be
    assigned between calls: each assignment is validated like the argument
    (a bad value raises and changes nothing) and the next call uses it.
    ``num_threads`` is 1 to 1024 (``kernels.cpu.MAX_THREADS``) or None; in a
    process forked from this one every call runs on one thread (libgomp is
    not fork-safe), with the same results.

    Distributed (docs/DISTRIBUTED.md): ``reduce(x, op)`` all-reduces a small
    float64 vector across ranks (``op`` "sum" or "max"; ready-made in
    ``fusedclip.distributed``), so that the norm, the flags and the decision
    are global and the same on every rank; ``replicated`` (buffer indices or
    a boolean mask) marks buffers holding the same values on every rank,
    counted once.  ``nonfinite_buffers`` and ``NonFiniteError.buffers`` name
    this rank's buffers.
    """

    _eps = 0.0  # the rule's eps (_policy.decide); fusedclip.torch sets torch's 1e-6

    def __init__(
        self,
        buffers: Buffers,
        max_norm: float,
        norm_type: float = 2.0,
        *,
        nonfinite: str = "error",
        num_threads: int | None = None,
        rng: Any = None,
        stream: Any = None,
        history: int = 0,
        reduce: Any = None,
        replicated: Any = None,
    ) -> None:
        self._history: History | None = History(history)
        # cache="cpu": a numpy list planned before (by a call or another
        # Clipper) is not planned again
        self._setup(buffers, max_norm, norm_type, nonfinite, num_threads, rng, "Clipper", cache="cpu",
                    stream=stream, reduce=reduce, replicated=replicated)

    def _setup(self, buffers, max_norm, norm_type, nonfinite, num_threads, rng, fn: str,
               cache: bool | str = False, stream: Any = None, reduce: Any = None,
               replicated: Any = None, writable: bool = True) -> None:
        if not hasattr(self, "_history"):
            self._history = None
        self._nonfinite_policy = policy = _policy.check_policy(nonfinite)
        self.max_norm = max_norm  # after the policy: "random" needs a finite max_norm
        self.norm_type = norm_type
        self.num_threads = num_threads
        self._rng = rng
        if policy == "random":
            self._rng = _policy.make_rng(rng)
        self._bufs: _Engines = plan_buffers(buffers, writable=writable, fn=fn, cache=cache, stream=stream)
        # distributed (docs/DISTRIBUTED.md): the global norm through the caller's all-reduce
        self._reduced = None if reduce is None and replicated is None else _reduce.Reduced(
            reduce, replicated, self._bufs, fn)

    @classmethod
    def over(cls, buffers: Any, fn: str, *, writable: bool = True, eps: float = 0.0) -> "Clipper":
        """A Clipper for an adapter (``fusedclip.torch``): every check under
        ``fn``'s name, no threshold yet (``configure`` sets it per call), and
        the rule's ``eps`` (torch's 1e-6)."""
        c = cls.__new__(cls)
        c._setup(buffers, _INF, 2.0, "propagate", None, None, fn, writable=writable)
        c._eps = eps
        return c

    def configure(self, max_norm: float, norm_type: float, nonfinite: str, num_threads: int | None) -> None:
        """Set the call's arguments, checked already by the adapter: only what
        changed is validated again."""
        if self._max_norm != max_norm:
            self.max_norm = max_norm
        if self._norm_type != norm_type:
            self.norm_type = norm_type
        if self._nonfinite_policy != nonfinite:
            self.nonfinite = nonfinite
        self._num_threads = num_threads

    @property
    def buffers(self) -> _Engines:
        """The validated list, split into engines (``_engine.Buffers``)."""
        return self._bufs

    @property
    def _plan(self):
        """The CPU engine's plan (introspection)."""
        return self._bufs.cpu.plan

    @property
    def _gpu(self):
        """The CUDA engine's plan, or None (introspection)."""
        return None if self._bufs.cuda is None else self._bufs.cuda.gpu

    @property
    def max_norm(self) -> float | Threshold:
        """The threshold (a number or a threshold object); assignable between
        calls (validated like the argument)."""
        return self._max_norm if self._threshold is None else self._threshold

    @max_norm.setter
    def max_norm(self, value: float | Threshold) -> None:
        thr = value if isinstance(value, Threshold) else None
        v = _policy.check_max_norm(value) if thr is None else (
            thr.v if isinstance(thr, Fixed) else float("inf"))
        if getattr(self, "_nonfinite_policy", None) == "random":
            _random_needs_fixed(v, thr)
        self._max_norm, self._threshold = v, thr

    @property
    def norm_type(self) -> float:
        """The p of the norm; assignable between calls (validated like the argument)."""
        return self._norm_type

    @norm_type.setter
    def norm_type(self, value: float) -> None:
        self._kind, self._norm_type = _policy.norm_kind(value)

    @property
    def nonfinite(self) -> str:
        """The inf/NaN policy; assignable between calls (validated like the argument;
        switching to "random" needs a finite max_norm and makes the rng then)."""
        return self._nonfinite_policy

    @nonfinite.setter
    def nonfinite(self, value: str) -> None:
        policy = _policy.check_policy(value)
        if policy == "random":
            _random_needs_fixed(self._max_norm, self._threshold)
            self._rng = _policy.make_rng(self._rng)
        self._nonfinite_policy = policy

    @property
    def num_threads(self) -> int | None:
        """Threads per call (None: the OpenMP default); assignable between calls."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        self._num_threads = _policy.check_threads(value)

    def __repr__(self) -> str:
        return (
            f"Clipper({self._bufs.n_inputs} buffers, max_norm={self.max_norm}, "
            f"norm_type={self.norm_type}, nonfinite={self.nonfinite!r})"
        )

    @property
    def history(self) -> History | None:
        """The record of the last calls (``Clipper(..., history=N)``), or None."""
        return self._history if self._history else None

    def state_dict(self) -> dict:
        """The threshold's state and the history, to resume a run exactly."""
        thr = self._threshold
        return {"threshold": None if thr is None else thr.state_dict(),
                "history": self._history.state_dict() if self._history else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` saved (the threshold object must be of
        the same type as the saved one).  Everything is checked before
        anything is restored (ValueError; TypeError for a wrong type): on an
        error the Clipper is as it was.  A history keeps the last entries it
        has room for; a saved history is checked even where none is kept."""
        if not isinstance(state, dict) or set(state) != {"threshold", "history"}:
            raise ValueError("Clipper.load_state_dict: expected a dict from Clipper.state_dict() "
                             "(keys threshold, history)")
        saved, thr = state["threshold"], self._threshold
        if (saved is None) != (thr is None):
            raise ValueError("Clipper.load_state_dict: the saved state has "
                             f"{'no' if saved is None else 'a'} threshold object, this Clipper "
                             f"{'has one' if thr is not None else 'has none'}")
        # check everything first ...
        hist = self._history if self._history is not None else History(0)
        new_hist = None if state["history"] is None else hist.check_state(state["history"])
        new_thr = None if thr is None else thr._parse_state(saved)
        if isinstance(new_thr, Fixed) and self._nonfinite_policy == "random":
            _random_needs_fixed(new_thr.v, new_thr)
        # ... then restore (a bound ZScore's upload comes first: if it fails, nothing changed)
        if thr is not None:
            thr._set_state(new_thr)
            if isinstance(thr, Fixed):
                self._max_norm = thr.v
        if new_hist is not None and self._history:
            self._history._restore(new_hist)

    def _threshold_for(self, norm: float) -> float:
        thr = self._threshold
        if thr is None:
            return self._max_norm
        if isinstance(thr, Fixed):  # its current value (the random step's length too)
            self._max_norm = thr.v
        return thr.step(norm)

    def __call__(self) -> ClipStats | DeviceClipStats:
        b = self._bufs
        b.check()  # RuntimeError if an array was resized since planning
        if b.device_only and self._reduced is None:
            stats = self._call_device()
        else:
            stats = self._call_host()
        if self._history is not None:
            self._history.record(stats)
        return stats

    def _call_host(self) -> ClipStats:
        """Every engine reduces (``reduce=``: over every rank too), the host
        decides once, and every engine applies."""
        kind, p, nt = self._kind, self._norm_type, self._num_threads
        r = self._reduced
        red = self._bufs.reduce(kind, p, nt) if r is None else r.norm(kind, p, nt)
        norm, flags = red.norm, red.flags
        t = self._threshold_for(norm)
        if not flags and not norm + self._eps > t:  # the common case: nothing to write
            return ClipStats(norm, 1.0, False, True, t, ())
        return self._act(red, t)

    def _act(self, red, t: float) -> ClipStats:
        """Apply the decision for this reduction and threshold to every engine."""
        norm, flags = red.norm, red.flags
        d = _policy.decide(norm, flags, t, self._nonfinite_policy, lambda: red.scale_of(t), self._eps)
        callers = red.callers() if flags else ()
        if d.action == _policy.A_RAISE:
            raise NonFiniteError(norm, callers)
        if d.action == _policy.A_RANDOM:
            self._write_random()
        elif d.action != _policy.A_NONE:
            self._bufs.apply(d.action, d.scale, self._num_threads, refresh=False)
        return ClipStats(norm, d.scale, d.clipped, not flags, t, callers)

    def _write_random(self) -> None:
        """Replace every buffer, CPU and GPU, with one joint random direction.

        Every buffer's step is drawn and rounded to its dtype, and checked,
        before the first buffer is written (``random_step`` raises otherwise);
        distributed: drawn with global norms (``Reduced.random_step``).
        """
        b, r, kind, p, nt = self._bufs, self._reduced, self._kind, self._norm_type, self._num_threads
        if r is not None:
            steps = r.random_step(self._max_norm, kind, p, self._rng, nt)
        else:
            steps = _policy.random_step(b.shapes(), b.dtypes(), b.row_callers(), self._max_norm, kind,
                                        p, self._rng, nt)
        b.write(steps)

    def _call_device(self) -> ClipStats | DeviceClipStats:
        """Device-only lists: the device decides; no host wait unless the
        policy needs the outcome on the host ("error" raises, "random" draws)."""
        from ._gpu import DeviceClipStats, stats_from_state
        from .kernels import cuda as ck

        cu, policy, thr = self._bufs.cuda, self._nonfinite_policy, self._threshold
        assert cu is not None
        if thr is not None and not isinstance(thr, Fixed) and not thr.device_mode:
            # a threshold that needs the norm on the host (Percentile): one wait
            red = cu.reduce(self._kind, self._norm_type)
            return self._act(red, self._threshold_for(red.norm))
        g = cu.gpu
        call = cu.clip(self._kind, self._norm_type, thr.v if isinstance(thr, Fixed) else self._max_norm, policy,
                       threshold=thr if thr is not None and thr.device_mode else None, eps=self._eps)
        if policy not in ("error", "random"):
            return DeviceClipStats(g, call)
        st = g.state_of(call)  # the one wait
        stats = stats_from_state(g, call, st)
        if not stats.finite:  # the device wrote nothing for these policies
            bad = stats.nonfinite_buffers
            return self._act(HostReduction(stats.norm, int(st[ck.S_FLAGS]), None, lambda: bad),
                             stats.threshold)
        return stats


def _random_needs_fixed(v: float, thr) -> None:
    if thr is not None and not isinstance(thr, Fixed):
        raise ValueError("nonfinite='random' needs a fixed, finite max_norm (the step's length), "
                         f"not an adaptive threshold ({thr!r})")
    if v == float("inf"):
        raise ValueError("nonfinite='random' needs a finite max_norm (the step's length)")


def clip_grad_norm_(
    buffers: Buffers,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    nonfinite: str = "error",
    num_threads: int | None = None,
    rng: Any = None,
    stream: Any = None,
    reduce: Any = None,
    replicated: Any = None,
) -> float:
    """Clip the global ``norm_type`` norm of ``buffers`` to ``max_norm``, in place.

    If the norm exceeds ``max_norm`` every element is multiplied by
    ``max_norm / norm``; otherwise nothing is written.  Returns the norm
    before clipping.  inf/NaN gradients follow ``nonfinite`` (see Clipper).
    ``reduce``/``replicated``: distributed clipping (see Clipper).
    """
    clipper = Clipper.__new__(Clipper)
    clipper._setup(buffers, max_norm, norm_type, nonfinite, num_threads, rng, "clip_grad_norm_",
                   cache=True, stream=stream, reduce=reduce, replicated=replicated)
    return clipper().norm  # on a GPU: the one wait, reading the norm


def global_norm(buffers: Buffers, norm_type: float = 2.0, *, num_threads: int | None = None,
                stream: Any = None) -> float:
    """The global ``norm_type`` norm over all buffers.  Never writes; accepts read-only arrays."""
    kind, p = _policy.norm_kind(norm_type)
    nt = _policy.check_threads(num_threads)
    b = plan_buffers(buffers, writable=False, fn="global_norm", cache=True, stream=stream)
    return b.reduce(kind, p, nt).norm  # a CUDA part: the one wait, reading the norm


def clip_grad_value_(buffers: Buffers, clip_value: float, *, num_threads: int | None = None,
                     stream: Any = None) -> None:
    """Clamp every element to ``[-clip_value, clip_value]`` in place.

    NaN stays NaN; +-inf becomes +-clip_value (rounded to the buffer's dtype).
    """
    v = _policy.check_clip_value(clip_value)
    nt = _policy.check_threads(num_threads)
    plan_buffers(buffers, writable=True, fn="clip_grad_value_", cache=True, stream=stream).clamp(v, nt)
