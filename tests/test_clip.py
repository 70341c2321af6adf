"""clip_grad_norm_ and Clipper: what is written, what is not, and duplicates."""
import math

import ml_dtypes
import numpy as np
import pytest

import fusedclip as fc
from conftest import (CHUNK, DTYPE_IDS, DTYPES, after_clip_bound, assert_untouched, ref_norm, rel,
                      scaled, snapshot)


def after(dtype, bufs, p):
    """After clipping, the norm equals max_norm up to the rounding of the
    stored values: conftest.after_clip_bound derives it (float16 2**-11 and
    bfloat16 2**-8 per element, plus the float32 steps, plus float16
    subnormals).  float64 keeps its tighter empirical 1e-14."""
    n = sum(b.size for b in bufs)
    return min(1e-14, after_clip_bound(dtype, n, p)) if np.dtype(dtype) == np.float64 \
        else after_clip_bound(dtype, n, p)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 3.0])
def test_clip_scales_every_element_exactly(dtype, p, rng):
    bufs = [(rng.standard_normal(n) * 10).astype(dtype) for n in (3, 999, CHUNK + 5)]
    before = [b.copy() for b in bufs]
    norm = fc.clip_grad_norm_(bufs, 1.0, p)
    assert norm == fc.global_norm(before, p)  # consistency, bit for bit
    assert rel(norm, ref_norm(before, p)) <= (0.0 if p == math.inf else 1e-13)  # correctness
    s = 1.0 / norm
    for b, o in zip(bufs, before):
        np.testing.assert_array_equal(b, scaled(o, s))
    assert rel(ref_norm(bufs, p), 1.0) <= after(dtype, bufs, p)


def test_clipper_stats_when_clipping(rng):
    g = [rng.standard_normal(100) * 5]
    n0 = fc.global_norm(g)
    assert rel(n0, ref_norm(g)) <= 1e-13
    before = g[0].copy()
    stats = fc.Clipper(g, 2.0)()
    assert stats == fc.ClipStats(n0, 2.0 / n0, True, True, 2.0, ())
    np.testing.assert_array_equal(g[0], before * (2.0 / n0))


@pytest.mark.parametrize("max_norm", [100.0, math.inf])
def test_no_clip_reports_and_keeps_values(max_norm, rng):
    g = [rng.standard_normal(100)]
    snap = snapshot(g)
    stats = fc.Clipper(g, max_norm)()
    assert stats.clipped is False and stats.scale == 1.0 and stats.finite
    assert_untouched(g, snap)


def test_norm_equal_to_threshold_is_not_clipped():
    g = [np.array([3.0, 4.0])]
    stats = fc.Clipper(g, 5.0)()
    assert stats.norm == 5.0 and not stats.clipped


def test_clipper_reads_current_values_each_call(rng):
    g = [np.zeros(10)]
    c = fc.Clipper(g, 1.0)
    assert c().norm == 0.0
    g[0][:] = 2.0
    stats = c()
    assert stats.clipped and rel(stats.norm, ref_norm([np.full(10, 2.0)])) <= 1e-15
    assert rel(ref_norm(g), 1.0) <= after(np.float64, g, 2.0)


def test_same_memory_is_scaled_once(rng):
    a = rng.standard_normal((4, 6)) * 10
    orig = a.copy()
    # the same array twice, a contiguous reshape and a transpose: one buffer
    norm = fc.clip_grad_norm_([a, a, a.reshape(24), a.T], 1.0)
    assert norm == fc.global_norm([orig])
    assert rel(norm, ref_norm([orig])) <= 1e-13  # counted once, not four times
    np.testing.assert_array_equal(a, orig * (1.0 / norm))


def test_identical_strided_views_count_once(rng):
    a = rng.standard_normal(20) * 10
    orig = a.copy()
    norm = fc.clip_grad_norm_([a[::2], a[::2]], 1.0)
    assert norm == fc.global_norm([orig[::2]])
    assert rel(norm, ref_norm([orig[::2]])) <= 1e-13
    np.testing.assert_array_equal(a[::2], orig[::2] * (1.0 / norm))
    np.testing.assert_array_equal(a[1::2], orig[1::2])


def test_interleaved_views_are_clipped_correctly(rng):
    a = rng.standard_normal(1001) * 10
    orig = a.copy()
    norm = fc.clip_grad_norm_([a[::2], a[1::2]], 1.0)
    assert norm == pytest.approx(ref_norm([orig]), rel=1e-14)
    np.testing.assert_array_equal(a, orig * (1.0 / norm))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_views_are_clipped_in_place(dtype, rng):
    bases = [(rng.standard_normal((40, 70)) * 10).astype(dtype) for _ in range(4)]
    origs = [b.copy() for b in bases]
    sel = [np.s_[::3, ::2], np.s_[::-1, 5:60:4], np.s_[:, 7], np.s_[2:30]]
    views = [b[s] for b, s in zip(bases, sel)] + [bases[3].T[::2]]
    # bases[3][2:30] and bases[3].T[::2] overlap: use a separate base instead
    extra = (rng.standard_normal((9, 11)) * 10).astype(dtype)
    extra_orig = extra.copy()
    views[-1] = extra.T[::2]
    norm = fc.clip_grad_norm_(views, 1.0)
    s = 1.0 / norm
    for b, o, sl in zip(bases, origs, sel):
        want = o.copy()
        want[sl] = scaled(o[sl], s)
        np.testing.assert_array_equal(b, want)  # the view scaled, the rest untouched
    want = extra_orig.copy()
    want.T[::2] = scaled(extra_orig.T[::2], s)
    np.testing.assert_array_equal(extra, want)


