"""Distributed clipping: the global norm through the caller's all-reduce.

``Clipper(..., reduce=f)`` and ``clip_grad_norm_(..., reduce=f)`` hand this
module the local norms; it all-reduces them with ``f`` and returns one
global norm and one set of non-finite flags, the same bits on every rank, so
that ``_policy.decide`` makes one decision everywhere.  The contract of
``f`` and the rounds are in docs/DISTRIBUTED.md; in short:

``f(x, op)``: ``x`` a 1-D float64 numpy array (a few elements), ``op``
``"sum"`` or ``"max"``; returns a float64 array of the same shape holding
the element-wise sum or max over all ranks, the same bits on every rank.
Every rank calls it the same number of times with the same shapes and ops
(the branches below are decided from reduced values only).

Rounds for a finite p (``pw`` = 2, 1 or p), one in the common case:

A. ``sum`` of ``[Σ_sharded N^pw, Σ_replicated N^pw, 1, nan?, inf?, fallback?]``
   over the local parts' norms N.  Flags set anywhere: the norm is NaN/inf
   everywhere.  Else, when no rank asked for the fallback (a local N^pw that
   overflows or is subnormal) and the total and its root are finite, the
   norm is ``(sharded + replicated / ranks) ** (1/pw)``.
B. otherwise (finite norms whose powers leave float64's range): every part's
   norm as ``m · 2**e`` (frexp; a local norm beyond float64 is recovered from
   the kernels' relative form), ``max`` of e -> E, ``max`` of m over parts
   with e = E -> M (so M·2**E is the exact largest norm), and ``sum`` of
   ``(N / (M·2**E)) ** pw``: every ratio is <= 1 and the largest is 1, so
   nothing overflows or underflows to zero.  Three more rounds, only then.

For p = inf one ``max`` round of ``[max N, nan?, inf?]``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _policy
from .kernels import cpu

OPS = ("sum", "max")
_MIN_NORMAL = 2.0 ** -1022
_PROBE = 2.0 ** 1000  # v for clip_scale(v) = v / norm where a local norm overflowed
_SEED_RANGE = 2 ** 53  # shared seeds travel as float64: integers below this are exact


class Part(NamedTuple):
    """One local contribution: a norm, its flags, ``v -> v / norm`` that stays
    right where finite data have a norm beyond float64, and whether its
    buffers are replicated (the same values on every rank: counted once).
    ``copies``: how many ranks of the group hold these same elements (a
    DTensor's replicas, known locally: its power is divided by it)."""

    norm: float
    flags: int
    scale_of: Callable[[float], float]
    replicated: bool
    copies: float = 1.0


def _clip_scale_of(t: Any, kind: int, p: float) -> Callable[[float], float]:
    """``v -> v / norm`` of a table's own norm, overflow-safe (``Table.clip_scale``)."""
    return lambda v: t.clip_scale(kind, p, v)


class Global(NamedTuple):
    """The global norm and flags (the same on every rank) and ``v -> v / norm``;
    ``extra``: the caller's extra elements of the first round, reduced."""

    norm: float
    flags: int
    scale_of: Callable[[float], float]
    extra: tuple[float, ...] = ()


def pw_of(kind: int, p: float) -> float:
    """The power of the sums: 2 for the L2 norm, 1 for L1, else p."""
    return 2.0 if kind == cpu.NORM_2 else 1.0 if kind == cpu.NORM_1 else p


def _power(n: float, pw: float) -> float:
    try:
        return n * n if pw == 2.0 else n if pw == 1.0 else math.pow(n, pw)
    except OverflowError:
        return math.inf


def _fsum(xs: list[float]) -> float:
    """math.fsum, inf where finite terms sum beyond float64 (the exact rounds follow)."""
    try:
        return math.fsum(xs)
    except OverflowError:
        return math.inf


def root(t: float, pw: float) -> float:
    try:
        return math.sqrt(t) if pw == 2.0 else t if pw == 1.0 else math.pow(t, 1.0 / pw)
    except OverflowError:  # a quasi-norm (p < 1) beyond float64
        return math.inf


def _pair(part: Part) -> tuple[float, float] | None:
    """A finite, non-zero part's norm as (m, e), norm = m·2**e; None for zero.
    A norm beyond float64 (inf with no flags) comes from scale_of: (m, inf)
    if even that underflowed."""
    n = part.norm
    if n == 0.0:
        return None
    if n < math.inf:
        m, e = math.frexp(n)
        return m, float(e)
    c = part.scale_of(_PROBE)  # = 2**1000 / norm, normal for any norm within 2**2000
    if not c > 0.0 or c == math.inf:
        return 1.0, math.inf
    mc, ec = math.frexp(c)  # norm = 2**1000 / (mc · 2**ec) = (0.5/mc) · 2**(1001 - ec)
    return 0.5 / mc, float(1001 - ec)


class HostReduction:
    """A reduction whose numbers are on the host already (``_engine.Reduction``):
    a norm, its flags, ``v -> v / norm`` and the flagged callers."""

    __slots__ = ("norm", "flags", "_scale_of", "_callers")

    def __init__(self, norm: float, flags: int, scale_of: Callable[[float], float] | None,
                 callers: Callable[[], tuple[int, ...]]) -> None:
        self.norm, self.flags, self._scale_of, self._callers = norm, flags, scale_of, callers

    def scale_of(self, v: float) -> float:
        return v / self.norm if self._scale_of is None else self._scale_of(v)

    def callers(self) -> tuple[int, ...]:
        return self._callers()


class Reducer:
    """The validated ``reduce`` callable: checks every answer's shape and dtype."""

    __slots__ = ("fn", "_f")

    def __init__(self, f: Any, fn: str) -> None:
        if not callable(f):
            raise TypeError(f"{fn}: reduce must be a callable reduce(x, op) -> array "
                            f"(e.g. fusedclip.distributed.torch_reducer()), got {type(f).__name__}")
        self._f, self.fn = f, fn

    def __call__(self, x: Any, op: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        y = self._f(x.copy(), op)
        try:
            y = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{self.fn}: reduce(x, {op!r}) returned {type(y).__name__}, not a float64 "
                            f"array ({e}); nothing was modified") from None
        if y.shape != x.shape:
            raise ValueError(f"{self.fn}: reduce(x, {op!r}) returned shape {y.shape} for x of shape "
                             f"{x.shape}; it must all-reduce element-wise; nothing was modified")
        return y.reshape(-1)


class _Local:
    """One process's "all-reduce": ``combine`` over local parts only (a
    mixed list's scale where its finite total overflows float64)."""

    fn = "fusedclip"

    def __call__(self, x: Any, op: str) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).reshape(-1)


