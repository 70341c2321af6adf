"""The public calls.  Each is a thin layer over a validated ``Plan``.

Norm clipping is Algorithm 1 of Pascanu, Mikolov & Bengio, "On the
difficulty of training recurrent neural networks" (2013): if ||g|| > v,
g <- g * v / ||g||, with the norm taken over all buffers jointly.
Element-wise clipping (``clip_grad_value_``) is Mikolov's earlier variant
(Goodfellow et al., *Deep Learning* §10.11.1).
"""
from __future__ import annotations

from typing import Any, Iterable, Union


from . import _policy
from ._buffers import plan_buffers
from ._policy import ClipStats, NonFiniteError

Buffers = Union[Any, Iterable[Any]]


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
    (docs/GPU.md says when it waits for the device).
    """

    def __init__(
        self,
        buffers: Buffers,
        max_norm: float,
        norm_type: float = 2.0,
        *,
        nonfinite: str = "error",
        num_threads: int | None = None,
        rng: Any = None,
    ) -> None:
        self._setup(buffers, max_norm, norm_type, nonfinite, num_threads, rng, "Clipper")

    def _setup(self, buffers, max_norm, norm_type, nonfinite, num_threads, rng, fn: str) -> None:
        self.nonfinite = _policy.check_policy(nonfinite)
        self.max_norm = max_norm
        self._kind, self.norm_type = _policy.norm_kind(norm_type)
        self.num_threads = _policy.check_threads(num_threads)
        self._rng = rng
        if nonfinite == "random":
            self._rng = _policy.make_rng(rng)
        self._plan, self._gpu = plan_buffers(buffers, writable=True, fn=fn)

    @property
    def max_norm(self) -> float:
        """The threshold; assignable between calls (validated like the argument)."""
        return self._max_norm

    @max_norm.setter
    def max_norm(self, value: float) -> None:
        v = _policy.check_max_norm(value)
        if v == float("inf") and getattr(self, "nonfinite", None) == "random":
            raise ValueError("nonfinite='random' needs a finite max_norm (the step's length)")
        self._max_norm = v

    def __repr__(self) -> str:
        return (
            f"Clipper({self._plan.n_inputs} buffers, max_norm={self.max_norm}, "
            f"norm_type={self.norm_type}, nonfinite={self.nonfinite!r})"
        )

    def __call__(self) -> ClipStats:
        self._plan.check()  # RuntimeError if an array was resized since planning
        if self._gpu is not None:
            return self._call_gpu()
        plan, nt, t = self._plan, self.num_threads, self._max_norm
        plan.refresh()
        norm, flags = plan.table.norm(self._kind, self.norm_type, nt)
        if not flags:
            if norm > t:
                scale = t / norm
                plan.table.scale(scale, nt)
                plan.write_back()
                return ClipStats(norm, scale, True, True, t, ())
            return ClipStats(norm, 1.0, False, True, t, ())
        return self._nonfinite(norm)

    def _nonfinite(self, norm: float) -> ClipStats:
        plan, nt, t = self._plan, self.num_threads, self._max_norm
        bad = plan.callers(plan.table.flagged_rows())
        policy = self.nonfinite
        if policy == "error":
            raise NonFiniteError(norm, bad)
        if policy == "skip":
            return ClipStats(norm, 1.0, False, False, t, bad)
        if policy == "zero":
            plan.table.zero(nt)
            plan.write_back()
            return ClipStats(norm, 0.0, True, False, t, bad)
        if policy == "random":
            self._write_random()
            return ClipStats(norm, 0.0, True, False, t, bad)
        scale = t / norm  # "propagate": 0 for an inf norm, NaN for a NaN norm, as torch
        plan.table.scale(scale, nt)
        plan.write_back()
        return ClipStats(norm, scale, True, False, t, bad)


    def _write_random(self) -> None:
        """Replace every buffer, CPU and GPU, with one joint random direction."""
        plan, g = self._plan, self._gpu
        shapes = [a.shape for a in plan.arrays] + ([(b.n,) for b in g.rows] if g else [])
        draws = _policy.random_direction(shapes, self._max_norm, self._kind, self.norm_type,
                                         self._rng, self.num_threads)
        for a, z in zip(plan.arrays, draws):
            a[...] = z.astype(a.dtype)
        if g is not None:
            g.write_random(draws[len(plan.arrays):])

    def _call_gpu(self):
        """GPU (or mixed) buffers: no host wait unless the host must act (see _gpu)."""
        from ._gpu import DeviceClipStats
        from .kernels import cuda as ck

        plan, g, nt, t, policy = self._plan, self._gpu, self.num_threads, self._max_norm, self.nonfinite
        mixed = plan.table.nchunks > 0
        cpu_norm, cpu_flags = 0.0, 0
        if mixed:
            plan.refresh()
            cpu_norm, cpu_flags = plan.table.norm(self._kind, self.norm_type, nt)
            if cpu_flags:
                cpu_norm = 0.0
        state = g.reduce(self._kind, self.norm_type, t, policy, cpu_norm, cpu_flags)
        if not mixed and policy not in ("error", "random"):
            g.scale(state)  # the device decides whether to write
            return DeviceClipStats(g, state, g.calls)
        st = state.copy_to_host()  # the host must act on the outcome: one wait
        norm, scale, action = float(st[ck.S_NORM]), float(st[ck.S_SCALE]), int(st[ck.S_ACTION])
        if not st[ck.S_FINITE]:
            bad = tuple(sorted(set(g.flagged_callers()) | set(plan.callers(plan.table.flagged_rows()))))
            if policy == "error":
                raise NonFiniteError(norm, bad)
            if policy == "random":
                self._write_random()
                return ClipStats(norm, 0.0, True, False, t, bad)
        else:
            bad = ()
        g.scale(state)
        if action == ck.A_SCALE:
            plan.table.scale(scale, nt)
            plan.write_back()
        elif action == ck.A_ZERO:
            plan.table.zero(nt)
            plan.write_back()
        return ClipStats(norm, scale, bool(st[ck.S_CLIPPED]), bool(st[ck.S_FINITE]), t, bad)


def clip_grad_norm_(
    buffers: Buffers,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    nonfinite: str = "error",
    num_threads: int | None = None,
    rng: Any = None,
) -> float:
    """Clip the global ``norm_type`` norm of ``buffers`` to ``max_norm``, in place.

    If the norm exceeds ``max_norm`` every element is multiplied by
    ``max_norm / norm``; otherwise nothing is written.  Returns the norm
    before clipping.  inf/NaN gradients follow ``nonfinite`` (see Clipper).
    """
    clipper = Clipper.__new__(Clipper)
    clipper._setup(buffers, max_norm, norm_type, nonfinite, num_threads, rng, "clip_grad_norm_")
    return clipper().norm  # on a GPU: the one wait, reading the norm


def global_norm(buffers: Buffers, norm_type: float = 2.0, *, num_threads: int | None = None) -> float:
    """The global ``norm_type`` norm over all buffers.  Never writes; accepts read-only arrays."""
    kind, p = _policy.norm_kind(norm_type)
    nt = _policy.check_threads(num_threads)
    plan, g = plan_buffers(buffers, writable=False, fn="global_norm")
    norm, flags = plan.norm(kind, p, nt)  # plan.norm: zero-stride views count k times
    if g is None:
        return norm
    from .kernels import cuda as ck

    state = g.reduce(kind, p, float("inf"), "skip", 0.0 if flags else norm, flags)
    return float(state.copy_to_host()[ck.S_NORM])


def clip_grad_value_(buffers: Buffers, clip_value: float, *, num_threads: int | None = None) -> None:
    """Clamp every element to ``[-clip_value, clip_value]`` in place.

    NaN stays NaN; +-inf becomes +-clip_value (rounded to the buffer's dtype).
    """
    v = _policy.real("clip_value", clip_value)
    if not v >= 0.0:
        raise ValueError(f"clip_value must be >= 0, got {v}")
    nt = _policy.check_threads(num_threads)
    plan, g = plan_buffers(buffers, writable=True, fn="clip_grad_value_")
    plan.refresh()
    plan.table.clamp(v, nt)
    plan.write_back()
    if g is not None:
        g.clamp(v)