def test_misaligned_buffer_is_clipped(rng):
    raw = np.zeros(8 * 101, dtype=np.uint8)
    x = raw[3:3 + 8 * 100].view(np.float64)
    x[...] = rng.standard_normal(100) * 10
    orig = x.copy()
    norm = fc.clip_grad_norm_(x, 1.0)
    np.testing.assert_array_equal(x, orig * (1.0 / norm))


def test_zero_size_buffers_count_in_indices():
    g = [np.zeros(0), np.ones(3), np.zeros((2, 0), np.float32), np.array([1.0, np.inf])]
    with pytest.raises(fc.NonFiniteError) as e:
        fc.clip_grad_norm_(g, 1.0)
    assert e.value.buffers == (3,)


HUGE = [
    pytest.param(dt, v, id=f"{name}-{v:g}")
    for dt, name in zip(DTYPES, DTYPE_IDS)
    for v in (1e20, 1e200, 3e38, 6e4)
    if v <= float(ml_dtypes.finfo(dt).max)
]


@pytest.mark.parametrize("dtype,value", HUGE)
def test_huge_finite_values_clip_normally(dtype, value, rng):
    x = (rng.uniform(0.5, 1.0, 2 * CHUNK + 1) * value).astype(dtype)
    orig = x.copy()
    norm = fc.clip_grad_norm_([x], 1.0)
    assert math.isfinite(norm)
    assert rel(norm, ref_norm([orig])) <= 1e-13
    assert np.isfinite(x.astype(np.float64)).all()
    np.testing.assert_array_equal(x, scaled(orig, 1.0 / norm))
    assert rel(ref_norm([x]), 1.0) <= after(dtype, [x], 2.0)


def test_torch_like_zeroing_does_not_happen_for_huge_values():
    # pytorch#46849: torch returns inf here and zeroes the gradient
    x = np.full(4, 1e20, np.float32)
    orig = x.copy()
    norm = fc.clip_grad_norm_([x], 1.0)
    assert norm == pytest.approx(2e20, rel=1e-7)
    assert rel(norm, ref_norm([orig])) <= 1e-15
    np.testing.assert_allclose(x, 0.5, rtol=1e-6)
    np.testing.assert_array_equal(x, scaled(orig, 1.0 / norm))


def test_repr_and_generator_input():
    c = fc.Clipper((np.ones(3) for _ in range(2)), 1.0)
    assert "2 buffers" in repr(c) and "max_norm=1.0" in repr(c)


def test_numpy_scalar_arguments(rng):
    g = [rng.standard_normal(10) * 10]
    stats = fc.Clipper(g, np.float32(1.5), np.int64(2))()
    assert stats.threshold == 1.5 and stats.clipped


def test_max_norm_is_assignable_and_validated(rng):
    g = [rng.standard_normal(100) * 5]
    c = fc.Clipper(g, 1e9)
    assert not c().clipped
    c.max_norm = 1.0
    assert c().clipped and c.max_norm == 1.0
    snap = g[0].copy()
    for bad, exc in [(0.0, ValueError), (math.nan, ValueError), ("1", TypeError)]:
        with pytest.raises(exc, match="max_norm"):
            c.max_norm = bad
    assert c.max_norm == 1.0
    np.testing.assert_array_equal(g[0], snap)
    r = fc.Clipper(g, 1.0, nonfinite="random")
    with pytest.raises(ValueError, match="random"):
        r.max_norm = math.inf


def test_many_aliases_in_any_order_are_one_buffer(rng):
    a = rng.standard_normal((6, 5)) * 10
    b = rng.standard_normal(7) * 10
    orig_a, orig_b = a.copy(), b.copy()
    aliases = [a.T, b, a, a.reshape(30), b, a.reshape(3, 10), a]
    with pytest.raises(fc.NonFiniteError):  # shows which caller indices map together
        fc.clip_grad_norm_(aliases + [np.array([np.nan])], 1.0)
    stats = fc.Clipper(aliases, 1.0)()
    s = 1.0 / stats.norm
    assert stats.norm == pytest.approx(ref_norm([orig_a, orig_b]), rel=1e-14)
    np.testing.assert_array_equal(a, orig_a * s)
    np.testing.assert_array_equal(b, orig_b * s)
    b[2] = np.inf
    assert fc.Clipper(aliases, 1.0, nonfinite="skip")().nonfinite_buffers == (1, 4)
