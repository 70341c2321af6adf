"""clip_grad_value_ (element-wise clipping, Mikolov; Goodfellow et al. §10.11.1)."""
import math

import ml_dtypes
import numpy as np
import pytest

import fusedclip as fc
from conftest import DTYPE_IDS, DTYPES


def reference(x, c):
    """Clamp in float64 and round to the dtype; NaN stays NaN."""
    y = x.astype(np.float64)
    c = float(np.asarray(c, dtype=x.dtype).astype(np.float64)) if x.dtype != np.float64 else c
    return np.where(np.isnan(y), y, np.clip(y, -c, c)).astype(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("c", [0.0, 0.3, 1.0, 1e30, math.inf])
def test_clamp_matches_reference(dtype, c, rng):
    if c > float(ml_dtypes.finfo(dtype).max) and c != math.inf:
        c = float(ml_dtypes.finfo(dtype).max)
    x = (rng.standard_normal(100_003) * 2).astype(dtype)
    x[[0, 1, 2, 3]] = [np.inf, -np.inf, np.nan, -0.0]
    strided = (rng.standard_normal((50, 40)) * 2).astype(dtype)
    want = [reference(x, c), reference(strided[::3, ::-2], c)]
    before_rest = strided.copy()
    fc.clip_grad_value_([x, strided[::3, ::-2]], c)
    f64 = lambda a: a.astype(np.float64)  # exact; makes NaN comparable for every dtype
    np.testing.assert_array_equal(f64(x), f64(want[0]))
    np.testing.assert_array_equal(f64(strided[::3, ::-2]), f64(want[1]))
    before_rest[::3, ::-2] = want[1]
    np.testing.assert_array_equal(f64(strided), f64(before_rest))


def test_inf_becomes_clip_value_and_nan_stays():
    x = np.array([np.inf, -np.inf, np.nan, 0.5, -7.0], np.float32)
    fc.clip_grad_value_(x, 1.0)
    np.testing.assert_array_equal(x, [1.0, -1.0, np.nan, 0.5, -1.0])


def test_returns_none_and_accepts_empty():
    assert fc.clip_grad_value_([], 1.0) is None
    assert fc.clip_grad_value_(np.zeros(0), 1.0) is None
