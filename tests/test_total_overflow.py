"""Finite float64 gradients whose *total* leaves float64's range (issue 7, defect 1).

Each chunk's partial sum is finite, so no chunk takes the in-chunk rescue;
only the sum over chunks (or buffers) overflows.  Before the fix the combine
returned inf with finite=True and the clip multiplied every element by 0.
The tests here build exactly that situation (the values are chosen so that a
chunk of 32,768 squares stays below 1.8e308 while the whole does not) and
check the norm against the exact reference and every written element
against the scale rule.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fusedclip as fc
from fusedclip.kernels import cpu
from conftest import CHUNK, ref_norm, rel, scaled

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
