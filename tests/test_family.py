"""The clipping family on the CPU, by properties: dtypes, shapes, strides,
buffer counts, thread counts (the parallel and rescue paths included), and
what is never written.  The cross-engine contract is tests/contract_family.py."""
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedclip as fc
from conftest import assert_untouched, ref_norm, rel, scaled, snapshot
from fusedclip.kernels import cpu
from test_properties import P, buffer_lists, parallel_lists

SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=80, **SLOW)
@given(bufs=buffer_lists(), p=P, threads=st.sampled_from([None, 1, 2, 3]))
def test_buffer_norms_match_exact_references(bufs, p, threads):
    got = fc.buffer_norms(bufs, p, num_threads=threads)
    assert got.shape == (len(bufs),) and got.dtype == np.float64
    for i, b in enumerate(bufs):
        assert rel(got[i], ref_norm([b], p)) <= (0.0 if p == math.inf else 1e-12), i


@settings(max_examples=10, **SLOW)
@given(case=parallel_lists(), p=P)
def test_buffer_norms_are_the_same_bits_for_any_thread_count(case, p):
    bufs, _ = case
    plan = fc.Clipper(bufs, math.inf, p)._plan  # the parallel path: see test_properties
    assert plan.table.nelem >= cpu.PARALLEL_MIN and plan.table.nchunks > 1
    runs = {fc.buffer_norms(bufs, p, num_threads=t).tobytes() for t in (1, 2, 3)}
    assert len(runs) == 1
    got = fc.buffer_norms(bufs, p)
    for i, b in enumerate(bufs):
        assert rel(got[i], ref_norm([b], p)) <= (0.0 if p == math.inf else 1e-12)


def test_buffer_norms_rescue_paths_and_broadcasts():
    big = np.full(70_000, 7e151)       # squares fit, their sum does not: the rescue path
    tiny = np.full(5, 1e-200)          # squares underflow
    bc = np.broadcast_to(np.arange(3.0), (1000, 3))  # read-only, zero stride: measured, not copied
    got = fc.buffer_norms([big, tiny, bc])
    assert rel(got[0], 7e151 * math.sqrt(70_000)) <= 1e-13
    assert rel(got[1], 1e-200 * math.sqrt(5)) <= 1e-13
    assert rel(got[2], math.sqrt(1000 * 5.0)) <= 1e-13
    huge = np.full(4, 1.7e308)         # a norm beyond float64: inf, and clip_by_norm_ still right
    assert fc.buffer_norms([huge])[0] == math.inf
    fc.clip_by_norm_([huge], 1.0)
    np.testing.assert_allclose(huge, 0.5, rtol=1e-12)


@settings(max_examples=60, **SLOW)
@given(bufs=buffer_lists(), p=st.sampled_from([1.0, 2.0, math.inf]), v=st.floats(1e-2, 1e2),
       threads=st.sampled_from([None, 1, 2]))
def test_clip_by_norm_is_each_buffers_algorithm_1(bufs, p, v, threads):
    before = [b.copy() for b in bufs]
    pre = fc.clip_by_norm_(bufs, v, p, num_threads=threads)
    for i, (b, a) in enumerate(zip(before, bufs)):
        assert rel(pre[i], ref_norm([b], p)) <= (0.0 if p == math.inf else 1e-12)
        if pre[i] > v:
            np.testing.assert_array_equal(a, scaled(b, v / pre[i]))
        else:
            assert a.tobytes() == b.tobytes()


def test_clip_by_norm_duplicates_count_once_and_views_are_written_back():
    a = np.arange(20.0)
    b = np.arange(20.0)
    v = b[::2]                          # a staged (strided) view
    w = np.full(10, 0.01)               # under its threshold
    ws = np.full(20, 0.01)[::2]         # staged and under its threshold
    pre = fc.clip_by_norm_([a[10:], v, a[10:], w, ws], 1.0)
    assert pre[0] == pre[2]
    np.testing.assert_allclose(np.linalg.norm(a[10:]), 1.0)
    np.testing.assert_allclose(np.linalg.norm(v), 1.0)
    np.testing.assert_array_equal(b[1::2], np.arange(1.0, 20.0, 2))  # the other half untouched
    assert (w == 0.01).all() and (ws == 0.01).all()


