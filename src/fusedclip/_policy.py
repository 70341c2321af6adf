"""What to do when the gradient holds inf or NaN, and the scalar checks.

The policies follow the sources: Goodfellow et al., *Deep Learning* §10.11.1
suggests taking a random step of the threshold's size when the gradient is
inf/NaN ("random"); PyTorch's ``clip_grad_norm_`` multiplies by
``max_norm / norm`` regardless ("propagate").
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import ml_dtypes
import numpy as np

from .kernels import cpu
from .kernels import dtypes as _dtypes

# the policies, their codes and the actions: one table, host and device (kernels/codes.py)
from .kernels.codes import A_NONE, A_RAISE, A_RANDOM, A_SCALE, A_ZERO, POLICIES, POLICY_CODES  # noqa: F401


class ClipStats(NamedTuple):
    """What one clipping step did.

    ``norm``: the global norm before clipping (NaN if any NaN, inf if any inf).
    ``scale``: the factor applied (1.0 when nothing was written; 0.0 for the
    "zero" and "random" policies, which replace the gradient).
    ``clipped``: whether the buffers were written.  ``finite``: whether every
    value was finite.  ``threshold``: the max_norm in force.
    ``nonfinite_buffers``: caller indices of the buffers holding inf/NaN.
    """

    norm: float
    scale: float
    clipped: bool
    finite: bool
    threshold: float
    nonfinite_buffers: tuple[int, ...]


class NonFiniteError(FloatingPointError, RuntimeError):
    """The gradient holds inf or NaN and the policy is "error".

    ``.norm`` is the norm (NaN or inf) and ``.buffers`` the caller indices of
    the buffers that hold the non-finite values.  Nothing was modified.
    """

    def __init__(self, norm: float, buffers: tuple[int, ...]) -> None:
        self.norm = norm
        self.buffers = buffers
        shown = ", ".join(map(str, buffers[:10])) + (", ..." if len(buffers) > 10 else "")
        where = f"buffers [{shown}] hold" if buffers else "another rank's buffers hold"  # distributed
        super().__init__(
            f"the gradient norm is {norm}: {where} inf or NaN; "
            "nothing was modified. Pass nonfinite='skip' to drop the step, 'zero', "
            "'random' or 'propagate' to handle it, or find where the values overflowed"
        )


def real(name: str, x: Any) -> float:
    """A real number as float, or TypeError."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__} {x!r}")
    return float(x)


def check_clip_value(clip_value: Any) -> float:
    v = real("clip_value", clip_value)
    if not v >= 0.0:  # catches NaN too
        raise ValueError(f"clip_value must be >= 0, got {v}")
    return v


def check_max_norm(max_norm: Any, name: str = "max_norm") -> float:
    v = real(name, max_norm)
    if not v > 0.0:  # catches NaN too
        raise ValueError(f"{name} must be > 0 (inf means: never clip), got {v}")
    return v


def norm_kind(norm_type: Any) -> tuple[int, float]:
    """(kernel norm kind, p) for a norm_type; ValueError for p <= 0 or NaN."""
    p = real("norm_type", norm_type)
    if not p > 0.0:
        raise ValueError(f"norm_type must be > 0 or inf, got {p}")
    if p == math.inf:
        return cpu.NORM_INF, p
    if p == 2.0:
        return cpu.NORM_2, p
    if p == 1.0:
        return cpu.NORM_1, p
    return cpu.NORM_P, p


def check_policy(nonfinite: Any) -> str:
    if nonfinite not in POLICIES:
        raise ValueError(f"nonfinite must be one of {', '.join(map(repr, POLICIES))}; got {nonfinite!r}")
    return nonfinite


#: The most threads a call accepts: see ``kernels.cpu.MAX_THREADS`` (libgomp
#: kills the process when it cannot create the threads it is asked for).
MAX_THREADS = cpu.MAX_THREADS


