"""The contract of the clipping family, on every dtype, for every engine:
per-buffer norms, per-buffer ("local") clipping, and Clipper thresholds
(Fixed, ZScore, Percentile) step by step against straightforward references.

Not collected by itself: run on the CPU engine by tests/test_contract_cpu.py,
on the CUDA engine under the simulator by tests/gpu/sim_suite.py and on a
real GPU by tests/gpu/real_suite.py, each providing the ``engine`` fixture
(tests/engines.py).
"""
import math

import numpy as np
import pytest

import fusedclip as fc
from fusedclip.thresholds import Fixed, Percentile, ZScore
from conftest import DTYPE_IDS, DTYPES, assert_untouched, ref_norm, rel, scaled, snapshot, ulp_distance

P_FAMILY = [1.0, 2.0, math.inf, 3.0]


def family_bufs(engine, dtype, seed=0, bad=None):
    rng = np.random.default_rng(seed)
    sizes = [5, 0, engine.big, 33, 1]
    scales = [10.0, 1.0, 0.01, 1.0, 0.1]
    hs = [(rng.standard_normal(n) * s).astype(dtype) for n, s in zip(sizes, scales)]
    if bad is not None:
        hs[3][7] = bad
    bufs = engine.put([h.copy() for h in hs])  # hs stay the pristine values
    return hs, bufs, lambda: [engine.get(b) for b in bufs]


def host_norms(res):
    return np.asarray(res, dtype=np.float64)


# ---------------------------------------------------------------- buffer_norms
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", P_FAMILY)
def test_buffer_norms_match_each_buffers_reference(engine, dtype, p):
    hs, bufs, vals = family_bufs(engine, dtype)
    snap = snapshot(vals())
    got = host_norms(fc.buffer_norms(bufs, p))
    assert got.shape == (len(hs),) and got.dtype == np.float64
    for i, h in enumerate(hs):
        assert rel(got[i], ref_norm([h], p)) <= (0.0 if p == math.inf else 1e-13), i
    assert got[1] == 0.0  # the empty buffer
    assert_untouched(vals(), snap)  # never writes


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_buffer_norms_duplicates_and_flags(engine, dtype):
    hs, bufs, vals = family_bufs(engine, dtype, bad=math.nan)
    hs2 = engine.put([hs[0]])
    got = host_norms(fc.buffer_norms(bufs + [bufs[0]] + hs2))
    assert math.isnan(got[3]) and got[5] == got[0] == got[6]
    assert rel(got[0], ref_norm([hs[0]])) <= 1e-13
    hs[3][7] = np.inf
    engine.write(bufs[3], hs[3])
    assert fc.buffer_norms(bufs).__array__()[3] == math.inf


def test_buffer_norms_global_agrees(engine):
    hs, bufs, _ = family_bufs(engine, np.float32)
    n = host_norms(fc.buffer_norms(bufs))
    assert rel(math.sqrt(math.fsum(n * n)), fc.global_norm(bufs)) <= 1e-13


# ---------------------------------------------------------------- clip_by_norm_
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_clip_by_norm_clips_each_buffer_by_its_own_norm(engine, dtype, p):
    hs, bufs, vals = family_bufs(engine, dtype)
    v = 1.0
    pre = [ref_norm([h], p) for h in hs]
    assert sum(n > v for n in pre) >= 2 and sum(0 < n <= v for n in pre) >= 1  # both kinds
    got = host_norms(fc.clip_by_norm_(bufs, v, p))
    after = vals()
    for i, h in enumerate(hs):
        assert rel(got[i], pre[i]) <= (0.0 if p == math.inf else 1e-13)
        if pre[i] > v:
            np.testing.assert_array_equal(after[i].astype(np.float64),
                                          scaled(h, v / got[i]).astype(np.float64), err_msg=str(i))
            assert ref_norm([after[i]], p) <= v * (1 + 1e-2)
        else:
            assert after[i].tobytes() == h.tobytes(), f"buffer {i} under its threshold was written"


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
def test_clip_by_norm_error_raises_and_writes_nothing(engine, dtype, bad):
    hs, bufs, vals = family_bufs(engine, dtype, bad=bad)
    snap = snapshot(vals())
    with pytest.raises(fc.NonFiniteError) as e:
        fc.clip_by_norm_(bufs, 1.0)
    assert e.value.buffers == (3,)
    assert_untouched(vals(), snap)  # not even the finite buffers over their threshold