LOCAL: Any = _Local()


def combine(parts: list[Part], kind: int, p: float, reduce: Reducer,
            extra: tuple[float, ...] = ()) -> Global:
    """The global norm of every rank's parts; the same result, and the same
    sequence of ``reduce`` calls, on every rank (see the module docstring).

    ``extra``: flags (0.0 or 1.0) that ride at the end of the first round's
    vector (summed, or maxed for p = inf); where any rank set one, no other
    round runs and the result's norm is NaN: ``Global.extra`` says which
    (fusedclip.torch's refusals: every rank learns that one refused)."""
    flags = 0
    for q in parts:
        flags |= q.flags
    nan, inf = float(bool(flags & cpu.HAS_NAN)), float(bool(flags & cpu.HAS_INF))
    live = [q for q in parts if not q.flags]
    if kind == cpu.NORM_INF:
        m = max((q.norm for q in live), default=0.0)
        y = reduce([m, nan, inf, *extra], "max")
        if any(y[3:]):
            return _refused(y[3:])
        g = _flags(y[1], y[2])
        norm = _flag_norm(g) if g else float(y[0])
        return Global(norm, g, lambda v: v / norm)
    pw = pw_of(kind, p)
    s_sh: list[float] = []
    s_rep: list[float] = []
    fb = 0.0
    for q in live:
        if q.norm == 0.0:
            continue
        t = _power(q.norm, pw)
        if not _MIN_NORMAL <= t < math.inf:
            fb = 1.0  # this power over- or underflows: every rank takes the exact rounds
            t = 0.0
        (s_rep if q.replicated else s_sh).append(t / q.copies)
    y = reduce([_fsum(s_sh), _fsum(s_rep), 1.0, nan, inf, fb, *extra], "sum")
    if any(y[6:]):
        return _refused(y[6:])
    ranks = _ranks(y[2], reduce.fn)
    g = _flags(y[3], y[4])
    if g:
        norm = _flag_norm(g)
        return Global(norm, g, lambda v: v / norm)
    if y[5] == 0.0:
        total = y[0] + y[1] / ranks
        norm = root(total, pw) if total < math.inf else math.inf
        if norm < math.inf:
            return Global(norm, 0, lambda v: v / norm)
    return _exact(live, pw, ranks, reduce)


