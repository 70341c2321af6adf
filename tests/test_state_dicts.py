"""load_state_dict with states that cannot be: every threshold type and the
Clipper (threshold + history) refuse them with ValueError (TypeError for a
wrong type) naming the key, the value and what is allowed, before anything
changes; every state the code itself saves (edges included) still loads and
resumes bit for bit.  The GPU-bound ZScore is in tests/test_gpu_engine.py."""
import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fusedclip as fc
from fusedclip.thresholds import Fixed, Percentile, ZScore

NAN, INF = math.nan, math.inf
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frozen(state):
    """A state dict as bytes: exact comparison, NaN entries included."""
    return pickle.dumps(state)


# ---------------------------------------------------------------- valid states
norm_values = st.one_of(st.floats(0.0, 1e6), st.just(0.0), st.sampled_from([NAN, INF]))


@st.composite
def threshold_in_a_state(draw):
    """A threshold of any type, its parameters and a run of norms drawn (edges
    included: no norms, warmup not finished, windows partial and full)."""
    kind = draw(st.sampled_from(["fixed", "percentile", "zscore"]))
    if kind == "fixed":
        make = (Fixed, (draw(st.one_of(st.floats(1e-6, 1e6), st.just(INF))),), {})
    elif kind == "percentile":
        make = (Percentile, (draw(st.floats(0.0, 100.0)),),
                {"window": draw(st.one_of(st.none(), st.integers(1, 6))),
                 "warmup": draw(st.integers(0, 5))})
    else:
        make = (ZScore, (draw(st.floats(0.0, 0.99)), draw(st.floats(0.1, 5.0)), draw(st.integers(1, 6))), {})
    t = make[0](*make[1], **make[2])
    for g in draw(st.lists(norm_values, max_size=25)):
        t.step(g)
    return t, make


@SETTINGS
@given(threshold_in_a_state(), st.lists(norm_values, min_size=1, max_size=15))
def test_every_saved_state_loads_and_resumes_bit_for_bit(case, more):
    t, (cls, args, kw) = case
    state = pickle.loads(pickle.dumps(t.state_dict()))
    fresh = cls(1.0) if cls is Fixed else cls()  # other parameters: the state brings its own
    fresh.load_state_dict(state)
    assert frozen(fresh.state_dict()) == frozen(t.state_dict())
    assert [fresh.step(g) for g in more] == [t.step(g) for g in more]
    assert frozen(fresh.state_dict()) == frozen(t.state_dict())


# ---------------------------------------------------------------- impossible states
def corruptions(state):
    """(key, bad value, exception) for ``state``: each one alone makes it impossible."""
    out = []
    if state["type"] == "Fixed":
        out += [("v", 0.0, ValueError), ("v", -1.0, ValueError), ("v", NAN, ValueError),
                ("v", "1", TypeError), ("v", None, TypeError), ("v", True, TypeError)]
    elif state["type"] == "ZScore":
        for key in ("mean", "m2", "var"):
            out += [(key, -1.0, ValueError), (key, NAN, ValueError), (key, INF, ValueError),
                    (key, -INF, ValueError), (key, "1", TypeError), (key, None, TypeError)]
        out += [("n", -1, ValueError), ("n", state["warmup"] + 1, ValueError), ("n", 2.5, TypeError),
                ("n", True, TypeError), ("n", "3", TypeError), ("alpha", 1.0, ValueError),
                ("alpha", -0.5, ValueError), ("alpha", NAN, ValueError), ("z", 0.0, ValueError),
                ("z", INF, ValueError), ("z", -1.0, ValueError), ("warmup", 0, ValueError),
                ("warmup", 1.5, TypeError)]
        if state["n"] < state["warmup"]:  # the variance is set when the warmup ends
            out += [("var", 0.5, ValueError)]
        if state["n"] == 0:  # nothing seen: nothing averaged
            out += [("mean", 1.0, ValueError), ("m2", 1.0, ValueError)]
    else:
        hist, window, count = state["history"], state["window"], state["count"]
        out += [("p", -1.0, ValueError), ("p", 100.5, ValueError), ("p", NAN, ValueError),
                ("p", "10", TypeError), ("window", 0, ValueError), ("window", -2, ValueError),
                ("window", 2.5, TypeError), ("warmup", -1, ValueError), ("warmup", None, TypeError),
                ("count", -1, ValueError), ("count", 1.0, TypeError),
                ("history", "abc", TypeError), ("history", 5, TypeError), ("history", None, TypeError),
                ("history", hist + [1.0], ValueError)]  # more norms than count (or window) allows
        if hist:
            out += [("count", len(hist) - 1, ValueError), ("history", hist[1:], ValueError)]
            for bad, exc in [(NAN, ValueError), (INF, ValueError), (-1.0, ValueError), ("x", TypeError),
                             (None, TypeError)]:
                out += [("history", hist[:-1] + [bad], exc)]
        if window is None or len(hist) < window:
            out += [("count", count + 1, ValueError)]
    return out


