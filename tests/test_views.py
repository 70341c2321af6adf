"""Strided views: self-overlapping views and broadcasts (read, never written), and views of the
same memory (counted once, scaled once), with the cost of finding them."""
import math
import tracemalloc

import numpy as np
import pytest
from conftest import DTYPE_IDS, DTYPES, assert_untouched, ref_norm, scaled, snapshot
from helpers import WIDS, WRITERS, calls_during, good
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided

import fusedclip as fc


# ---------------------------------------------------------------- self-overlapping views and broadcasts
def _self_overlapping(base):
    f = base.itemsize
    return {
        "zero_stride": as_strided(base, (4, 3), (f, 0)),
        "sliding_window": as_strided(base, (5, 3), (f, f)),
        "stride_below_itemsize": as_strided(base, (3,), (f // 2,)),
        "2d_overlap": as_strided(base, (3, 3), (2 * f, f)),
        "reversed_window": as_strided(base[8:], (4, 3), (-f, f)),
    }


@pytest.mark.parametrize("name,call", WRITERS, ids=WIDS)
@pytest.mark.parametrize("kind", ["zero_stride", "sliding_window", "stride_below_itemsize",
                                  "2d_overlap", "reversed_window"])
def test_self_overlapping_view_is_rejected_before_any_write(name, call, kind):
    base = np.arange(1.0, 17.0) * 10
    view = _self_overlapping(base)[kind]
    assert view.flags.writeable
    bufs = good()
    snap = snapshot(bufs + [base])
    with pytest.raises(ValueError) as e:
        call(bufs + [view])
    assert "buffer 2" in str(e.value) and "overlap each other" in str(e.value)
    assert_untouched(bufs + [base], snap)


def test_self_overlap_is_reported_before_a_later_partial_overlap():
    base = np.arange(1.0, 17.0)
    a = np.arange(20.0)
    with pytest.raises(ValueError, match="buffer 1 is a view"):
        fc.clip_grad_norm_([a[:12], as_strided(base, (4, 3), (8, 0)), a[8:]], 1.0)


def _addresses(v):
    """Brute force: the byte offset of every element of a view (with repeats)."""
    off = np.zeros(1, np.int64)
    for n, s in zip(v.shape, v.strides):
        off = (off[:, None] + np.arange(n, dtype=np.int64) * s).ravel()
    return off


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(-3, 5)), min_size=1, max_size=3),
       st.sampled_from([np.float64, np.float32]))
def test_writers_reject_exactly_the_views_that_repeat_an_element(dims, dtype):
    shape = tuple(n for n, _ in dims)
    item = np.dtype(dtype).itemsize
    strides = tuple(s * item for _, s in dims)
    base = (np.arange(1.0, 201.0) * 3).astype(dtype)
    start = 100  # room for negative strides
    view = as_strided(base[start:], shape, strides)
    offs = _addresses(view)
    repeats = np.unique(offs).size < offs.size
    orig = base.copy()
    if repeats:
        with pytest.raises(ValueError, match="buffer 0 is a view"):
            fc.clip_grad_norm_([view], 1.0)
        np.testing.assert_array_equal(base, orig)
        return
    norm = fc.clip_grad_norm_([view], 1.0)
    assert norm == pytest.approx(ref_norm([as_strided(orig[start:], shape, strides)]), rel=1e-13)
    want = orig.copy()
    idx = start + offs // item
    want[idx] = scaled(orig[idx], 1.0 / norm)  # every element scaled exactly once
    np.testing.assert_array_equal(base, want)


def test_self_overlapping_view_can_still_be_measured():
    base = np.arange(1.0, 17.0)
    w = as_strided(base, (5, 3), (8, 8))
    assert fc.global_norm([np.ones(3), w]) == pytest.approx(ref_norm([np.ones(3), w]), rel=1e-14)