def _exact(live: list[Part], pw: float, ranks: float, reduce: Reducer) -> Global:
    """Rounds B: every norm relative to the exact largest, M·2**E."""
    pairs = [(mp, q) for q in live if (mp := _pair(q)) is not None]
    E = float(reduce([max((mp[1] for mp, _ in pairs), default=-math.inf)], "max")[0])
    if E == -math.inf:  # every norm is zero (cannot happen after round A; kept exact)
        return Global(0.0, 0, lambda v: math.inf)
    if E == math.inf:  # a local norm beyond 2**2000 (quasi-norms only)
        return Global(math.inf, 0, lambda v: 0.0)
    M = float(reduce([max((mp[0] for mp, _ in pairs if mp[1] == E), default=0.0)], "max")[0])
    t_sh: list[float] = []
    t_rep: list[float] = []
    for (m, e), q in pairs:
        (t_rep if q.replicated else t_sh).append(_power(math.ldexp(m / M, int(e - E)), pw) / q.copies)
    y = reduce([math.fsum(t_sh), math.fsum(t_rep)], "sum")
    t = y[0] + y[1] / ranks  # in [1/copies, n]: the largest part adds 1 / its copies
    r = root(t, pw)
    try:
        norm = math.ldexp(M * r, int(E))
    except OverflowError:
        norm = math.inf

    def scale_of(v: float) -> float:  # (v / M / r) · 2**-E without an intermediate overflow
        try:
            return math.ldexp((v * 0.5 / M) / r, int(1 - E))
        except OverflowError:
            return math.inf

    return Global(norm, 0, scale_of)


def _refused(extra: np.ndarray) -> Global:
    return Global(math.nan, 0, lambda v: math.nan, tuple(float(x) for x in extra))


def _flags(nan: float, inf: float) -> int:
    return (cpu.HAS_NAN if nan else 0) | (cpu.HAS_INF if inf else 0)


def _flag_norm(flags: int) -> float:
    return math.nan if flags & cpu.HAS_NAN else math.inf


def _ranks(w: float, fn: str) -> float:
    if not (w >= 1.0 and w == math.floor(w)):
        raise RuntimeError(f"{fn}: reduce(x, 'sum') summed a 1.0 from every rank into {w}, not a "
                           "positive whole number: it is not a sum all-reduce; nothing was modified")
    return w