@pytest.mark.parametrize("policy", ["skip", "zero", "propagate", "random"])
@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
def test_clip_by_norm_policies_per_buffer(engine, policy, bad):
    hs, bufs, vals = family_bufs(engine, np.float32, bad=bad)
    v = 1.0
    got = host_norms(fc.clip_by_norm_(bufs, v, nonfinite=policy, rng=1))
    after = vals()
    assert (math.isnan(got[3]) if math.isnan(bad) else got[3] == math.inf)
    np.testing.assert_array_equal(after[0], scaled(hs[0], v / got[0]))  # finite ones still clipped
    assert after[4].tobytes() == hs[4].tobytes()
    b = after[3]
    if policy == "skip":
        assert b.tobytes() == hs[3].tobytes()
    elif policy == "zero":
        assert not b.any()
    elif policy == "propagate":
        np.testing.assert_array_equal(b, scaled(hs[3], v / got[3]))
    else:
        assert np.isfinite(b).all() and rel(ref_norm([b]), v) <= 1e-6


def test_clip_by_norm_argument_errors_write_nothing(engine):
    hs, bufs, vals = family_bufs(engine, np.float32)
    snap = snapshot(vals())
    for kw, exc in [({"max_norm": -1.0}, ValueError), ({"max_norm": "1"}, TypeError),
                    ({"max_norm": 1.0, "norm_type": 0.0}, ValueError),
                    ({"max_norm": 1.0, "nonfinite": "bogus"}, ValueError),
                    ({"max_norm": math.inf, "nonfinite": "random"}, ValueError)]:
        with pytest.raises(exc):
            fc.clip_by_norm_(bufs, **kw)
    assert_untouched(vals(), snap)


# ---------------------------------------------------------------- thresholds
def zscore_reference(norms, alpha, z, warmup):
    """ZClip as the issue states it, written plainly (no shared code)."""
    out, seen = [], []
    mu = var = None
    for g in norms:
        if not math.isfinite(g):
            out.append(math.inf if mu is None else mu + z * math.sqrt(var))
            continue
        if mu is None:
            seen.append(g)
            if len(seen) == warmup:
                mu = sum(seen) / warmup
                var = sum((x - mu) ** 2 for x in seen) / warmup
            out.append(math.inf)
            continue
        sd = math.sqrt(var)
        zt = (g - mu) / sd if sd > 0 else (math.inf if g > mu else 0.0)
        thr = mu + (z * z / zt) * sd if zt > z else mu + z * sd
        if sd == 0 and zt > z:
            thr = mu
        post = min(g, thr)
        mu = alpha * mu + (1 - alpha) * post
        var = alpha * var + (1 - alpha) * (post - mu) ** 2
        out.append(thr)
    return out


def percentile_reference(norms, p, window, warmup):
    out, hist, count = [], [], 0
    for g in norms:
        if math.isfinite(g):
            hist.append(g)
            count += 1
        h = hist if window is None else hist[-window:]
        out.append(math.inf if count <= warmup or not h else float(np.percentile(h, p)))
    return out


