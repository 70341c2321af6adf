"""The 16-bit sums of squares (kernels/simd.h, "16-bit sums of squares from
the bits") against math.fsum: the float64 lane values are built from the bits
(w = |x| * 2^-384), zeros and bfloat16 subnormals are handled by checks on a
chunk's sum, inf/NaN by the usual classify.  Each check below has an input
that the fast path alone gets wrong."""
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedclip as fc
from fusedclip.kernels import cpu

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALF = [BF16, F16]
IDS = ["bf16", "f16"]
CHUNK = cpu.CHUNK


def exact(x) -> float:
    v = np.asarray(x).astype(np.float64).ravel()  # 16-bit squares are exact in float64
    return math.sqrt(math.fsum((v * v).tolist()))


def assert_close(got: float, want: float, tol: float = 1e-12) -> None:
    assert math.isfinite(got)
    assert abs(got - want) <= tol * want, (got, want, abs(got - want) / want if want else got)


@pytest.mark.parametrize("dt", HALF, ids=IDS)
def test_zero_chunks_are_exactly_zero(dt):
    # a zero's lane value is 2^-511, not 0: a chunk of zeros must still give 0
    x = np.zeros(2 * CHUNK + 5, dt)
    x[CHUNK + 7] = -0.0
    assert fc.global_norm([x]) == 0.0
    assert fc.buffer_norms([x, np.zeros(3, dt), np.zeros(CHUNK, dt)]).tolist() == [0.0, 0.0, 0.0]
    x[2 * CHUNK + 1] = 3.0  # one value in the last chunk: its norm, exactly
    assert fc.global_norm([x]) == 3.0
    assert fc.clip_grad_norm_([x], 10.0) == 3.0


@pytest.mark.parametrize("n", [5, 64, CHUNK, CHUNK + 100])
def test_tiny_bfloat16_chunks_are_summed_exactly(n):
    # zeros beside the smallest normals: by the fast path alone each zero
    # would add a quarter of a 2^-126 value's square
    x = np.zeros(n, BF16)
    x[::2] = 2.0 ** -126
    assert_close(fc.global_norm([x]), exact(x))
    # subnormals (exponent field 0, like zero) with zeros and small normals
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 0x180, n).astype(np.uint16)  # subnormals and exponents 1..2
    bits[rng.random(n) < 0.3] = 0
    y = bits.view(BF16)
    assert_close(fc.global_norm([y]), exact(y))
    # one tiny value among zeros: exactly that value
    z = np.zeros(n, BF16)
    z[n // 2] = 2.0 ** -110
    assert fc.global_norm([z]) == 2.0 ** -110


def test_bfloat16_squares_beyond_float32_and_near_the_top_of_float64():
    # bfloat16 has float32's range: squares up to 2^256, and a sum over a
    # chunk up to 2^271; none of it may overflow or lose bits
    big = float(ml_dtypes.finfo(BF16).max)
    x = np.full(3 * CHUNK, big, BF16)
    x[::3] = 2.0 ** 100
    assert_close(fc.global_norm([x]), exact(x))
    assert_close(fc.global_norm([x[:7]]), exact(x[:7]))
    # the clip scale too: norm ~ 2^136, clipped to 1
    fc.clip_grad_norm_([x], 1.0)
    assert_close(exact(x), 1.0, 2e-2)


@pytest.mark.parametrize("dt", HALF, ids=IDS)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [0, CHUNK - 1, CHUNK + 31, 2 * CHUNK + 2])
def test_inf_and_nan_are_found_in_any_position(dt, bad, where):
    x = np.full(2 * CHUNK + 3, 0.5, dt)
    x[where] = bad
    got = fc.global_norm([x])
    assert math.isnan(got) if math.isnan(bad) else got == math.inf
    with pytest.raises(fc.NonFiniteError):
        fc.clip_grad_norm_([x], 1.0)
    assert np.count_nonzero(x == dt.type(0.5)) == x.size - 1  # nothing written


@pytest.mark.parametrize("dt", HALF, ids=IDS)
def test_every_finite_bit_pattern(dt):
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dt)
    x = x[np.isfinite(x.astype(np.float32))]
    assert_close(fc.global_norm([x]), exact(x))
    lo = x[np.abs(x.astype(np.float32)) < 2.0 ** -100] if dt == BF16 else x[np.abs(x.astype(np.float32)) < 1e-3]
    assert_close(fc.global_norm([lo]), exact(lo))


@settings(max_examples=120, deadline=None)
@given(dt=st.sampled_from(HALF), n=st.integers(0, 3 * CHUNK), seed=st.integers(0, 2**32 - 1),
       zeros=st.floats(0, 1), top=st.integers(1, 0x7f7f), nt=st.sampled_from([1, 2]))
def test_random_bit_patterns_match_fsum_on_any_thread_count(dt, n, seed, zeros, top, nt):
    """Raw bit patterns below `top` (any exponent spread, bfloat16 subnormals
    included), a fraction of zeros, lengths across chunk and block tails; the
    parallel path for n above PARALLEL_MIN (two threads here)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, min(top, 0x7bff if dt == F16 else 0x7f7f) + 1, n).astype(np.uint16)
    bits |= (rng.random(n) < 0.5).astype(np.uint16) << 15
    bits[rng.random(n) < zeros] = 0
    x = bits.view(dt)
    got = fc.global_norm([x], num_threads=nt)
    want = exact(x)
    if want == 0.0:
        assert got == 0.0
    else:
        assert_close(got, want)
    assert fc.global_norm([x], num_threads=3 - nt) == got  # the same bits on 1 and 2 threads
