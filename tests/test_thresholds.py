"""Thresholds and the history, host side: validation, the percentile
structures against numpy, state round trips, and Clipper integration.
The step-by-step sequences on every engine are in tests/contract_family.py."""
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fusedclip as fc
from fusedclip.thresholds import Fixed, Percentile, ZScore, zscore_step


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=80),
       st.floats(0.0, 100.0), st.one_of(st.none(), st.integers(1, 12)))
def test_percentile_equals_numpy_every_step(norms, p, window):
    t = Percentile(p, window=window)
    for i, g in enumerate(norms):
        got = t.step(g)
        h = norms[: i + 1] if window is None else norms[max(0, i + 1 - window): i + 1]
        assert got == pytest.approx(float(np.percentile(h, p)), rel=1e-12, abs=1e-300)


def test_percentile_skips_nonfinite_norms_and_honours_warmup():
    t = Percentile(50, warmup=2)
    assert t.step(1.0) == math.inf and t.step(math.nan) == math.inf and t.step(3.0) == math.inf
    assert t.step(2.0) == 2.0 and len(t) == 3 and t.count == 3


def test_percentile_window_bounds_the_memory():
    t = Percentile(10, window=5)
    for g in range(1000):
        t.step(float(g))
    assert len(t) == 5 and len(t.state_dict()["history"]) == 5


@pytest.mark.parametrize("make", [lambda: Percentile(30), lambda: Percentile(90, window=4, warmup=1),
                                  lambda: ZScore(0.8, 1.5, 3), lambda: Fixed(2.0)])
def test_state_round_trip_resumes_exactly(make):
    rng = np.random.default_rng(0)
    norms = np.abs(rng.standard_normal(40)) + 1
    norms[[9, 25]] = 30.0
    a = make()
    full = [a.step(g) for g in norms]
    b = make()
    first = [b.step(g) for g in norms[:17]]
    state = pickle.loads(pickle.dumps(b.state_dict()))  # plain data
    c = make()
    c.load_state_dict(state)
    assert first + [c.step(g) for g in norms[17:]] == full


def test_zscore_warmup_initialises_then_clips_spikes():
    t = ZScore(alpha=0.9, z=2.0, warmup=4)
    assert [t.step(g) for g in (1.0, 2.0, 3.0, 2.0)] == [math.inf] * 4
    assert (t.mean, t.var) == pytest.approx((2.0, 0.5))
    normal = t.step(2.5)
    assert normal == pytest.approx(2.0 + 2.0 * math.sqrt(0.5))  # the boundary, not exceeded
    spike = t.step(100.0)
    assert spike < 100.0 and spike < t.mean + 5 * math.sqrt(t.var) + 10
    assert t.step(math.inf) == pytest.approx(t.value())  # no update on a non-finite norm


def test_zscore_with_zero_variance_clips_to_the_mean():
    thr, vec = zscore_step([3, 1.0, 0.0, 0.0], 5.0, 0.9, 2.0, 3)
    assert thr == 1.0 and vec[1] == pytest.approx(1.0)


@pytest.mark.parametrize("bad,exc", [
    (lambda: Percentile(101), ValueError), (lambda: Percentile(-1), ValueError),
    (lambda: Percentile("10"), TypeError), (lambda: Percentile(10, window=0), ValueError),
    (lambda: Percentile(10, window=2.5), TypeError), (lambda: Percentile(10, warmup=-1), ValueError),
    (lambda: ZScore(alpha=1.0), ValueError), (lambda: ZScore(z=0), ValueError),
    (lambda: ZScore(z=math.inf), ValueError), (lambda: ZScore(warmup=0), ValueError),
    (lambda: ZScore(warmup=True), TypeError), (lambda: Fixed(-1.0), ValueError),
    (lambda: Fixed(None), TypeError),
])
def test_threshold_arguments_are_validated(bad, exc):
    with pytest.raises(exc):
        bad()


def test_load_state_dict_rejects_another_type_and_changes_nothing():
    z = ZScore(warmup=2)
    z.step(1.0)
    before = z.state_dict()
    with pytest.raises(ValueError, match="ZScore"):
        z.load_state_dict(Percentile().state_dict())
    with pytest.raises(ValueError):
        z.load_state_dict("nope")
    assert z.state_dict() == before
    p = Percentile()
    with pytest.raises(ValueError, match="history entry"):
        p.load_state_dict({**p.state_dict(), "history": [1.0, math.nan]})


# ---------------------------------------------------------------- in a Clipper
def test_clipper_takes_a_threshold_object_and_reports_it(rng):
    g = [rng.standard_normal(100).astype(np.float32)]
    thr = Percentile(50, window=3)
    c = fc.Clipper(g, thr, nonfinite="skip")
    assert c.max_norm is thr
    s = c()
    assert s.threshold == pytest.approx(fc.global_norm(g), rel=1e-6) or s.clipped is False
    c.max_norm = 2.0  # back to a number
    assert c.max_norm == 2.0 and c().threshold == 2.0


def test_fixed_is_the_number():
    g = [np.full(4, 3.0)]
    h = [np.full(4, 3.0)]
    assert fc.Clipper(g, Fixed(1.5))() == fc.Clipper(h, 1.5)()
    np.testing.assert_array_equal(g[0], h[0])