def test_clip_by_norm_errors_name_the_buffer_and_write_nothing():
    g = [np.ones(4), np.ones(3, np.int32), np.ones(5)]
    with pytest.raises(TypeError, match="buffer 1"):
        fc.clip_by_norm_(g, 0.1)
    ro = np.ones(3)
    ro.flags.writeable = False
    g = [np.ones(4), ro]
    snap = snapshot(g)
    with pytest.raises(ValueError, match="buffer 1.*read-only"):
        fc.clip_by_norm_(g, 0.1)
    assert_untouched(g, snap)
    a = np.ones(10)
    with pytest.raises(ValueError, match="overlap"):
        fc.clip_by_norm_([a[:6], a[4:]], 0.1)
    assert (a == 1).all()
    assert fc.buffer_norms(ro)[0] == math.sqrt(3)  # buffer_norms reads read-only arrays


def test_clip_by_norm_random_checks_every_step_before_writing():
    g = [np.full(8, 1e-3, np.float32), np.array([np.inf, 1.0], np.float16)]
    snap = snapshot(g)
    with pytest.raises(ValueError, match="float16"):
        fc.clip_by_norm_(g, 1e6, nonfinite="random", rng=0)  # a step of 1e6 overflows float16
    assert_untouched(g, snap)


def test_untouched_buffers_are_never_stored_to():
    """With write-protected pages: a store of any value would kill the child."""
    code = """
import ctypes, mmap
import numpy as np, fusedclip as fc
m = mmap.mmap(-1, 1 << 22)
a = np.frombuffer(m, dtype=np.float32)
a[:] = 1e-4
big = np.ones(1000, np.float32)
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(a.ctypes.data, a.nbytes, 1) == 0
fc.clip_by_norm_([a[:500000], big, a[500000:]], 1.0)
assert abs(np.linalg.norm(big) - 1.0) < 1e-6
W = [np.ones((4, 262144), np.float32)]
fc.clip_unitwise_(W, [a.reshape(4, -1)], 0.01)  # ||G|| / ||W|| = 1e-4 per unit: untouched
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@settings(max_examples=40, **SLOW)
@given(seed=st.integers(0, 2**32 - 1), c=st.floats(1e-3, 1.0),
       shape=st.sampled_from([(9,), (5, 7), (3, 2, 3, 3), (70_000,), (2, 40_000)]),
       layout=st.sampled_from(["c", "f", "strided"]), threads=st.sampled_from([None, 1, 2]))
def test_clip_unitwise_is_agc_for_any_layout(seed, c, shape, layout, threads):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    g = rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 1)
    if layout == "f":
        w, g = np.asfortranarray(w), np.asfortranarray(g)
    elif layout == "strided":
        w, g = np.repeat(w, 2, axis=-1)[..., ::2], np.repeat(g, 2, axis=-1)[..., ::2]
    before = g.copy()
    fc.clip_unitwise_([w], [g], c, num_threads=threads)
    rows = 1 if len(shape) < 2 else shape[0]
    for u in range(rows):
        wu = np.asarray(w).reshape(rows, -1)[u] if len(shape) >= 2 else w.reshape(-1)
        gu = before.reshape(rows, -1)[u] if len(shape) >= 2 else before.reshape(-1)
        au = g.reshape(rows, -1)[u] if len(shape) >= 2 else g.reshape(-1)
        wn = max(ref_norm([wu]), 1e-3)
        gn = ref_norm([gu])
        if gn / wn > c:
            np.testing.assert_allclose(au, gu * (c * wn / gn), rtol=1e-12)
        else:
            np.testing.assert_array_equal(au, gu)


def test_clip_unitwise_non_finite_weights_and_huge_units():
    # propagate with a bad weight: NaN/inf propagate (no ZeroDivisionError, no scaling up)
    G = [np.zeros((1, 2))]
    fc.clip_unitwise_([np.array([[np.inf, 1.0]])], G, 0.01, nonfinite="propagate")
    assert np.isnan(G[0]).all()
    G = [np.array([[1e-6, 0.0]])]
    fc.clip_unitwise_([np.array([[np.nan, 1.0]])], G, 0.01, 1e-3, nonfinite="propagate")
    assert np.isnan(G[0]).all()
    # finite units whose norms leave float64: still AGC
    W, G = np.full((1, 2), 1.5e308), [np.full((1, 2), 1.5e308)]
    with np.errstate(all="raise"):
        fc.clip_unitwise_([W], G, 0.01)
    np.testing.assert_allclose(G[0], 1.5e306, rtol=1e-12)
    # a read-only broadcast weight is read like any array
    G = [np.ones((4, 3))]
    fc.clip_unitwise_([np.broadcast_to(np.ones(3), (4, 3))], G, 0.01)
    np.testing.assert_allclose(G[0], 0.01 * np.sqrt(3) / np.sqrt(3))


# ---------------------------------------------------------------- clip_unitwise_: params never written
def _overlap_cases():
    """(params, grads, param index, grad index, base arrays to snapshot): a
    grad that is its param or a view of some param's memory."""
    rng = np.random.default_rng(3)
    out = []
    w = rng.standard_normal((4, 3))
    out.append(("itself", [w], [w], 0, 0, [w]))
    a = rng.standard_normal((6, 3))
    out.append(("view-shifted", [a[:4]], [a[2:]], 0, 0, [a]))
    b = rng.standard_normal((4, 3))
    out.append(("reshaped-view", [b], [b.reshape(2, 6).reshape(4, 3)], 0, 0, [b]))
    c = np.asfortranarray(rng.standard_normal((4, 3)))
    out.append(("f-order-reversed", [c], [c[::-1]], 0, 0, [c]))  # both through C-ordered copies
    d = rng.standard_normal((4, 7))
    out.append(("strided-views", [d[:, 0:6:2]], [d[:, 2:7:2]], 0, 0, [d]))
    e, f = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    g_own = rng.standard_normal((5, 2))
    out.append(("another-index", [e, f], [g_own, e], 0, 1, [e, f, g_own]))
    h = rng.standard_normal(8)
    out.append(("vector-dtype-view", [h], [h.view(np.float32)[:8]], 0, 0, [h]))
    return out


