"""global_norm against exact references: dtypes, norms, sizes, strides, counts."""
import math

import ml_dtypes
import numpy as np
import pytest

import fusedclip as fc
from conftest import CHUNK, DTYPE_IDS, DTYPES, ref_norm, rel

P_FAST = [1.0, 2.0, math.inf]
P_ALL = P_FAST + [0.5, 1.5, 3.0, 7.0]
# float16/bfloat16 values are exact in float64, so every dtype is held to the
# same bound; general p goes through pow(), hence the looser bound.
TOL = {1.0: 1e-13, 2.0: 1e-13, math.inf: 0.0}


def tol(p):
    return TOL.get(p, 1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", P_ALL)
def test_norm_matches_reference(dtype, p, rng):
    bufs = [rng.standard_normal(n).astype(dtype) for n in (1, 7, 1000, CHUNK + 3)]
    assert rel(fc.global_norm(bufs, p), ref_norm(bufs, p)) <= tol(p)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1, 5 * CHUNK - 7])
def test_sizes_around_the_chunk_boundary(dtype, n, rng):
    x = rng.standard_normal(n).astype(dtype)
    for p in P_FAST:
        assert rel(fc.global_norm(x, p), ref_norm([x], p)) <= tol(p)


def test_no_buffers_is_zero():
    assert fc.global_norm([]) == 0.0
    assert fc.global_norm(()) == 0.0
    assert fc.global_norm([np.zeros(0, np.float32), np.zeros((3, 0))]) == 0.0


@pytest.mark.parametrize("p", P_ALL)
def test_all_zero_values(p):
    assert fc.global_norm([np.zeros(5), np.zeros(CHUNK + 1, np.float32)], p) == 0.0


def test_one_buffer_and_a_bare_array(rng):
    x = rng.standard_normal((30, 40)).astype(np.float32)
    assert fc.global_norm(x) == fc.global_norm([x])  # agreement is the point here
    assert rel(fc.global_norm(x), ref_norm([x])) <= 1e-13


def test_ten_thousand_buffers(rng):
    bufs = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(0, 300, 10_000)]
    for p in P_FAST:
        assert rel(fc.global_norm(bufs, p), ref_norm(bufs, p)) <= tol(p)


def test_mixed_dtypes_in_one_list(rng):
    bufs = [rng.standard_normal(n * 100).astype(dt) for n, dt in enumerate(DTYPES, 1)]
    for p in P_ALL:
        assert rel(fc.global_norm(bufs, p), ref_norm(bufs, p)) <= tol(p)


def test_generators_tuples_and_foreign_arrays(rng):
    x = rng.standard_normal(100)
    want = fc.global_norm([x])
    assert rel(want, ref_norm([x])) <= 1e-13  # the forms below must agree with a correct value
    assert fc.global_norm(a for a in [x]) == want
    assert fc.global_norm((x,)) == want
    assert fc.global_norm([memoryview(x)]) == want

    class Iface:  # an object exposing only __array_interface__
        def __init__(self, a):
            self.__array_interface__ = a.__array_interface__
            self._a = a

    assert fc.global_norm([Iface(x)]) == want


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_and_odd_layouts(dtype, rng):
    def base():
        return rng.standard_normal((64, 130)).astype(dtype)

    views = [base()[::2], base()[:, ::3], base()[::-1, 5:70], base().T, base()[3:40:5, ::-7], base()[0]]
    for p in P_FAST + [3.0]:
        assert rel(fc.global_norm(views, p), ref_norm(views, p)) <= tol(p)


def test_misaligned_buffer(rng):
    raw = np.zeros(4 * 1001, dtype=np.uint8)
    x = raw[1:1 + 4 * 1000].view(np.float32)
    assert not x.flags.aligned
    x[...] = rng.standard_normal(1000)
    assert rel(fc.global_norm(x), ref_norm([x])) <= 1e-13


def test_read_only_buffers_are_measured(rng):
    x = rng.standard_normal(100)
    x.flags.writeable = False
    assert rel(fc.global_norm([x]), ref_norm([x])) <= 1e-13


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [50.0, 5000.0, 1e6, 1e300, 0.01])
def test_extreme_p(dtype, p, rng):
    # large p tends to the max norm; every term is taken relative to the max,
    # so nothing underflows to a zero norm
    bufs = [rng.standard_normal(n).astype(dtype) for n in (3, CHUNK + 9)]
    want = ref_norm(bufs, p)
    got = fc.global_norm(bufs, p)
    assert rel(got, want) <= 1e-12 or (want == math.inf and got == math.inf)


# ---------------------------------------------------------------- range
@pytest.mark.parametrize(
    "dtype,value",
    [(np.float32, 1e20), (np.float32, 3e38), (np.float64, 1e200), (np.float64, 1e300),
     (np.float64, 1e-200), (np.float64, 5e-324), (ml_dtypes.bfloat16, 1e38), (np.float16, 6e4),
     (np.float16, 6e-8)],
)
@pytest.mark.parametrize("p", P_ALL)
def test_finite_but_huge_or_tiny(dtype, value, p, rng):
    x = (rng.uniform(0.5, 1.0, 3 * CHUNK) * value).astype(dtype)
    got = fc.global_norm([x, np.ones(10, dtype)], p)
    want = ref_norm([x, np.ones(10, dtype)], p)
    # only a quasi-norm (p < 1) of 1e300s can exceed float64's range itself
    assert math.isfinite(got) or (p < 1 and want == math.inf)
    assert rel(got, want) <= tol(p)


def test_huge_chunk_beside_ordinary_chunks(rng):
    bufs = [rng.standard_normal(CHUNK), np.full(5, 1e200), rng.standard_normal(10) * 1e-300]
    for p in P_ALL:
        assert rel(fc.global_norm(bufs, p), ref_norm(bufs, p)) <= tol(p)


# ---------------------------------------------------------------- accuracy bars
@pytest.mark.parametrize("dtype,bound", [(np.float32, 1e-9), (np.float64, 1e-12)])
def test_accuracy_bar_on_16m_elements(dtype, bound):
    x = np.random.default_rng(7).standard_normal(16 * 2**20).astype(dtype)
    # exact reference: float32 squares are exact in float64 and fsum rounds once
    assert rel(fc.global_norm(x), ref_norm([x])) <= bound
