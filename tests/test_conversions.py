"""float16 and bfloat16 conversions, exhaustively over all 65,536 bit patterns.

The kernels convert 16-bit values by bit manipulation (bfloat16; float16 on
CPUs without F16C) or with F16C/AVX-512 instructions.  Loading must be exact;
storing must round to nearest even, overflow to inf, and keep NaN a NaN.
Scaling stores the exact product x*s rounded once (not x*float32(s)).
"""
import ml_dtypes
import numpy as np
import pytest

from fusedclip.kernels import cpu

from conftest import scaled

CODES = {np.dtype(np.float16): 3, np.dtype(ml_dtypes.bfloat16): 2}
DT = [np.float16, ml_dtypes.bfloat16]


def table(x):
    return cpu.Table([x.ctypes.data], [x.size], [CODES[x.dtype]])


def all_values(dt):
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dt)


def f64(a):
    with np.errstate(invalid="ignore"):  # bfloat16 signalling NaNs
        return a.astype(np.float64)


def same(a, b):
    a64, b64 = f64(a), f64(b)
    return (a.view(np.uint16) == b.view(np.uint16)) | (np.isnan(a64) & np.isnan(b64))


@pytest.mark.parametrize("dt", DT, ids=["f16", "bf16"])
def test_load_is_exact_for_every_pattern(dt):
    x = all_values(dt)
    finite = x[np.isfinite(f64(x))]
    # the L1 norm of one value at a time would be slow: use the max instead,
    # over chunks that each hold a single value
    t = cpu.Table(finite.ctypes.data + 2 * np.arange(finite.size), [1] * finite.size,
                  [CODES[np.dtype(dt)]] * finite.size)
    t.norm(cpu.NORM_INF)
    np.testing.assert_array_equal(t.partials["s"], np.abs(f64(finite)))


@pytest.mark.parametrize("dt", DT, ids=["f16", "bf16"])
def test_roundtrip_through_clamp_keeps_every_pattern(dt):
    x = all_values(dt)
    y = x.copy()
    table(y).clamp(np.inf)
    assert same(y, x).all()


@pytest.mark.parametrize("dt", DT, ids=["f16", "bf16"])
@pytest.mark.parametrize("s", [1.0, 0.5, 3.0, 1e-3, 1e5, 2.0**-20, 0.0, 0.7])
def test_store_rounds_to_nearest_even(dt, s):
    x = all_values(dt)
    y = x.copy()
    table(y).scale(s)
    # the exact product x*s, rounded once to nearest even (0.7 and 1e-3 are
    # not float32 numbers: x*float32(s) would differ in about 1 value in 40)
    assert same(y, scaled(x, s)).all()
