"""The contract of the five non-finite policies, on every dtype, for every engine.

Not collected by itself: tests/test_contract_cpu.py runs it on the CPU
engine, tests/gpu/sim_suite.py on the CUDA engine under the simulator and
tests/gpu/real_suite.py on a real GPU; each provides the ``engine`` fixture
(tests/engines.py).  One suite, so the engines cannot drift apart.
"""
import math

import numpy as np
import pytest

import fusedclip as fc
from conftest import DTYPE_IDS, DTYPES, after_clip_bound, assert_untouched, ref_norm, rel, scaled, snapshot


def grads(dtype, bad):
    g = [np.linspace(-3, 3, 40).astype(dtype), np.zeros(0, dtype), np.ones(7, dtype) * 2,
         np.linspace(1, 2, 33).astype(dtype)]
    g[2][3] = bad
    return g


def on(engine, hosts):
    """The engine's buffers for these host arrays, and a reader of their values."""
    bufs = engine.put(hosts)
    return bufs, lambda: [engine.get(b) for b in bufs]


CASES = [(math.inf, math.inf), (-math.inf, math.inf), (math.nan, math.nan)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bad,norm", CASES, ids=["inf", "-inf", "nan"])
def test_error_raises_with_norm_and_indices(engine, dtype, bad, norm):
    g, vals = on(engine, grads(dtype, bad))
    snap = snapshot(vals())
    with pytest.raises(fc.NonFiniteError) as e:
        fc.clip_grad_norm_(g, 1.0)
    assert e.value.buffers == (2,)
    assert math.isnan(e.value.norm) if math.isnan(norm) else e.value.norm == norm
    assert "buffers [2]" in str(e.value) and "nothing was modified" in str(e.value)
    assert isinstance(e.value, FloatingPointError) and isinstance(e.value, RuntimeError)
    assert_untouched(vals(), snap)
    with pytest.raises(fc.NonFiniteError):  # a plan too
        fc.Clipper(g, 1.0)()
    assert_untouched(vals(), snap)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bad,norm", CASES, ids=["inf", "-inf", "nan"])
def test_skip_leaves_buffers_and_reports(engine, dtype, bad, norm):
    g, vals = on(engine, grads(dtype, bad))
    snap = snapshot(vals())
    s = fc.Clipper(g, 1e-3, nonfinite="skip")()
    assert (s.clipped, s.finite, s.scale, s.nonfinite_buffers) == (False, False, 1.0, (2,))
    assert math.isnan(s.norm) if math.isnan(norm) else s.norm == norm
    assert_untouched(vals(), snap)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_zero(engine, dtype):
    g, vals = on(engine, grads(dtype, math.nan))
    s = fc.Clipper(g, 1.0, nonfinite="zero")()
    assert s.clipped and not s.finite and s.scale == 0.0 and s.nonfinite_buffers == (2,)
    for b in vals():
        assert not np.signbit(b.astype(np.float64)).any() and (b == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 3.0])
def test_random_step_has_the_threshold_norm(engine, dtype, p):
    g, vals = on(engine, grads(dtype, math.inf))
    s = fc.Clipper(g, 0.5, p, nonfinite="random", rng=7)()
    assert s.clipped and not s.finite and s.nonfinite_buffers == (2,)
    assert fc.global_norm(g, p) == fc.Clipper(g, 1e300, p)().norm
    # float64 draws normalised (one rounding each) then rounded to the dtype:
    # the same bound as a clip (conftest.after_clip_bound), float64 kept at 1e-13
    got = vals()
    n = sum(b.size for b in got)
    bound = 1e-13 if np.dtype(dtype) == np.float64 else after_clip_bound(dtype, n, p, max_norm=0.5)
    assert rel(ref_norm(got, p), 0.5) <= bound
    assert all(np.isfinite(b.astype(np.float64)).all() for b in got)


