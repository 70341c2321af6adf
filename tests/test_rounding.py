"""The scale kernel is correctly rounded: x*s computed exactly and rounded
once, to nearest even, to x's type, for every x and s
(``conftest.correctly_rounded_product``, an exact reference through
Fractions where the float64 product is ambiguous).

The kernel's fast products (float64 for float32 data, float32 with s rounded
to float32 for the 16-bit types) are checked lane by lane; a lane they cannot
prove (near a midpoint of the type, or out of range) takes the exact path
(products rounded to odd: kernels/simd.h).  Before, the recipe was the
answer: 16-bit data were scaled by s rounded to float32, so a scale below
float32's range zeroed finite bfloat16 gradients,
and double roundings left ~3 % of the elements 1 ulp off for decimal scales.
"""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import correctly_rounded_product, scaled, ulp_distance
from fusedclip.kernels import cpu

CODES = {np.dtype(np.float32): 1, np.dtype(ml_dtypes.bfloat16): 2, np.dtype(np.float16): 3}
ARBITRARY = [float(v) for v in 10 ** np.random.default_rng(1).uniform(-4, 2, 12)]


def kernel_scale(x, s):
    y = x.copy()
    cpu.Table([y.ctypes.data], [y.size], [CODES[x.dtype]]).scale(s)
    return y


def all_patterns(dt):
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dt)


@pytest.mark.parametrize("dt", [np.float16, ml_dtypes.bfloat16], ids=["f16", "bf16"])
def test_16bit_every_pattern_is_correctly_rounded(dt):
    x = all_patterns(dt)
    for s in ARBITRARY + [1.0, 0.5, 2.0**-20, 1e5, 0.0, 0.7, 1e-3, 3.0, 2.0**-126, 3e-39, 1e-45, 2.0**-149,
                          5e-324, 1e-300, 3.5e38, 1e300]:
        with np.errstate(all="ignore"):
            y, want = kernel_scale(x, s), correctly_rounded_product(x, s)
        d = ulp_distance(y, want)
        assert d.max() == 0, (s, int(np.argmax(d)), x[np.argmax(d)], y[np.argmax(d)], want[np.argmax(d)])


@pytest.mark.parametrize("dt", [np.float16, ml_dtypes.bfloat16, np.float32], ids=["f16", "bf16", "f32"])
@pytest.mark.parametrize("s", [0.7, 1e-3, 3.0])
def test_decimal_scales_are_correctly_rounded(dt, s):
    """Decimal scales were the bad case of the old recipe: x*0.7 for 11-bit x
    is often an exact midpoint, pushed to one side by float32(0.7)."""
    x = all_patterns(dt) if dt != np.float32 else \
        np.random.default_rng(2).standard_normal(1 << 18).astype(np.float32)
    with np.errstate(all="ignore"):
        assert ulp_distance(kernel_scale(x, s), correctly_rounded_product(x, s)).max() == 0


def test_float32_is_correctly_rounded_for_arbitrary_scales():
    x = np.random.default_rng(3).standard_normal(1 << 18).astype(np.float32)
    x[:4] = [np.float32(2.0**-149), -np.float32(3.4e38), 0.0, -0.0]
    for s in ARBITRARY[:4] + [2.0**-140, 1e-45, 3e38]:
        with np.errstate(all="ignore"):
            d = ulp_distance(kernel_scale(x, s), correctly_rounded_product(x, s))
        assert d.max() == 0, s


def near_midpoints(dt, n, rng):
    """(x, s) pairs whose exact product lies within a few float64 ulps of a
    midpoint of dt (the hard cases): x random in dt, s = m / x for a midpoint
    m, nudged by a few float64 ulps either way (or not at all)."""
    info = ml_dtypes.finfo(dt)
    nbits = info.nmant  # explicit mantissa bits
    lo, hi = (-12, 12) if np.dtype(dt) == np.float16 else (-20, 20)
    x = rng.uniform(1, 2, n).astype(dt).astype(np.float64) * 2.0 ** rng.integers(lo, hi, n)
    y = rng.uniform(1, 2, n) * 2.0 ** rng.integers(lo, hi, n)
    e = np.floor(np.log2(y))
    step = 2.0 ** (e - nbits)  # dt's spacing at y
    m = (np.floor(y / step) + 0.5) * step  # a midpoint
    s = m / x
    s = s * (1 + rng.integers(-4, 5, n) * 2.0 ** -53)
    return x.astype(dt), s


@pytest.mark.parametrize("dt", [np.float16, ml_dtypes.bfloat16, np.float32], ids=["f16", "bf16", "f32"])
def test_products_next_to_a_midpoint_are_correctly_rounded(dt):
    rng = np.random.default_rng(7)
    xs, ss = near_midpoints(dt, 3000, rng)
    for x, s in zip(xs, ss):
        a = np.full(37, x, dt)  # one block's tail and lanes alike
        want = correctly_rounded_product(a[:1], float(s))[0]
        got = kernel_scale(a, float(s))
        assert (got.view(np.uint16 if a.itemsize == 2 else np.uint32) ==
                np.array([want], dt).view(np.uint16 if a.itemsize == 2 else np.uint32)[0]).all(), (x, s)


