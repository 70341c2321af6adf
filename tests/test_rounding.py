"""The scale kernel against the *correctly rounded* product, not its own recipe.

``conftest.scaled`` reproduces the implementation's arithmetic (for 16-bit
types: s rounded to float32, the product rounded to float32, then to the
16-bit type; for float32: the product rounded to float64, then to float32),
so it proves the kernel does what it says, not that what it says is right.
Here every result is compared with x*s computed exactly and rounded once
(``conftest.correctly_rounded_product``).

The double rounding can only matter when the exact product lies within a
float32 (resp. float64) rounding error of a midpoint between two values of
the target type, so the result is always within 1 ulp of the correctly
rounded one, and equal almost everywhere.  Measured (all 65,536 bit patterns,
20 scales drawn log-uniformly in [1e-4, 100]): float16 99.992 % of the
elements equal (worst scale 99.91 %; the others are results at a tie after
the float32 rounding, mostly subnormals), bfloat16 and float32 (2**20 normal
values) 100 %.  Decimal scales such as 0.7 or 1e-3 are the bad case: x*0.7
for 11-bit x is often an exact midpoint, and float32(0.7) < 0.7 (float64(0.7)
for float32 data) pushes it to one side, so ~3 % of the elements differ by
1 ulp (see the test below).  Real scales are max_norm / norm, arbitrary.
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


@pytest.mark.parametrize("dt,min_equal", [(np.float16, 0.999), (ml_dtypes.bfloat16, 1.0)],
                         ids=["f16", "bf16"])
def test_16bit_within_one_ulp_of_correct_rounding_and_mostly_equal(dt, min_equal):
    x = all_patterns(dt)
    equal = total = 0
    for s in ARBITRARY + [1.0, 0.5, 2.0**-20, 1e5, 0.0]:
        y = kernel_scale(x, s)
        d = ulp_distance(y, correctly_rounded_product(x, s))
        assert d.max() <= 1, (s, d.max())
        equal += int((d == 0).sum())
        total += d.size
        # the oracle of the other tests is the implementation's recipe, bit for bit
        with np.errstate(all="ignore"):
            assert ulp_distance(y, scaled(x, s)).max() == 0
    assert equal / total >= min_equal, equal / total


@pytest.mark.parametrize("dt", [np.float16, ml_dtypes.bfloat16, np.float32], ids=["f16", "bf16", "f32"])
@pytest.mark.parametrize("s", [0.7, 1e-3, 3.0])
def test_decimal_scales_are_off_by_at_most_one_ulp(dt, s):
    x = all_patterns(dt) if dt != np.float32 else \
        np.random.default_rng(2).standard_normal(1 << 18).astype(np.float32)
    d = ulp_distance(kernel_scale(x, s), correctly_rounded_product(x, s))
    assert d.max() <= 1
    assert (d == 0).mean() >= 0.95


def test_float32_is_correctly_rounded_for_arbitrary_scales():
    x = np.random.default_rng(3).standard_normal(1 << 18).astype(np.float32)
    x[:4] = [np.float32(2.0**-149), -np.float32(3.4e38), 0.0, -0.0]
    for s in ARBITRARY[:4]:
        d = ulp_distance(kernel_scale(x, s), correctly_rounded_product(x, s))
        assert d.max() <= 1
        assert (d == 0).mean() >= 0.99999


def test_overflow_tie_goes_to_inf():
    # 21840 * 3 = 65520 = max + half an ulp: round-to-nearest-even gives inf
    x = np.array([21840.0, -21840.0, 21824.0], np.float16)
    want = correctly_rounded_product(x, 3.0)
    np.testing.assert_array_equal(want, [np.inf, -np.inf, 65472.0])
    np.testing.assert_array_equal(kernel_scale(x, 3.0), want)


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
       dt=st.sampled_from([ml_dtypes.bfloat16, np.float16]), s=st.sampled_from(ARBITRARY + [0.5, 3.0]))
def test_16bit_scale_loops_and_their_tails_follow_the_recipe(n, seed, dt, s):
    """The AVX-512 scale loops work on 32 values at a time: every length,
    so every tail, against the recipe bit for bit (all bit patterns)."""
    x = np.random.default_rng(seed).integers(0, 65536, n).astype(np.uint16).view(dt)
    with np.errstate(all="ignore"):
        assert ulp_distance(kernel_scale(x, s), scaled(x, s)).max(initial=0) == 0