# ---------------------------------------------------------------- the argument
def check_replicated(replicated: Any, n: int, fn: str) -> frozenset[int]:
    """Caller indices of the replicated buffers: a list/tuple/array of ints in
    [0, n), or a boolean mask of length n.  TypeError/ValueError naming it."""
    if replicated is None:
        return frozenset()
    if isinstance(replicated, (str, bytes, dict, set, frozenset)) or not hasattr(replicated, "__len__"):
        raise TypeError(f"{fn}: replicated must be a list of buffer indices or a boolean mask, "
                        f"got {type(replicated).__name__}")
    items = list(replicated)
    if items and all(isinstance(x, (bool, np.bool_)) for x in items):
        if len(items) != n:
            raise ValueError(f"{fn}: replicated as a boolean mask must have one entry per buffer "
                             f"({n}), got {len(items)}")
        return frozenset(i for i, x in enumerate(items) if x)
    out = set()
    for x in items:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
            raise TypeError(f"{fn}: replicated must hold buffer indices (ints) or be a boolean "
                            f"mask, got {type(x).__name__} {x!r}")
        if not 0 <= int(x) < n:
            raise ValueError(f"{fn}: replicated index {int(x)} is out of range for {n} buffers "
                             "(0 to n-1)")
        out.add(int(x))
    return frozenset(out)


# ---------------------------------------------------------------- a Clipper's side
def _sub_table(table, mask: np.ndarray):
    """A table over the chunks of ``table`` selected by ``mask`` (one row per
    chunk: the same chunks, so the same partials), and their chunk indices."""
    idx = np.flatnonzero(mask)
    ch = table.chunks[idx]
    return cpu.Table(ch["ptr"].astype(np.int64), ch["n"], ch["dtype"].astype(np.int64)), idx


