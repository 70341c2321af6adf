"""Shared references for the tests: exact norms via math.fsum, dtype helpers."""
import math

import ml_dtypes
import numpy as np
import pytest

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
    """What the scale kernel must produce: one rounding from the compute type."""
    dt = x.dtype
    if dt == np.float64:
        return x * s
    if dt == np.float32:
        return (x.astype(np.float64) * s).astype(np.float32)
    return (x.astype(np.float32) * np.float32(s)).astype(dt)


def rel(a, b):
    if a == b:
        return 0.0
    return abs(a - b) / abs(b)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