def test_finite_bfloat16_gradients_are_not_zeroed_by_a_tiny_scale():
    """The reported defect: bfloat16 values near 3e38 clipped to max_norm
    1e-6 scale by ~1e-45, below float32's range: the old recipe wrote zeros,
    the exact products are representable (~3e-8)."""
    import fusedclip as fc

    for dt in (ml_dtypes.bfloat16,):
        big = 3.0e38
        g = [np.full(1000, big, dt), np.full(10, -big / 3, dt)]
        x0 = [a.copy() for a in g]
        norm = fc.clip_grad_norm_(g, 1e-6)
        s = 1e-6 / norm
        for a, b in zip(g, x0):
            assert a.any() and a.tobytes() == correctly_rounded_product(b, s).tobytes()
        after = fc.global_norm(g)
        assert abs(after - 1e-6) <= 1e-6 * 2.0 ** -7, after  # each value within half a bf16 ulp


@settings(max_examples=300, deadline=None)
@given(n=st.one_of(st.integers(0, 300), st.integers(8000, 20000)), seed=st.integers(0, 2**32 - 1),
       e=st.integers(-40, 40), special=st.booleans(),
       dt=st.sampled_from([np.float32, ml_dtypes.bfloat16, np.float16]))
def test_the_avx512_ssq_loops_are_the_lane_loops_bit_for_bit(n, seed, e, special, dt):
    """kernels/simd.h's intrinsic sums of squares (picked at load time where
    the CPU has AVX-512) give the portable lane loops' bits, tails included:
    the same lanes, the same lane values (for the 16-bit types, the bit
    transform) and the same fold.  Lengths past 8192 run both halves of the
    block loop (prefetching inside the chunk, then into the next one);
    `special` mixes in zeros, subnormals, inf and NaN."""
    from fusedclip.kernels import cpu

    if "x86-64-v4" in cpu.info()["simd_selected"]:  # the intrinsics are what runs here
        assert cpu.info()["l2_float32_bfloat16"] == "AVX-512 intrinsics"
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):  # float16 overflows to inf for large e: fine
        a = (rng.standard_normal(n) * 2.0 ** e).astype(dt)
    if special and n:
        k = rng.integers(0, n, max(1, n // 10))
        a[k] = np.array([0.0, -0.0, np.inf, np.nan, 1e-45 if dt == np.float32 else 2.0 ** -130], dt)[k % 5]
    picked, generic = cpu._ssq_paths(a)
    assert picked.hex() == generic.hex() or (np.isnan(picked) and np.isnan(generic))


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 200), seed=st.integers(0, 2**32 - 1),
       dt=st.sampled_from([ml_dtypes.bfloat16, np.float16, np.float32]),
       s=st.sampled_from(ARBITRARY + [0.5, 3.0, 1e-45, 2.0**-130]))
def test_scale_loops_and_their_tails_are_correctly_rounded(n, seed, dt, s):
    """The scale loops work on blocks of 32 values: every length, so every
    tail, bit patterns of every kind (NaN, inf, subnormals included)."""
    w = np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64)
    x = (w.astype(np.uint16) if np.dtype(dt).itemsize == 2 else w.astype(np.uint32)).view(dt)
    with np.errstate(all="ignore"):
        assert ulp_distance(kernel_scale(x, s), scaled(x, s)).max(initial=0) == 0


@pytest.mark.parametrize("dt", [np.float16, ml_dtypes.bfloat16, np.float32], ids=["f16", "bf16", "f32"])
def test_negative_zero_keeps_its_sign(dt):
    """x*s for x = -0 is -0 (s > 0) and +0 (s < 0).  The 16-bit fast product
    x*c + x*d gave +0 for -0 wherever d = s - float32(s) is negative (s =
    1e-3): -0 + +0 is +0.  Blocks of -0 alone, so no neighbour's unproven
    lane sends the block to the exact path."""
    x = np.full(256, -0.0, dt)
    for s in [1e-3, 0.7, 0.3, 0.99, 1.0, 0.5, 2.0**-20, 1e-30, 3.0, -1e-3, -0.7]:
        y = kernel_scale(x, s)
        want = np.signbit(np.float64(s)) ^ True
        assert (np.signbit(y.astype(np.float32)) == want).all(), s
        assert (y.astype(np.float32) == 0).all(), s


def test_the_generic_scale_loops_are_correctly_rounded_too():
    """On an AVX-512 CPU the scale runs the intrinsic loops; the generic ones
    (AVX2 and older CPUs) are run here with FUSEDCLIP_GENERIC_SCALE=1, in a
    process of their own (the choice is made when the module loads)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, FUSEDCLIP_GENERIC_SCALE="1")
    probe = subprocess.run([sys.executable, "-c", "from fusedclip.kernels import cpu; print(cpu.info()['scale'])"],
                           env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "checked lane loops (target clones)", probe.stdout + probe.stderr
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_rounding.py", "tests/test_conversions.py",
                        "-k", "not generic_scale_loops"],
                       cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert " passed" in r.stdout
