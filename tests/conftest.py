"""Shared references for the tests: exact norms via math.fsum, dtype helpers."""
import math
import os

import ml_dtypes
import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # the simulator runs each CUDA thread as a Python thread: small blocks and
    # chunks (read by fusedclip.kernels.cuda at import), so that several
    # chunks and blocks are exercised on small data
    os.environ.setdefault("FUSEDCLIP_GPU_THREADS", "16")
    os.environ.setdefault("FUSEDCLIP_GPU_CHUNK", "48")

DTYPES = [np.float64, np.float32, ml_dtypes.bfloat16, np.float16]
DTYPE_IDS = ["f64", "f32", "bf16", "f16"]
CHUNK = 32768


def ref_norm(arrays, p=2.0):
    """The norm of the values as stored, computed exactly enough to judge 1e-12.

    Values are widened to float64 (exact for every supported dtype) and scaled
    by a power of two so that no power over- or underflows; math.fsum adds the
    powers with a single rounding.
    """
    flat = [np.asarray(a).astype(np.float64).ravel() for a in arrays]
    x = np.concatenate(flat) if flat else np.zeros(0)
    if x.size == 0:
        return 0.0
    if np.isnan(x).any():
        return math.nan
    if np.isinf(x).any():
        return math.inf
    m = float(np.max(np.abs(x)))
    if p == math.inf or m == 0.0:
        return m
    if p == 2.0:  # power-of-two scaling: the squares of float32 values stay exact
        k = math.frexp(m)[1]
        y = np.ldexp(np.abs(x), -k)
        return math.ldexp(math.sqrt(math.fsum(y * y)), k)
    # relative to the max: every term <= 1 and the sum >= 1, for any p
    try:
        return m * math.fsum((np.abs(x) / m) ** p) ** (1.0 / p)
    except OverflowError:  # the norm itself is beyond float64 (only for p < 1)
        return math.inf


def snapshot(arrays):
    return [np.asarray(a).tobytes() for a in arrays]


def assert_untouched(arrays, snap):
    for i, (a, s) in enumerate(zip(arrays, snap)):
        assert np.asarray(a).tobytes() == s, f"buffer {i} was modified"


def scaled(x, s):
    """What the scale kernel must produce: x*s computed exactly and rounded
    once, to nearest even, to x's dtype (``correctly_rounded_product``)."""
    x = np.asarray(x)
    if x.dtype == np.float64:
        return x * s
    return correctly_rounded_product(x, s)


def round_to(y, dtype):
    """float64 values rounded ONCE, to nearest even, to ``dtype``.

    numpy's float64 -> float16/float32 conversions are correctly rounded, but
    ml_dtypes converts float64 -> bfloat16 through float32 (a double rounding:
    1 + 2**-8 + 2**-30 becomes 1.0).  For bfloat16 we therefore round to
    float32 with round-to-odd first (truncate, set the last bit if inexact),
    after which one rounding to bfloat16 is correct (24 >= 8 + 2 bits).
    """
    y = np.asarray(y, dtype=np.float64)
    dt = np.dtype(dtype)
    if dt != np.dtype(ml_dtypes.bfloat16):
        with np.errstate(over="ignore"):
            return y.astype(dt)
    with np.errstate(over="ignore", invalid="ignore"):
        r = y.astype(np.float32)
        bits = r.view(np.uint32).copy()
        finite = np.isfinite(y)
        away = finite & (np.abs(r.astype(np.float64)) > np.abs(y))  # rounded away from zero
        bits[away] -= 1  # the float32 just below in magnitude: the truncation
        inexact = finite & (bits.view(np.float32).astype(np.float64) != y)
        bits[inexact] |= 1
        return bits.view(np.float32).astype(dt)


def correctly_rounded_product(x, s):
    """x * s computed exactly and rounded once to x's dtype (nearest even).

    The float64 product S = fl(x * s) is within half a float64 ulp of the
    exact product, so the exact value lies in [S-, S+] (S's float64
    neighbours).  Where both neighbours round to the same value, rounding is
    monotonic and that value is the answer; elsewhere (the exact product is
    within a float64 ulp of a midpoint of the dtype: rare) the two candidates
    are compared exactly with Fractions.
    """
    import fractions

    dt = x.dtype
    with np.errstate(all="ignore"):
        x64 = x.astype(np.float64)
        S = x64 * s
        lo = round_to(np.nextafter(S, -np.inf), dt)
        hi = round_to(np.nextafter(S, np.inf), dt)
        out = round_to(S, dt)
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    amb = np.flatnonzero(np.isfinite(S) & (lo64 != hi64))
    bits = out.view(np.uint16 if dt.itemsize == 2 else np.uint32 if dt.itemsize == 4 else np.uint64)
    for i in amb:
        exact = fractions.Fraction(float(x64.flat[i])) * fractions.Fraction(s)
        a, b = lo.flat[i], hi.flat[i]  # a < b, the two candidates
        fa, fb = float(a), float(b)
        if not math.isfinite(fa) or not math.isfinite(fb):
            # overflow: inf from |max| + half an ulp of max on (a tie goes to
            # inf, since the largest finite value has an odd significand)
            big = fb if math.isfinite(fb) else fa
            below = np.array([big], dt).view(bits.dtype) - 1
            gap = abs(big) - abs(float(below.view(dt)[0]))
            over = abs(exact) >= fractions.Fraction(abs(big)) + fractions.Fraction(gap) / 2
            out.flat[i] = (b if math.isfinite(fa) else a) if over else (a if math.isfinite(fa) else b)
            continue
        da = abs(exact - fractions.Fraction(fa))
        db = abs(exact - fractions.Fraction(fb))
        if da != db:
            pick = a if da < db else b
        else:  # a tie: the even significand
            ia = np.array([a]).view(bits.dtype)[0]
            pick = a if ia % 2 == 0 else b
        out.flat[i] = pick
    return out