P_VALUES = [1.0, 2.0, 3.0, 0.5, math.inf]


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_broadcast_norm_is_the_norm_of_the_view(p, dtype, rng):
    cores = [(rng.standard_normal((3, 1, 5)) * 10).astype(dtype) for _ in range(3)]
    views = [
        np.broadcast_to(cores[0], (3, 7, 5)),                 # zero stride in the middle
        np.broadcast_to(cores[1][:, :, ::2], (2, 3, 4, 3)),   # strided core, leading zero stride
        np.broadcast_to(cores[2][0, 0, 1], (9,)),             # one element, nine times
    ]
    other = (rng.standard_normal(11) * 10).astype(dtype)
    bufs = [other] + views
    got = fc.global_norm(bufs, p)
    assert got == pytest.approx(ref_norm(bufs, p), rel=1e-12)
    for v in views:
        assert fc.global_norm(v, p) == pytest.approx(ref_norm([v], p), rel=1e-12)


def test_broadcast_is_not_copied():
    a = np.random.default_rng(1).standard_normal(64)
    view = np.broadcast_to(a, (1 << 16, 64))  # 32 MiB if staged
    tracemalloc.start()
    try:
        got = fc.global_norm(view)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert got == pytest.approx(ref_norm([a]) * 256, rel=1e-13)  # k = 2**16: sqrt(k) = 256


@pytest.mark.parametrize("p", P_VALUES)
def test_broadcast_of_2_to_40_elements(p):
    a = np.random.default_rng(2).standard_normal(1024) * 1e300  # squares would overflow
    view = np.broadcast_to(a, (1 << 30, 1024))
    k = 2.0 ** 30
    want = ref_norm([a], p) * (1.0 if p == math.inf else k ** (1.0 / p))
    got = fc.global_norm([view], p)
    assert math.isfinite(got) or not math.isfinite(want)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_broadcast_of_a_non_finite_value(bad):
    a = np.array([1.0, bad])
    got = fc.global_norm([np.ones(3), np.broadcast_to(a, (1 << 20, 2))])
    assert (math.isnan(got) if math.isnan(bad) else got == math.inf)


def test_failed_staging_is_a_memory_error_naming_the_buffer():
    # the view's elements span 512 MB past its base: lay out the address space
    # (1 GB reserved, never touched) so that no other buffer lies in that span,
    # else the overlap check, which comes first, rightly names the pair
    import mmap

    space = np.frombuffer(mmap.mmap(-1, 1 << 30), dtype=np.float64)
    bufs = [space[k * 64:k * 64 + 50] for k in range(2)]
    bufs[0][...] = good()[0]
    bufs[1][...] = good()[1]
    base = space[1 << 26:]
    base[:16] = np.arange(16.0)
    huge = as_strided(base, (1 << 25, 1 << 25), (8, 8), writeable=False)  # 2**53 bytes staged
    snap = snapshot(bufs)
    with pytest.raises(MemoryError) as e:
        fc.global_norm(bufs + [huge])
    assert "buffer 2" in str(e.value)
    assert_untouched(bufs, snap)


# ---------------------------------------------------------------- views of the same memory
def _same_cases():
    a = np.arange(1.0, 21.0)
    m = np.arange(1.0, 31.0).reshape(5, 6)
    return {
        "strided_reshape": (a, [a[::2], a[::2].reshape(2, 5)]),
        "reversed": (a, [a, a[::-1]]),
        "reversed_strided": (a, [a[::2][::-1], a[::2]]),
        "flipped_columns": (m, [m[:, ::-1], m]),
        "transposed_columns": (m, [m[:, ::2].T, m[:, ::2]]),
        "reshaped_reversed": (m, [m.reshape(30)[::-1], m.T]),
    }