class Reduced:
    """The distributed side of a Clipper: its parts (the CPU engine's table
    split into sharded and replicated chunks; the CUDA engine, sharded) and
    the rounds."""

    __slots__ = ("reduce", "bufs", "plan", "rep_rows", "_sh", "_rep")

    def __init__(self, reduce: Any, replicated: Any, bufs: Any, fn: str) -> None:
        if reduce is None:
            raise ValueError(f"{fn}: replicated= needs reduce= (without an all-reduce every "
                             "buffer is local and counted once anyway)")
        self.reduce = Reducer(reduce, fn)
        rep = check_replicated(replicated, bufs.n_inputs, fn)
        self.bufs, self.plan = bufs, bufs.cpu.plan
        plan = self.plan
        nrows = len(plan.arrays)
        flags = np.zeros(nrows, bool)
        for r in range(nrows):
            callers = plan.map.callers([r])
            marked = [c in rep for c in callers]
            if any(marked) and not all(marked):
                a = callers[marked.index(True)]
                b = callers[marked.index(False)]
                raise ValueError(f"{fn}: buffers {min(a, b)} and {max(a, b)} are the same memory but "
                                 "only one is marked replicated; mark both or neither")
            flags[r] = marked[0]
        if bufs.cuda is not None:
            m = bufs.cuda.map
            for r in range(len(m)):
                bad = [c for c in m.callers([r]) if c in rep]
                if bad:
                    raise ValueError(
                        f"{fn}: buffer {bad[0]} is a GPU buffer marked replicated; replicated GPU "
                        "buffers are not supported yet (docs/DISTRIBUTED.md): keep them on the CPU, "
                        "or clip them as a sharded list")
        self.rep_rows = flags
        if flags.any():
            cmask = flags[plan.table.chunks["buf"]]
            self._sh = _sub_table(plan.table, ~cmask)
            self._rep = _sub_table(plan.table, cmask)
        else:
            self._sh, self._rep = (plan.table, None), None

    def _cpu_parts(self, kind: int, p: float, nt) -> list[Part]:
        out = []
        for sub, rep in ((self._sh, False), (self._rep, True)):
            if sub is None:
                continue
            t = sub[0]
            n, f = t.norm(kind, p, nt)
            out.append(Part(n, f, _clip_scale_of(t, kind, p), rep))
        return out

    def norm(self, kind: int, p: float, nt: int | None) -> HostReduction:
        """The global reduction: ``norm``, ``flags`` and ``scale_of`` the same
        on every rank; ``callers()`` this rank's flagged buffers."""
        self.plan.refresh()
        parts = self._cpu_parts(kind, p, nt)
        cuda = None
        if self.bufs.cuda is not None:
            # the host wait (docs/DISTRIBUTED.md: no NCCL path yet)
            cuda = self.bufs.cuda.reduce(kind, p)
            parts.append(Part(cuda.norm, cuda.flags, cuda.scale_of, False))
        res = combine(parts, kind, p, self.reduce)

        def bad() -> tuple[int, ...]:
            out = set(self._flagged_cpu())
            if cuda is not None:
                out |= set(cuda.callers())
            return tuple(sorted(out))

        return HostReduction(res.norm, res.flags, res.scale_of, bad)

    def _flagged_cpu(self) -> tuple[int, ...]:
        plan = self.plan
        if self._rep is None:
            return plan.map.callers(plan.table.flagged_rows())
        bufs = plan.table.chunks["buf"]
        rows = set()
        for t, idx in (self._sh, self._rep):
            rows.update(bufs[idx[t.flagged_rows()]].tolist())
        return plan.map.callers(sorted(rows))

    # ------------------------------------------------------------ nonfinite="random"
    def random_step(self, max_norm: float, kind: int, p: float, rng: np.random.Generator,
                    nt: int | None) -> list[np.ndarray]:
        """The joint random step over every rank, rounded to each buffer's dtype,
        as ``_policy.random_step`` but with global norms and one decision.

        Sharded buffers draw from each rank's own ``rng`` (seed it differently
        per rank); replicated buffers draw from a generator seeded with the
        max over ranks of one draw from each rank's ``rng``, so they get the
        same values everywhere.  The direction is normalised by its global
        norm (replicated parts counted once); the rounded step's global norm
        and flags decide, on every rank alike, whether it is written.
        """
        b = self.bufs
        shapes, dtypes, callers = b.shapes(), b.dtypes(), b.row_callers()
        rep = list(self.rep_rows) + [False] * (len(shapes) - len(self.rep_rows))
        live = [i for i, s in enumerate(shapes) if math.prod(s)]
        u_local = _policy.unit_roundoff(dtypes, live)
        y = self.reduce([float(rng.integers(0, _SEED_RANGE)), u_local], "max")
        shared = np.random.default_rng(int(y[0]))
        u = float(y[1])
        draws = [(shared if r else rng).standard_normal(s) for s, r in zip(shapes, rep)]
        n = self._norm_of(draws, rep, kind, p, nt)[0]
        with np.errstate(all="ignore"):
            s = max_norm / n if n > 0 else 0.0
            for z in draws:
                z *= s
        steps = _policy.round_steps(draws, dtypes)
        got, flags, local_bad = self._norm_of(steps, rep, kind, p, nt)
        if flags:
            r = local_bad[0] if local_bad else None
            raise _policy.step_unfit(max_norm, None if r is None else callers[r],
                                     None if r is None else dtypes[r])
        if u == 0.0:  # no rank has an element
            return steps
        if not _policy.step_norm_ok(got, max_norm, u):
            w = _policy.coarsest_subnormal(dtypes, live) if live and u_local == u else None
            raise _policy.step_off(max_norm, got, None if w is None else callers[w],
                                   None if w is None else dtypes[w])
        return steps

    def _norm_of(self, arrays: list[np.ndarray], rep: list[bool], kind: int, p: float, nt):
        """Global (norm, flags) of host arrays, replicated ones counted once, and
        the local indices of the arrays holding inf/NaN."""
        parts: list[Part] = []
        bad: list[int] = []
        for want in (False, True):
            idx = [i for i, r in enumerate(rep) if r == want]
            if want and not idx:
                continue
            t = _policy.table_of([np.ascontiguousarray(arrays[i]).reshape(-1) for i in idx])
            n, f = t.norm(kind, p, nt)
            parts.append(Part(n, f, _clip_scale_of(t, kind, p), want))
            if f:
                bad.extend(idx[int(r)] for r in t.flagged_rows())
        res = combine(parts, kind, p, self.reduce)
        return res.norm, res.flags, sorted(bad)