def ulp_distance(a, b):
    """Distance in units in the last place between same-dtype arrays (NaN vs NaN = 0).

    In the total order of the bit patterns: -0 and +0 are 1 apart (a product
    that loses the sign of a zero is not exact)."""
    ut = {2: np.uint16, 4: np.uint32}[a.dtype.itemsize]  # 16- and 32-bit types
    it = np.int64
    nbits = 8 * a.dtype.itemsize

    def ordered(v):
        u = v.view(ut).astype(np.int64)
        sign = u >> (nbits - 1)
        mag = u & ((1 << (nbits - 1)) - 1)
        return np.where(sign == 1, -mag - 1, mag).astype(it)

    with np.errstate(invalid="ignore"):  # bfloat16 signalling NaNs
        both_nan = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
    d = np.abs(ordered(a) - ordered(b))
    return np.where(both_nan, 0, d)


def clamped(x, c):
    """What clip_grad_value_ must produce: clip in the compute type, round to the dtype.

    The kernel clamps in float64 for float64/float32 and rounds once; for
    float16/bfloat16 it clamps in float32 with the bound rounded to float32
    (or clamps in float64 and rounds to float32, the same thing) and then
    rounds to the 16-bit type: round16(round32(clip(x, -c, c))).  NaN stays
    NaN; +-inf becomes the rounded +-c.
    """
    y = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        z = np.where(np.isnan(y), y, np.clip(y, -c, c))
    if x.dtype.itemsize == 2:
        z = z.astype(np.float32)
    return z.astype(x.dtype)


# Post-clip norm bound.  Each stored element is y = x*s*(1+e):
#  * float64: one rounding of the float64 product, |e| <= 2**-53;
#  * float32: the product rounded to float64, then to float32,
#    |e| <= (1 + 2**-53)(1 + 2**-24) - 1;
#  * float16/bfloat16: s rounded to float32, the product rounded to float32,
#    then to the 16-bit type: |e| <= (1 + 2**-24)**2 (1 + u) - 1 with the unit
#    roundoff u = 2**-11 (float16) or 2**-8 (bfloat16).
# Every p-norm is monotone in |x_i|, so ||y|| lies within (1 +- max|e|) of
# s*||x|| = max_norm * ||x|| / norm, and the computed norm is within 1e-13
# of ||x|| (tests/test_norm.py).  Subnormal results are off by at most half
# the smallest subnormal each (absolute): n**(1/p) of those at most, which is
# only visible for float16 (2**-25 each).
UNIT = {np.dtype(np.float64): 2.0**-53, np.dtype(np.float32): 2.0**-24,
        np.dtype(ml_dtypes.bfloat16): 2.0**-8, np.dtype(np.float16): 2.0**-11}
HALF_SUBNORMAL = {np.dtype(np.float16): 2.0**-25}


def after_clip_bound(dtype, n, p, max_norm=1.0, norm_err=1e-13):
    dt = np.dtype(dtype)
    u = UNIT[dt]
    if dt == np.float64:
        e = u
    elif dt == np.float32:
        e = (1 + 2.0**-53) * (1 + u) - 1
    else:
        e = (1 + 2.0**-24) ** 2 * (1 + u) - 1
    sub = HALF_SUBNORMAL.get(dt, 0.0) * (1.0 if p == math.inf else n ** (1.0 / p))
    return e + norm_err + sub / max_norm


def rel(a, b):
    if a == b:
        return 0.0
    return abs(a - b) / abs(b)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: the engines the contract suites run on (tests/engines.py).  One process
#: runs one: the simulator where NUMBA_ENABLE_CUDASIM=1, a real GPU where
#: FUSEDCLIP_TEST_ENGINE=gpu (tests/test_gpu.py starts both), else the CPU.
ENGINES = ("cpu", "simulator", "gpu")


def engine_here() -> str:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "simulator"
    name = os.environ.get("FUSEDCLIP_TEST_ENGINE", "cpu")
    assert name in ENGINES, f"FUSEDCLIP_TEST_ENGINE={name!r}: one of {ENGINES}"
    return name


def pytest_generate_tests(metafunc):
    """A test that takes ``engine`` runs on this process's engine (its id says which)."""
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", [engine_here()], indirect=True)


@pytest.fixture
def engine(request):
    """The engine under test (tests/engines.py), parametrised by engine name."""
    from engines import make

    return make(request.param)


def pytest_collection_modifyitems(config, items):
    """``FUSEDCLIP_TEST_SHARD=i/n``: run every n-th collected test from the
    i-th (test_gpu runs the simulator suite as n such processes at once)."""
    shard = os.environ.get("FUSEDCLIP_TEST_SHARD")
    if not shard:
        return
    i, n = (int(v) for v in shard.split("/"))
    keep = items[i::n]
    kept = set(map(id, keep))
    config.hook.pytest_deselected(items=[t for t in items if id(t) not in kept])
    items[:] = keep


class DLPackOnly:
    """An object exposing nothing but the DLPack protocol over a numpy array."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()