def test_random_policy_needs_a_fixed_threshold_and_nothing_changes():
    g = [np.ones(4)]
    with pytest.raises(ValueError, match="adaptive"):
        fc.Clipper(g, ZScore(), nonfinite="random")
    c = fc.Clipper(g, ZScore(), nonfinite="skip")
    with pytest.raises(ValueError, match="adaptive"):
        c.nonfinite = "random"
    assert c.nonfinite == "skip"
    c2 = fc.Clipper(g, 1.0, nonfinite="random")
    with pytest.raises(ValueError, match="adaptive"):
        c2.max_norm = Percentile()
    assert c2.max_norm == 1.0
    assert fc.Clipper(g, Fixed(1.0), nonfinite="random").max_norm.v == 1.0


def test_clipper_state_dict_round_trip_and_errors():
    g = [np.ones(8)]
    c = fc.Clipper(g, ZScore(warmup=2), history=4)
    for k in range(6):
        g[0][:] = 1.0 + k
        c()
    state = c.state_dict()
    d = fc.Clipper([np.ones(8)], ZScore(warmup=2), history=4)
    d.load_state_dict(state)
    assert d.state_dict() == state
    np.testing.assert_array_equal(d.history.norm, c.history.norm)
    with pytest.raises(ValueError, match="threshold"):
        fc.Clipper([np.ones(8)], 1.0).load_state_dict(state)
    with pytest.raises(ValueError):
        d.load_state_dict({"bogus": 1})


# ---------------------------------------------------------------- history
def test_history_keeps_the_last_calls_in_order():
    g = [np.zeros(4)]
    c = fc.Clipper(g, 1.0, history=3, nonfinite="skip")
    assert c.history is not None and len(c.history) == 0
    for k, v in enumerate([0.1, 5.0, 0.2, 9.0, math.nan]):
        g[0][:] = v
        c()
    h = c.history
    assert len(h) == 3 and list(h.step) == [2, 3, 4]
    np.testing.assert_allclose(h.norm[:2], [0.4, 18.0])
    assert math.isnan(h.norm[2])
    assert list(h.clipped) == [False, True, False] and list(h.finite) == [True, True, False]
    np.testing.assert_allclose(h.scale[:2], [1.0, 1.0 / 18.0])
    assert set(h.as_dict()) == {"step", "norm", "threshold", "scale", "clipped", "finite"}
    assert fc.Clipper(g, 1.0).history is None


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (2.5, TypeError), (True, TypeError)])
def test_history_argument(bad, exc):
    with pytest.raises(exc):
        fc.Clipper([np.ones(2)], 1.0, history=bad)


def test_load_state_dict_into_a_clipper_without_history_or_with_a_smaller_one():
    g = [np.ones(3)]
    c = fc.Clipper(g, Percentile(50), history=3)
    for k in range(10):
        g[0][:] = 1.0 + k
        c()
    state = c.state_dict()
    d = fc.Clipper([np.ones(3)], Percentile(50))  # no history: the threshold still loads
    d.load_state_dict(state)
    assert d.max_norm.state_dict() == state["threshold"]
    e = fc.Clipper([np.ones(3)], Percentile(50), history=10)  # more room than was saved
    e.load_state_dict(state)
    assert len(e.history) == 3 and list(e.history.step) == [7, 8, 9]
    f = fc.Clipper([np.ones(3)], Percentile(50), history=2)   # less room: the last two
    f.load_state_dict(state)
    assert list(f.history.step) == [8, 9]
    np.testing.assert_array_equal(f.history.norm, c.history.norm[-2:])
    bad = {**state, "history": {**state["history"], "norm": [1.0]}}
    before = f.max_norm.state_dict()
    with pytest.raises(ValueError):
        f.load_state_dict(bad)
    assert f.max_norm.state_dict() == before  # nothing restored


def test_a_fixed_thresholds_loaded_value_is_the_random_steps_length():
    c = fc.Clipper([np.array([np.nan, 1.0, 1.0])], Fixed(1.0), nonfinite="random", rng=0)
    c.load_state_dict({"threshold": {"type": "Fixed", "v": 5.0}, "history": None})
    g = c._plan.arrays[0]
    s = c()
    assert s.threshold == 5.0 and np.linalg.norm(g) == pytest.approx(5.0, rel=1e-9)
    with pytest.raises(ValueError, match="finite"):
        c.load_state_dict({"threshold": {"type": "Fixed", "v": math.inf}, "history": None})
    assert c.max_norm.v == 5.0


def test_percentile_is_numpys_to_the_bit():
    rng = np.random.default_rng(5)
    norms = np.abs(rng.standard_normal(300)) * 10.0 ** rng.integers(-3, 3, 300)
    for p, window in [(10, None), (37.5, None), (90, 17), (50, 4)]:
        t = Percentile(p, window=window)
        for i, g in enumerate(norms):
            h = norms[: i + 1] if window is None else norms[max(0, i + 1 - window): i + 1]
            assert t.step(float(g)) == float(np.percentile(h, p))
