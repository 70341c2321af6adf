"""global_norm against exact references: dtypes, norms, sizes, strides, counts."""
import math

import ml_dtypes
import numpy as np
import pytest
from conftest import CHUNK, DTYPE_IDS, DTYPES, ref_norm, rel, scaled
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedclip as fc
from fusedclip.kernels import cpu

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


# ---------------------------------------------------------------- finite float64 gradients whose total leaves float64's range
# 7e151**2 = 4.9e303; 32,768 of them = 1.6e308 (finite); 65,536 overflow.
BIG = 7e151


def chunk_sum_is_finite(x, p):
    """The premise: every chunk's own plain sum is finite."""
    for k in range(0, x.size, CHUNK):
        c = x[k:k + CHUNK].astype(np.float64)
        assert np.isfinite(np.sum(np.abs(c) ** p))


@pytest.mark.parametrize("layout", ["chunks", "buffers"])
def test_l2_total_overflow_is_finite_and_clips(layout):
    if layout == "chunks":
        bufs = [np.full(2 * CHUNK, BIG)]
    else:
        bufs = [np.full(30000, BIG) for _ in range(3)]
    for b in bufs:
        chunk_sum_is_finite(b, 2)
    assert not np.isfinite(sum(float(np.sum(b * b)) for b in bufs))  # the total overflows
    orig = [b.copy() for b in bufs]
    want = ref_norm(orig)
    assert math.isfinite(want)
    assert rel(fc.global_norm(bufs), want) <= 1e-12
    stats = fc.Clipper(bufs, 1.0)()
    assert stats.finite and stats.clipped
    assert rel(stats.norm, want) <= 1e-12
    assert rel(stats.scale, 1.0 / want) <= 1e-12
    for b, o in zip(bufs, orig):
        np.testing.assert_array_equal(b, scaled(o, stats.scale))
        assert np.all(b > 0)  # not zeroed
    assert rel(ref_norm(bufs), 1.0) <= 1e-12


def test_function_api_and_thread_counts_agree_bitwise():
    x = np.full(6 * CHUNK, BIG)  # > PARALLEL_MIN: the parallel path
    assert x.size >= cpu.PARALLEL_MIN
    norms = {fc.global_norm([x], num_threads=t) for t in (1, 2, 3, 5)}
    assert len(norms) == 1
    assert rel(norms.pop(), ref_norm([x])) <= 1e-12
    y = x.copy()
    n = fc.clip_grad_norm_([y], 2.0, num_threads=2)
    assert rel(n, ref_norm([x])) <= 1e-12 and rel(ref_norm([y]), 2.0) <= 1e-12


def test_mixed_rescued_and_plain_chunks():
    # chunk 0 overflows inside itself (1e200 squared) and is rescued; the
    # others are plain partials whose sum overflows
    x = np.full(4 * CHUNK, BIG)
    x[:CHUNK] = 1e155
    x[5] = 1e200
    want = ref_norm([x])
    assert rel(fc.global_norm([x]), want) <= 1e-12
    s = fc.Clipper([x], 3.0)()
    assert s.finite and rel(s.norm, want) <= 1e-12 and rel(ref_norm([x]), 3.0) <= 1e-12


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_norm_beyond_float64_still_clips_correctly(p):
    """The norm itself exceeds 1.8e308 (inf), yet every value is finite: the
    clip must still scale by max_norm / norm, not by max_norm / inf = 0."""
    v = 4e303 if p == 1.0 else 1.7e308
    x = np.full(2 * CHUNK, v)
    if p == 1.0:
        chunk_sum_is_finite(x, 1)
    s = fc.Clipper([x], 1.0, p)()
    assert s.norm == math.inf and s.finite and s.clipped
    assert 0.0 < s.scale < 1e-300
    # the result has norm max_norm: every element is 1 / n^(1/p)
    expect = 1.0 / (x.size ** (1.0 / p))
    assert np.all(x > 0)
    assert np.max(np.abs(x / expect - 1.0)) <= 1e-12


@pytest.mark.parametrize("p", [3.0, 0.75, math.inf])
def test_other_norms_across_chunks(p):
    x = np.full(3 * CHUNK, BIG)
    x[::7] = 1e300
    want = ref_norm([x], p)
    got = fc.global_norm([x], p)
    if math.isinf(want):
        assert got == math.inf
    else:
        assert rel(got, want) <= 1e-12


@settings(max_examples=40, deadline=None)
@given(
    exps=st.lists(st.floats(140.0, 154.0), min_size=1, max_size=4),
    sizes=st.lists(st.integers(1, 3 * CHUNK), min_size=1, max_size=4),
    p=st.sampled_from([1.0, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_huge_finite_values_property(exps, sizes, p, seed):
    rng = np.random.default_rng(seed)
    bufs = [rng.uniform(-1, 1, n) * 10.0 ** e for n, e in zip(sizes, exps)]
    want = ref_norm(bufs, p)
    got = fc.global_norm(bufs, p)
    if not math.isfinite(want):
        assert got == math.inf
        return
    assert rel(got, want) <= 1e-12
    orig = [b.copy() for b in bufs]
    s = fc.Clipper(bufs, 1.0, p)()
    assert s.finite
    if s.clipped:
        for b, o in zip(bufs, orig):
            np.testing.assert_array_equal(b, scaled(o, s.scale))
        assert rel(ref_norm(bufs, p), 1.0) <= 1e-12