def check_threads(num_threads: Any) -> int | None:
    """An int in [1, MAX_THREADS] or None; TypeError/ValueError naming num_threads."""
    if num_threads is None:
        return None
    if isinstance(num_threads, (bool, np.bool_)) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}")
    n = int(num_threads)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads must be between 1 and {MAX_THREADS} "
                         f"or None, got {n}")
    return n


_RNG_ACCEPTED = "a numpy.random.Generator, a non-negative int seed, a numpy.random.SeedSequence or None"


def make_rng(rng: Any) -> np.random.Generator:
    """The "random" policy's generator; TypeError/ValueError naming ``rng``.

    A bool is not a seed (``True`` would be seed 1), and a negative seed
    gets this message rather than numpy's, which does not say which argument."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    if isinstance(rng, (bool, np.bool_)) or not isinstance(rng, numbers.Integral):
        raise TypeError(f"rng must be {_RNG_ACCEPTED}, got {type(rng).__name__} {rng!r}")
    if rng < 0:
        raise ValueError(f"rng must be {_RNG_ACCEPTED}; a seed must be >= 0, got {int(rng)}")
    return np.random.default_rng(int(rng))


def random_direction(shapes: list[tuple[int, ...]], max_norm: float, kind: int, p: float,
                     rng: np.random.Generator, nt: int | None) -> list[np.ndarray]:
    """One random direction of norm ``max_norm`` over buffers of these shapes.

    Gaussian draws in float64, one array per shape, normalised jointly with the
    same kernels, so the ``norm_type`` norm is max_norm up to the final
    rounding to each buffer's dtype (done by the caller when it writes).
    """
    draws = [rng.standard_normal(s) for s in shapes]
    t = cpu.Table([z.ctypes.data for z in draws], [z.size for z in draws], [0] * len(draws))
    n, _ = t.norm(kind, p, nt)
    s = max_norm / n if n > 0 else 0.0
    for z in draws:
        z *= s
    return draws


def random_step(shapes: list[tuple[int, ...]], dtypes: list, callers: list[int], max_norm: float,
                kind: int, p: float, rng: np.random.Generator, nt: int | None) -> list[np.ndarray]:
    """The "random" policy's step, already rounded to each buffer's dtype.

    Draws one direction (``random_direction``), converts every buffer's part
    to its dtype and checks the result before the caller writes anything:
    every value finite, and the step's norm equal to ``max_norm`` within 4u,
    u the coarsest dtype's unit roundoff (2**-8 for bfloat16, 2**-11 for
    float16; rounding normal values moves the norm by at most u).  Otherwise
    ValueError naming the buffer (its caller index) and dtype, with nothing
    written: a max_norm too large for float16 (65504) would write inf, one
    too small would write zeros.
    Floating-point errors are handled here, not by ``np.errstate``.
    The distributed path (``_reduce``) runs the same steps with global norms.
    """
    with np.errstate(all="ignore"):
        draws = random_direction(shapes, max_norm, kind, p, rng, nt)
    steps = round_steps(draws, dtypes)
    t = table_of(steps)
    got, flags = t.norm(kind, p, nt)
    if flags:
        r = int(t.flagged_rows()[0])
        raise step_unfit(max_norm, callers[r], dtypes[r])
    live = [i for i, z in enumerate(steps) if z.size]
    if not live:
        return steps
    if not step_norm_ok(got, max_norm, unit_roundoff(dtypes, live)):
        w = coarsest_subnormal(dtypes, live)
        raise step_off(max_norm, got, callers[w], dtypes[w])
    return steps


_BF16 = _dtypes.NUMPY[_dtypes.BF16]


def round_once(z: np.ndarray, dt: Any) -> np.ndarray:
    """float64 values rounded once, to nearest even, to ``dt``.  numpy's
    float64 -> float32/float16 conversions do that; older ml_dtypes convert
    float64 -> bfloat16 through float32 (two roundings), so bfloat16 goes
    through float32 rounded to odd (truncated, the last bit set where
    inexact): one rounding from there is the correct one (24 >= 8 + 2 bits,
    the scale kernels' argument, kernels/simd.h)."""
    if np.dtype(dt) != _BF16:
        return z.astype(dt)
    r = z.astype(np.float32)
    bits = r.view(np.uint32)
    back = r.astype(np.float64)
    fix = (back != z) & ~np.isnan(z) & (bits & 1 == 0)
    bits[fix] += np.where(np.abs(back[fix]) < np.abs(z[fix]), 1, -1).astype(np.uint32)
    return r.astype(_BF16)


def round_steps(draws: list[np.ndarray], dtypes: list) -> list[np.ndarray]:
    """Each float64 draw converted (rounded once) to its buffer's dtype."""
    with np.errstate(all="ignore"):
        return [round_once(z, dt) for z, dt in zip(draws, dtypes)]


def table_of(arrays: list[np.ndarray]) -> "cpu.Table":
    """A chunk table over contiguous arrays of the supported dtypes."""
    codes = [_dtypes.BY_NUMPY[np.dtype(a.dtype)] for a in arrays]
    return cpu.Table([a.ctypes.data for a in arrays], [a.size for a in arrays], codes)


def unit_roundoff(dtypes: list, live: list[int]) -> float:
    """u of the coarsest dtype among the non-empty buffers ``live`` (0.0 if none)."""
    return max((float(ml_dtypes.finfo(dtypes[i]).eps) / 2 for i in live), default=0.0)


def coarsest_subnormal(dtypes: list, live: list[int]) -> int:
    """The live buffer whose dtype flushes the largest values to zero."""
    return max(live, key=lambda i: float(ml_dtypes.finfo(dtypes[i]).smallest_subnormal))


def step_norm_ok(got: float, max_norm: float, u: float) -> bool:
    """Rounding a normal value changes it by at most u relative, so the norm of
    the rounded step is within u of max_norm (any p); the slack covers the
    kernels' float64 sums.  Values below a dtype's normal range lose more: if
    that moves the norm past the bound (max_norm too small for the dtype:
    float16 flushes |x| < 3e-8 to zero), the step is refused."""
    return abs(got - max_norm) <= (4.0 * u + 1e-8) * max_norm


def step_unfit(max_norm: float, caller: int | None, dtype: Any) -> ValueError:
    """The random step would write inf into buffer ``caller`` (None: another rank's)."""
    where = ("a buffer on another rank" if caller is None else
             f"buffer {caller} ({np.dtype(dtype).name}, largest value "
             f"{float(ml_dtypes.finfo(dtype).max)})")
    return ValueError(
        f"nonfinite='random': a step of norm max_norm={max_norm} does not fit {where}: "
        "it would write inf; nothing was modified. Use a smaller max_norm, or nonfinite='zero'")


def step_off(max_norm: float, got: float, caller: int | None, dtype: Any) -> ValueError:
    """The rounded random step's norm is not max_norm (values flushed to zero)."""
    where = ("a buffer on another rank" if caller is None else
             f"buffer {caller} is {np.dtype(dtype).name}, smallest value "
             f"{float(ml_dtypes.finfo(dtype).smallest_subnormal)}")
    return ValueError(
        f"nonfinite='random': a step of norm max_norm={max_norm} rounds to norm {got} in "
        f"the buffers' dtypes ({where}); nothing was modified. "
        "Use a larger max_norm, or nonfinite='zero'")


class Decision(NamedTuple):
    action: int      # A_NONE, A_SCALE, A_ZERO, A_RAISE, A_RANDOM
    scale: float     # ClipStats.scale
    clipped: bool


def decide(norm: float, flags: int, max_norm: float, policy: str,
           overflow_scale: Callable[[], float] | None = None,
           eps: float = 0.0) -> Decision:
    """The clipping rule, with the non-finite policies, for every engine.

    Finite gradient: scale by max_norm / (norm + eps) when norm + eps >
    max_norm, else nothing (``eps`` is 0.0 except in the torch drop-in, which
    uses torch's 1e-6).  ``overflow_scale()`` gives that scale where finite
    data have a norm beyond float64 (norm is inf, flags 0).  Non-finite: the
    policy.  The CUDA finalize kernel implements the same table on the device
    (A_RAISE and A_RANDOM are A_NONE there: the host acts on them).
    """
    if not flags:
        d = norm + eps
        if d > max_norm:
            scale = max_norm / d if d < math.inf or overflow_scale is None else overflow_scale()
            return Decision(A_SCALE, scale, True)
        return Decision(A_NONE, 1.0, False)
    if policy == "error":
        return Decision(A_RAISE, math.nan, False)
    if policy == "skip":
        return Decision(A_NONE, 1.0, False)
    if policy == "zero":
        return Decision(A_ZERO, 0.0, True)
    if policy == "random":
        return Decision(A_RANDOM, 0.0, True)
    return Decision(A_SCALE, _ieee_div(max_norm, norm), True)  # propagate: 0 for inf, NaN for NaN, as torch


def _ieee_div(a: float, b: float) -> float:
    """a / b as IEEE floats divide (the device's rule): x / 0 is +-inf, 0 / 0 NaN."""
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a == 0.0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def decide_rows(norms: np.ndarray, flags: np.ndarray, max_norm: float | np.ndarray, policy: str,
                scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """``decide`` for many independent rows at once (per-buffer and per-unit
    clipping): ``(actions, scales, raise_rows, random_rows)``.

    A finite row is scaled by its ``scales`` entry (the engine's overflow-safe
    ``max_norm / norm``) where its norm exceeds ``max_norm`` (a number or one
    per row), else left alone; the few non-finite rows go through ``decide``
    itself, so the policy table exists once.
    """
    bad = flags != 0
    over = ~bad & (norms > max_norm)
    actions = np.where(over, A_SCALE, A_NONE).astype(np.int8)
    out = np.where(over, scales, 1.0)
    raise_rows: list[int] = []
    random_rows: list[int] = []
    mx = np.broadcast_to(np.asarray(max_norm, dtype=np.float64), norms.shape)
    for r in np.flatnonzero(bad).tolist():
        d = decide(float(norms[r]), int(flags[r]), float(mx[r]), policy)
        if d.action == A_RAISE:
            raise_rows.append(r)
        elif d.action == A_RANDOM:
            random_rows.append(r)
        else:
            actions[r], out[r] = d.action, d.scale
    return actions, out, raise_rows, random_rows


def combine_norms(parts: Sequence[tuple[float, float]], kind: int, p: float, flags: int = 0) -> float:
    """The norm of a list from the norms of its parts: ``parts`` holds
    ``(n_i, w_i)``, a part of norm n_i taken w_i times (engines of a mixed
    list: w = 1; a zero-stride view's core: w = its multiplicity k).  The
    one local combiner: M * (sum w_i (n_i/M)**p)**(1/p), M the largest, so
    no finite total overflows.  ``flags``: the parts' inf/NaN flags."""
    if flags & cpu.HAS_NAN or any(n != n for n, _ in parts):
        return math.nan
    if flags & cpu.HAS_INF:
        return math.inf
    big = max((n for n, _ in parts), default=0.0)
    if big == 0.0 or big == math.inf or kind == cpu.NORM_INF:
        return big
    pw = 2.0 if kind == cpu.NORM_2 else 1.0 if kind == cpu.NORM_1 else p
    t = math.fsum(w * (n / big) ** pw for n, w in parts if n > 0.0)
    try:
        return big * (math.sqrt(t) if pw == 2.0 else t if pw == 1.0 else t ** (1.0 / pw))
    except OverflowError:  # only a quasi-norm (p < 1) can exceed float64
        return math.inf