@pytest.mark.parametrize("case", _overlap_cases(), ids=lambda c: c[0])
def test_clip_unitwise_refuses_grads_that_share_memory_with_params(case):
    """The params are never written: a grad that is its param, or any view of
    a param's memory, is a ValueError naming both, before any write."""
    _, W, G, pi, gi, bases = case
    snap = snapshot(bases)
    for policy in ("error", "zero"):
        with pytest.raises(ValueError) as e:
            fc.clip_unitwise_(W, G, 1e-6, nonfinite=policy)  # every unit would clip
        msg = str(e.value)
        assert f"params[{pi}]" in msg and f"grads[{gi}]" in msg, msg
        assert "nothing was modified" in msg, msg
        assert_untouched(bases, snap)


def test_clip_unitwise_accepts_params_and_grads_that_interleave_without_sharing():
    """a[::2] and a[1::2] share a byte range but no element: the grads may be
    written without touching a param."""
    a = np.random.default_rng(4).standard_normal((4, 6))
    w, g = a[:, ::2], a[:, 1::2]
    wsnap = w.copy()
    before = g.copy()
    fc.clip_unitwise_([w], [g], 1e-6)
    np.testing.assert_array_equal(w, wsnap)
    assert not np.array_equal(g, before)  # clipped


def test_clip_unitwise_disjoint_params_and_grads_in_any_address_order():
    """Separate arrays in any address order: no error, the usual result."""
    rng = np.random.default_rng(5)
    W = [rng.standard_normal((3, 4)) for _ in range(50)]
    G = [rng.standard_normal((3, 4)) * 100 for _ in range(50)]
    order = rng.permutation(50)
    W, G = [W[i] for i in order], [G[i] for i in order]
    wsnap = snapshot(W)
    fc.clip_unitwise_(W, G, 0.01)
    assert_untouched(W, wsnap)