def test_random_is_seeded_and_changes_direction(engine):
    (a, va), (b, vb), (c, vc) = (on(engine, grads(np.float64, math.nan)) for _ in range(3))
    fc.Clipper(a, 1.0, nonfinite="random", rng=1)()
    fc.Clipper(b, 1.0, nonfinite="random", rng=np.random.default_rng(1))()
    fc.Clipper(c, 1.0, nonfinite="random", rng=2)()
    for x, y in zip(va(), vb()):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(va(), vc()))
    # a Generator passed in advances: two steps differ
    gen = np.random.default_rng(3)
    (d, vd), (e, ve) = on(engine, grads(np.float64, math.nan)), on(engine, grads(np.float64, math.nan))
    fc.Clipper(d, 1.0, nonfinite="random", rng=gen)()
    fc.Clipper(e, 1.0, nonfinite="random", rng=gen)()
    assert not np.array_equal(vd()[0], ve()[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_propagate_inf_is_torch_semantics(engine, dtype):
    g, vals = on(engine, grads(dtype, math.inf))
    s = fc.Clipper(g, 1.0, nonfinite="propagate")()
    assert s.clipped and s.scale == 0.0 and s.norm == math.inf
    # 0 * x: finite entries become (signed) zeros, the inf becomes NaN
    got = vals()
    x = got[2].astype(np.float64)
    assert np.isnan(x[3]) and (np.delete(x, 3) == 0).all()
    assert (got[0].astype(np.float64) == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_propagate_nan_makes_everything_nan(engine, dtype):
    g, vals = on(engine, grads(dtype, math.nan))
    s = fc.Clipper(g, 1.0, nonfinite="propagate")()
    assert s.clipped and math.isnan(s.scale)
    for b in vals():
        assert np.isnan(b.astype(np.float64)).all()


def test_nan_wins_over_inf_and_all_bad_buffers_are_listed(engine):
    a = np.ones(5)
    hosts = [np.array([np.inf]), np.ones(3), np.array([1.0, np.nan]), a, np.zeros(0), a]
    g = engine.put(hosts)
    assert g[3] is g[5]  # the same buffer twice
    s = fc.Clipper(g, 1.0, nonfinite="skip")()
    assert math.isnan(s.norm) and s.nonfinite_buffers == (0, 2)
    a[1] = -np.inf  # a duplicate buffer is reported under each of its indices
    engine.write(g[3], a)
    s = fc.Clipper(g, 1.0, nonfinite="skip")()
    assert s.nonfinite_buffers == (0, 2, 3, 5)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 0.7, 4.0])
def test_every_norm_type_detects_nonfinite(engine, p):
    """In a buffer of several chunks (the CPU's parallel path), in any chunk."""
    for bad in (math.inf, math.nan):
        hosts = [np.ones(engine.big, np.float32), np.ones(5)]
        hosts[0][engine.big * 2 // 3] = bad
        s = fc.Clipper(engine.put(hosts), 1.0, p, nonfinite="skip")()
        assert s.nonfinite_buffers == (0,) and not s.finite
        assert math.isnan(s.norm) == math.isnan(bad)


def test_global_norm_reports_nonfinite_as_nan_or_inf(engine):
    assert math.isnan(fc.global_norm(engine.put([np.array([np.nan, np.inf])])))
    assert fc.global_norm(engine.put([np.array([1.0, -np.inf])])) == math.inf
    assert fc.global_norm(engine.put([np.array([1.0, -np.inf])]), math.inf) == math.inf


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 3.0])
def test_finite_clip_is_the_rule(engine, dtype, p):
    """The finite case of the same table: scale by max_norm / norm above the
    threshold, exactly as the CPU rounds it; nothing written below it."""
    hosts = [np.linspace(-3, 3, 40).astype(dtype), np.ones(engine.big, dtype)]
    orig = [h.copy() for h in hosts]  # the CPU engine clips the host arrays themselves
    g, vals = on(engine, hosts)
    want = ref_norm(orig, p)
    snap = snapshot(vals())
    s = fc.Clipper(g, want * 2, p, nonfinite="skip")()
    assert not s.clipped and s.scale == 1.0 and rel(s.norm, want) <= 1e-12
    assert_untouched(vals(), snap)
    s = fc.Clipper(g, 0.5, p, nonfinite="skip")()
    assert s.clipped and s.finite and s.scale == 0.5 / s.norm
    for h, b in zip(orig, vals()):
        np.testing.assert_array_equal(b, scaled(h, s.scale))