def check_refused(obj, state, key, bad, exc):
    before = frozen(obj.state_dict())
    with pytest.raises(exc) as e:
        obj.load_state_dict(state)
    msg = str(e.value)
    assert key in msg, msg
    if not isinstance(bad, (list, tuple)):  # the value itself is named
        assert repr(bad) in msg or str(bad) in msg, msg
    assert frozen(obj.state_dict()) == before, (key, bad)


def all_corruptions(state):
    return [({**state, key: bad}, key, bad, exc) for key, bad, exc in corruptions(state)]


def make_states():
    rng = np.random.default_rng(1)
    norms = list(np.abs(rng.standard_normal(12)) + 1.0)
    out = []
    for make in [lambda: Fixed(2.0), lambda: ZScore(0.9, 2.0, 4), lambda: Percentile(30),
                 lambda: Percentile(70, window=5, warmup=2)]:
        for k in (0, 2, 12):  # empty, in warmup / partial window, after warmup / full window
            t = make()
            for g in norms[:k]:
                t.step(g)
            out.append(t.state_dict())
    return out


CASES = [(s, c) for s in make_states() for c in all_corruptions(s)]


@pytest.mark.parametrize("state,case", CASES,
                         ids=[f"{s['type']}-{c[1]}-{c[2]!r}"[:60] for s, c in CASES])
def test_an_impossible_threshold_state_is_refused_and_nothing_changes(state, case):
    bad_state, key, bad, exc = case
    cls = {"Fixed": Fixed, "ZScore": ZScore, "Percentile": Percentile}[state["type"]]
    obj = cls(3.0) if cls is Fixed else cls()
    for g in (1.0, 2.0, 5.0):
        obj.step(g)
    check_refused(obj, bad_state, key, bad, exc)


@SETTINGS
@given(threshold_in_a_state(), st.data())
def test_any_single_corruption_of_a_saved_state_is_refused_and_nothing_changes(case, data):
    t, _ = case
    state = t.state_dict()
    key, bad, exc = data.draw(st.sampled_from(corruptions(state)))
    check_refused(t, {**state, key: bad}, key, bad, exc)


@pytest.mark.parametrize("make", [lambda: Fixed(2.0), lambda: ZScore(), lambda: Percentile()])
def test_missing_and_unknown_keys_are_named(make):
    t = make()
    t.step(1.0)
    state = t.state_dict()
    for key in state:
        if key == "type":
            continue
        broken = {k: v for k, v in state.items() if k != key}
        check_refused(t, broken, key, [], ValueError)
    check_refused(t, {**state, "bogus": 1}, "bogus", [], ValueError)


def test_the_reported_zscore_states_are_refused():
    """The issue's cases: a negative variance made the next call fail with a
    math domain error; NaN or inf never clipped a 1000x spike."""
    t = ZScore(warmup=2)
    for g in (1.0, 1.1, 0.9):
        t.step(g)
    state = t.state_dict()
    for key, bad in [("var", -1.0), ("var", NAN), ("var", INF), ("mean", NAN)]:
        check_refused(t, {**state, key: bad}, key, bad, ValueError)
    assert t.step(1000.0) < 10.0  # still clips the spike