def spiky_norms(n=60, seed=3):
    """n norms near 1 with four spikes (two in a row), at the same relative places."""
    rng = np.random.default_rng(seed)
    g = 1.0 + 0.1 * rng.standard_normal(n)
    g[[n // 5, n // 2, n // 2 + 1, (4 * n) // 5]] *= [8.0, 20.0, 5.0, 12.0]
    return g


THRESHOLDS = [
    ("zscore", lambda: ZScore(alpha=0.9, z=2.0, warmup=8), lambda g: zscore_reference(g, 0.9, 2.0, 8)),
    ("pct-all", lambda: Percentile(50, warmup=3), lambda g: percentile_reference(g, 50, None, 3)),
    ("pct-win", lambda: Percentile(10, window=7), lambda g: percentile_reference(g, 10, 7, 0)),
    ("fixed", lambda: Fixed(1.3), lambda g: [1.3] * len(g)),
]


@pytest.mark.parametrize("name,make,ref", THRESHOLDS, ids=[t[0] for t in THRESHOLDS])
def test_threshold_sequence_and_resume(engine, name, make, ref):
    """A Clipper's thresholds, step by step, on a norm sequence with spikes,
    equal the reference; saving and restoring halfway changes nothing."""
    # 60 steps on the CPU; 30 under the simulator, where a call costs ~0.25 s
    # (the warm-up of 8, every spike and the resume still inside)
    norms = spiky_norms(60 if engine.name == "cpu" else 30)
    if name == "zscore":
        norms[(2 * len(norms)) // 3] = math.inf  # a non-finite step leaves the averages alone
    expect = ref(list(norms))
    base = np.ones(16, np.float64) / 4.0  # norm 1.0 before scaling

    def run(steps, clipper=None, state=None):
        hosts = [base.copy()]
        bufs = engine.put(hosts)
        c = fc.Clipper(bufs, make(), nonfinite="skip", history=100)
        if state is not None:
            c.load_state_dict(state)
        got, scales = [], []
        for g in steps:
            engine.write(bufs[0], base * g)
            s = c()
            got.append(s.threshold)
            after = ref_norm([engine.get(bufs[0])])
            if math.isfinite(g):
                assert rel(after, min(g, s.threshold)) <= 1e-12
            scales.append(s.scale)
        return got, c

    full, c = run(norms)
    np.testing.assert_allclose(full, expect, rtol=1e-12)
    assert c.history.clipped.sum() >= (3 if name != "fixed" else 1)
    np.testing.assert_allclose(c.history.threshold, expect, rtol=1e-12)
    half = len(norms) // 2
    first, c1 = run(norms[:half])
    second, _ = run(norms[half:], state=c1.state_dict())
    np.testing.assert_allclose(first + second, expect, rtol=1e-12)


# ---------------------------------------------------------------- clip_unitwise_ (AGC)
UNIT_SHAPES = [(7,), (6, 5), (4, 3, 3, 3), (), (1, 9)]


def agc_case(engine, dtype, seed=0, bad=None):
    rng = np.random.default_rng(seed)
    W = [(rng.standard_normal(s) if s else np.array(rng.standard_normal())).astype(dtype)
         for s in UNIT_SHAPES]
    G = [(0.001 * rng.standard_normal(s) if s else np.array(0.3)).astype(dtype) for s in UNIT_SHAPES]
    G[1][2] *= 1000.0  # row 2 of the matrix explodes
    G[2][0] *= 1000.0  # output channel 0 of the conv kernel
    W[0][:] = 0.0      # ||W|| = 0: the eps floor decides
    G[0][:] = 0.01
    if bad is not None:
        G[2].reshape(-1)[40] = bad
    wb = engine.put([w.copy() for w in W])
    gb = engine.put([g.copy() for g in G])
    return W, G, wb, gb


def agc_reference(W, G, clipping, eps):
    """Per unit: (expected values or None when untouched) in float64."""
    out = []
    for w, g in zip(W, G):
        rows = 1 if g.ndim < 2 else g.shape[0]
        wv = w.astype(np.float64).reshape(rows, -1)
        gv = g.astype(np.float64).reshape(rows, -1)
        res = []
        for u in range(rows):
            wn = max(math.sqrt(math.fsum(wv[u] ** 2)), eps)
            gn = math.sqrt(math.fsum(gv[u] ** 2))
            res.append(clipping * wn / gn if gn / wn > clipping else None)
        out.append(res)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_clip_unitwise_matches_the_reference(engine, dtype):
    W, G, wb, gb = agc_case(engine, dtype)
    c, e = 0.01, 1e-3
    expect = agc_reference(W, G, c, e)
    assert sum(s is not None for r in expect for s in r) >= 3
    assert sum(s is None for r in expect for s in r) >= 3
    wsnap = snapshot([engine.get(b) for b in wb])
    assert fc.clip_unitwise_(wb, gb, c, e) is None
    assert_untouched([engine.get(b) for b in wb], wsnap)  # the params are never written
    for i, (g, res) in enumerate(zip(G, expect)):
        got = engine.get(gb[i])
        rows = 1 if g.ndim < 2 else g.shape[0]
        gv, av = g.reshape(rows, -1), got.reshape(rows, -1)
        for u, s in enumerate(res):
            if s is None:
                assert av[u].tobytes() == gv[u].tobytes(), f"grad {i} unit {u} was written"
            elif np.dtype(dtype) == np.float64:
                np.testing.assert_allclose(av[u], gv[u] * s, rtol=1e-12, atol=0, err_msg=f"{i}/{u}")
            else:  # the scale rule, up to one rounding flip from a 1e-13 difference in s
                assert ulp_distance(av[u], scaled(gv[u], s)).max() <= 1, f"{i}/{u}"


@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
def test_clip_unitwise_nonfinite(engine, bad):
    W, G, wb, gb = agc_case(engine, np.float32, bad=bad)
    snap = snapshot([engine.get(b) for b in gb + wb])
    with pytest.raises(fc.NonFiniteError) as e:
        fc.clip_unitwise_(wb, gb)
    assert e.value.buffers == (2,)
    assert_untouched([engine.get(b) for b in gb + wb], snap)
    fc.clip_unitwise_(wb, gb, nonfinite="skip")
    got = engine.get(gb[2]).reshape(4, -1)
    assert got[1].tobytes() == G[2].reshape(4, -1)[1].tobytes()  # the bad unit, skipped
    assert not np.array_equal(got[0], G[2].reshape(4, -1)[0])    # a good one still clipped
    wb2, gb2 = engine.put([w.copy() for w in W]), engine.put([g.copy() for g in G])
    fc.clip_unitwise_(wb2, gb2, nonfinite="zero")
    assert not engine.get(gb2[2]).reshape(4, -1)[1].any()


def test_clip_unitwise_argument_errors_write_nothing(engine):
    W, G, wb, gb = agc_case(engine, np.float32)
    snap = snapshot([engine.get(b) for b in gb])
    for args, kw, exc in [((wb, gb), {"clipping": 0.0}, ValueError),
                          ((wb, gb), {"eps": -1.0}, ValueError),
                          ((wb, gb), {"nonfinite": "random"}, ValueError),
                          ((wb[:-1], gb), {}, ValueError),
                          ((wb[1:] + wb[:1], gb), {}, ValueError)]:  # shapes differ
        with pytest.raises(exc):
            fc.clip_unitwise_(*args, **kw)
    assert_untouched([engine.get(b) for b in gb], snap)


def test_clip_unitwise_refuses_grads_that_share_memory_with_params(engine):
    """The params are never written: a grad that is a param (at its own index
    or another), or a view into a param's memory, is a ValueError naming the
    param and the grad, raised before any write."""
    W, G, wb, gb = agc_case(engine, np.float32)
    own = engine.put([np.ones((4, 5), np.float32), np.ones((4, 5), np.float32)])
    both = wb + gb + own
    snap = snapshot([engine.get(b) for b in both])
    for params, grads, pi, gi in [
            (wb, wb, 0, 0),                                # every grad is its param
            (wb, gb[:1] + [wb[1]] + gb[2:], 1, 1),         # one grad is its param
            ([wb[1][:4], own[0]], [own[1], wb[1][2:]], 0, 1),  # a view of a param's rows
    ]:
        with pytest.raises(ValueError) as e:
            fc.clip_unitwise_(params, grads, 1e-6)  # every unit would clip
        msg = str(e.value)
        assert f"params[{pi}]" in msg and f"grads[{gi}]" in msg and "nothing was modified" in msg, msg
        assert_untouched([engine.get(b) for b in both], snap)


def test_clip_unitwise_a_nan_weight_propagates(engine):
    """propagate with a NaN weight: the unit's gradient becomes NaN (it is
    not scaled by clipping * eps / ||G||), on every engine alike."""
    W = [np.array([[np.nan, 1.0], [1.0, 1.0]], np.float32)]
    G = [np.array([[1e-6, 0.0], [5.0, 5.0]], np.float32)]
    wb, gb = engine.put([w.copy() for w in W]), engine.put([g.copy() for g in G])
    fc.clip_unitwise_(wb, gb, 0.01, nonfinite="propagate")
    got = engine.get(gb[0])
    assert np.isnan(got[0]).all()
    np.testing.assert_array_equal(got[1], scaled(G[0][1], 0.01 * math.sqrt(2) / math.sqrt(50)))