@pytest.mark.parametrize("case", list(_same_cases()))
def test_views_of_the_same_elements_count_once_and_scale_once(case):
    base, views = _same_cases()[case]
    base *= 10
    orig = base.copy()
    want_norm = ref_norm([views[0]])
    assert fc.global_norm(views) == pytest.approx(want_norm, rel=1e-14)
    stats = fc.Clipper(views, 1.0)()
    assert stats.norm == pytest.approx(want_norm, rel=1e-14)
    want = orig.copy()
    # which elements the views address: flag them through the same view of a mask
    mbase, mviews = _same_cases()[case]
    mbase[...] = 0
    for mv in mviews:
        mv[...] = 1
    probe = mbase.astype(bool)
    want[probe] = scaled(orig[probe], 1.0 / stats.norm)
    np.testing.assert_array_equal(base, want)
    # both caller indices are reported for a non-finite value in the shared memory
    views[1][(0,) * views[1].ndim] = np.nan
    assert fc.Clipper(views, 1.0, nonfinite="skip")().nonfinite_buffers == (0, 1)


def test_other_dtype_on_the_same_memory_still_overlaps():
    a = np.arange(8.0)
    with pytest.raises(ValueError, match="buffers 0 and 1"):
        fc.global_norm([a[::-1], a.view(np.float32)[::-1]])


# views of one base, built the same way on an index array to know their elements
VIEW_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("slice"), st.integers(0, 3), st.integers(-3, 3).filter(bool)),
        st.tuples(st.just("T")),
        st.tuples(st.just("flat")),
    ),
    max_size=4,
)


def _apply(x, ops):
    for op in ops:
        if op[0] == "slice":
            _, start, step = op
            ax = start % x.ndim
            sl = [slice(None)] * x.ndim
            sl[ax] = slice(start, None, step) if step > 0 else slice(None, start or None, step)
            x = x[tuple(sl)]
        elif op[0] == "T":
            x = x.T
        elif op[0] == "flat" and x.size:
            y = x.reshape(-1)
            if np.shares_memory(y, x):
                x = y
    return x


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VIEW_OPS, VIEW_OPS, st.sampled_from([(24,), (4, 6), (2, 3, 4)]))
def test_same_memory_agrees_with_element_sets(ops1, ops2, shape):
    n = int(np.prod(shape))
    base = np.arange(1.0, n + 1).reshape(shape)
    ids = np.arange(n).reshape(shape)
    v1, v2 = _apply(base, ops1), _apply(base, ops2)
    s1, s2 = set(_apply(ids, ops1).ravel().tolist()), set(_apply(ids, ops2).ravel().tolist())
    if not s1 or not s2 or not (s1 & s2):
        assert fc.global_norm([v1, v2]) == pytest.approx(ref_norm([v1, v2]), rel=1e-14)
    elif s1 == s2:
        assert fc.global_norm([v1, v2]) == pytest.approx(ref_norm([v1]), rel=1e-14)
    else:
        with pytest.raises(ValueError, match="buffers 0 and 1 partially overlap"):
            fc.global_norm([v1, v2])


def test_dedupe_work_grows_linearly_with_the_references():
    a = np.random.default_rng(3).standard_normal((20, 30))
    aliases = [a, a.T, a.reshape(600), a[::-1]]

    def work(n):
        bufs = [aliases[i % 4] for i in range(n)]
        return calls_during(lambda: fc.global_norm(bufs))

    small, large = work(400), work(4000)
    # quadratic work (every suspect against every earlier extent) gives ~100x
    assert large < 15 * small + 1000, (small, large)


def test_shares_memory_runs_only_between_different_views(monkeypatch):
    a = np.random.default_rng(4).standard_normal(2000)
    count = 0
    real = np.shares_memory

    def counting(x, y, *args, **kw):
        nonlocal count
        count += 1
        return real(x, y, *args, **kw)

    monkeypatch.setattr(np, "shares_memory", counting)
    # 10,000 references to one array: no pair check at all
    norm = fc.global_norm([a] * 10_000)
    assert count == 0
    assert norm == pytest.approx(ref_norm([a]), rel=1e-14)
    # two interleaved views, 1,000 references each: one pair check
    bufs = [a[::2], a[1::2]] * 1000
    norm = fc.clip_grad_norm_(bufs, math.inf)
    assert count == 1
    assert norm == pytest.approx(ref_norm([a]), rel=1e-14)
