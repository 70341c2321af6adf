"""The function API's plan cache for lists of numpy arrays (_buffers._cpu_cache):
a hit needs the same describe() record (memory, dtype, flags, extents), holds
no array, and never skips a check that the changed list would fail."""
import gc
import math
import weakref

import numpy as np
import pytest
from conftest import assert_untouched, ref_norm, snapshot
from helpers import calls_during
from numpy.lib.stride_tricks import as_strided

import fusedclip as fc
from fusedclip import _buffers, _engine


@pytest.fixture(autouse=True)
def empty_cache():
    _buffers._cpu_cache.clear()
    yield
    _buffers._cpu_cache.clear()


def test_the_same_memory_reuses_one_table():
    g = [np.ones(10, np.float32), np.ones(5)]
    _engine.plan_buffers(g, writable=True, fn="f", cache=True)  # plans and caches
    p2 = _engine.plan_buffers(list(g), writable=True, fn="f", cache=True).cpu.plan
    cached = next(iter(_buffers._cpu_cache.values()))[1].table
    assert len(_buffers._cpu_cache) == 1 and p2.table.chunks is cached.chunks  # the same chunk table,
    assert p2.table.partials is not cached.partials                            # partials of its own
    assert p2.arrays[0] is g[0]
    assert fc.clip_grad_norm_(g, 1.0) == pytest.approx(np.sqrt(15))
    assert fc.global_norm(g) == pytest.approx(1.0)


def test_a_cached_plan_keeps_no_array_alive():
    g = [np.ones(100, np.float32) for _ in range(3)]
    refs = [weakref.ref(a) for a in g]
    fc.clip_grad_norm_(g, 1.0)
    fc.buffer_norms(g)
    del g
    gc.collect()
    assert all(r() is None for r in refs)


def test_new_memory_or_flags_miss_and_are_checked_again():
    a = np.ones(8)
    fc.clip_grad_norm_([a], 1.0)
    a.flags.writeable = False  # the same memory, now read-only: the write check must run
    with pytest.raises(ValueError, match="read-only"):
        fc.clip_grad_norm_([a], 0.1)
    assert fc.global_norm([a]) == pytest.approx(1.0)
    b = np.ones(8)
    assert fc.clip_grad_norm_([b], 1.0) == pytest.approx(np.sqrt(8))  # other memory
    c = np.ones(16)
    with pytest.raises(ValueError, match="overlap"):  # a new list over the same bytes
        fc.clip_grad_norm_([c[:10], c[5:]], 1.0)


def test_duplicates_and_empty_buffers_in_a_cached_plan():
    a, e = np.full(4, 2.0), np.zeros(0)
    for _ in range(2):
        b = [a, e, a, a.reshape(2, 2)]
        assert fc.clip_by_norm_(b, 1.0).tolist() == [4.0, 0.0, 4.0, 4.0]
        np.testing.assert_allclose(a, 0.5)
        a[:] = 2.0


def test_staged_views_are_planned_every_time():
    a = np.arange(10.0)
    fc.clip_grad_norm_([a[::2]], 1.0)
    assert not _buffers._cpu_cache
    np.testing.assert_allclose(np.linalg.norm(a[::2]), 1.0)


def test_the_cache_is_bounded():
    keep = [np.ones(4) for _ in range(3 * _buffers.PLAN_CACHE_SIZE)]
    for a in keep:
        fc.global_norm([a])
    assert len(_buffers._cpu_cache) == _buffers.PLAN_CACHE_SIZE


def test_concurrent_calls_over_the_same_memory_do_not_share_partials():
    """Two threads, the same cached plan, different norms: each call has
    partials of its own (Table.fresh)."""
    import threading

    rng = np.random.default_rng(0)
    bufs = [rng.standard_normal(1 << 17) for _ in range(8)]
    for b in bufs:
        b.flags.writeable = False
    want = {2.0: fc.global_norm(bufs, 2.0), math.inf: fc.global_norm(bufs, math.inf)}
    bad = []

    def run(p):
        for _ in range(60):
            got = fc.global_norm(bufs, p)
            if got != want[p]:
                bad.append((p, got))

    ts = [threading.Thread(target=run, args=(p,)) for p in (2.0, math.inf)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


def test_a_strided_duplicate_or_lookalike_is_never_served_from_the_cache():
    from numpy.lib.stride_tricks import as_strided

    a = np.arange(1.0, 9.0)
    b = a.reshape(2, 2, 2).transpose(1, 0, 2)  # the same elements, not contiguous
    c = as_strided(a, shape=(2, 4), strides=(56, 0))  # same extent, repeated elements
    assert fc.buffer_norms([a, b]).tolist() == [fc.global_norm(a)] * 2
    with pytest.raises(ValueError):
        fc.buffer_norms([a, c])
    fc.clip_grad_norm_([a, b], 1e9)
    with pytest.raises(ValueError):
        fc.clip_grad_norm_([a, c], 1.0)
    assert a.tolist() == list(np.arange(1.0, 9.0))


def test_a_changed_middle_array_misses_although_the_key_matches():
    a, b, c = np.ones(4), np.full(4, 2.0), np.ones(4)
    assert fc.global_norm([a, b, c]) == pytest.approx(np.sqrt(24))
    b2 = np.full(4, 3.0)  # first and last the same memory: the key is the same
    assert fc.global_norm([a, b2, c]) == pytest.approx(np.sqrt(44))
    with pytest.raises(ValueError, match="read-only"):
        b.flags.writeable = False
        fc.clip_grad_norm_([a, b, c], 1.0)
    np.testing.assert_array_equal(b, 2.0)


def test_a_clipper_is_built_from_the_cache_and_still_finds_a_resized_array():
    g = [np.ones(1000), np.ones(10)]
    fc.global_norm(g)
    fc.clip_grad_norm_(g, 1e9)
    cached = [v[1].table.chunks for v in _buffers._cpu_cache.values()]
    c = fc.Clipper(g, 1e9)
    assert any(c._plan.table.chunks is ch for ch in cached)  # not planned again
    assert c._plan.table.partials is not _buffers._cpu_cache[next(iter(_buffers._cpu_cache))][1].table.partials
    assert c().norm == pytest.approx(np.sqrt(1010))
    c.max_norm = 1.0
    assert c().clipped and fc.global_norm(g) == pytest.approx(1.0)
    g[0].resize(100_000, refcheck=False)  # the memory moves: the plan would read freed memory
    with pytest.raises(RuntimeError, match="resized"):
        c()


def _mixed_list():
    """Arrays that own their memory, views of one (their owner is the base),
    a view through as_strided's holder, and one over a bytes object."""
    from numpy.lib.stride_tricks import as_strided

    flat = np.arange(1.0, 41.0)
    own = np.full(6, 2.0, np.float32)
    strided = as_strided(flat[30:], shape=(2, 5), strides=(40, 8))  # contiguous, DummyArray base
    frombuf = np.frombuffer(bytearray(np.ones(4).tobytes()), dtype=np.float64)
    return flat, [own, flat[:10], flat[10:30].reshape(4, 5), strided, frombuf]


def test_bind_is_the_record_test_and_the_owners_in_one_pass():
    from fusedclip.kernels import cpu

    flat, g = _mixed_list()
    d, first = cpu.describe(g)
    for hold in (False, True):
        arrays, owners, snap = cpu.bind(g, d, hold)
        assert arrays is not g and len(arrays) == len(g)
        assert all(x is y for x, y in zip(arrays, g))
        if not hold:
            assert owners is None and snap is None
            continue
        want_owners, want_snap = cpu.owners(g)
        assert all(x is y for x, y in zip(owners, want_owners))
        np.testing.assert_array_equal(snap, want_snap)
        assert owners[1] is flat and owners[2] is flat and owners[3] is flat and owners[0] is g[0]
    # every field of the record is compared: another array, size, dtype, flags, extent
    lookalikes = [
        [g[0].copy()] + g[1:],                             # other memory
        [g[0][:5]] + g[1:],                                # fewer elements
        [g[0].view(np.int32)] + g[1:],                     # other dtype
        [g[0], g[1], _read_only(g[2])] + g[3:],             # the same memory, read-only
        g[:4] + [g[4][:3]],                                # the last one shorter
        g[:4],                                             # another length
    ]
    for other in lookalikes:
        assert cpu.bind(other, d, True) is None
    # an F-ordered view of the same bytes is the same record: the same plan
    assert cpu.bind([g[0], g[1], g[2].reshape(5, 4).T] + g[3:], d, True) is not None


def _read_only(a):
    v = a.view()
    v.flags.writeable = False
    return v


def test_a_clipper_from_the_cache_over_views_duplicates_and_empties_finds_a_resized_owner():
    flat = np.ones(1000)
    e = np.zeros(0)
    g = [flat[:400], e, flat[400:], flat[:400], np.ones(3)]
    want = np.sqrt(1003)
    assert fc.global_norm(g) == pytest.approx(want)
    fc.clip_grad_norm_(g, 1e9)  # cached now
    c = fc.Clipper(g, 1e9)
    assert any(c._plan.table.chunks is v[1].table.chunks for v in _buffers._cpu_cache.values())
    assert len(c._plan.arrays) == 3 and c._plan._owners[0] is flat and c._plan._owners[1] is flat
    assert c().norm == pytest.approx(want)
    flat.resize(50_000, refcheck=False)  # the owner moves; the views point at freed memory
    with pytest.raises(RuntimeError, match="buffer 0's memory"):
        c()


def test_a_clipper_from_the_cache_over_arrays_that_own_their_memory_checks_them():
    g = [np.ones(10), np.ones(20)]
    fc.clip_grad_norm_(g, 1e9)
    c = fc.Clipper(g, 1e9)
    assert c._plan._owners is c._plan.arrays  # read in the hit's one pass, no second
    g[1].resize(30, refcheck=False)
    with pytest.raises(RuntimeError, match="buffer 1's memory"):
        c()
    np.testing.assert_array_equal(g[0], 1.0)


def test_bind_keeps_the_rows_and_compares_every_entry():
    from fusedclip.kernels import cpu

    flat, g = _mixed_list()
    e = np.zeros(0)
    objs = [g[0], e, g[1], g[1], g[2]]
    d, _ = cpu.describe(objs)
    arrays, owners, snap = cpu.bind(objs, d, True, np.array([0, 2, 4]))
    assert [id(a) for a in arrays] == [id(g[0]), id(g[1]), id(g[2])]
    assert owners[0] is g[0] and owners[1] is flat and owners[2] is flat
    np.testing.assert_array_equal(snap, cpu.owners(arrays)[1])
    for bad in ([2, 0], [0, 5], [0, 0]):
        with pytest.raises(ValueError, match="increasing"):
            cpu.bind(objs, d, False, np.array(bad))
    # an entry outside the rows is compared too
    assert cpu.bind([g[0], np.zeros(1), g[1], g[1], g[2]], d, False, np.array([0, 2, 4])) is None


def test_a_list_with_an_empty_array_is_served_from_the_cache_and_a_change_there_is_seen():
    a, b, e = np.full(4, 2.0), np.full(4, 1.0), np.zeros(0)
    assert fc.global_norm([a, e, b]) == pytest.approx(np.sqrt(20))
    cached = next(iter(_buffers._cpu_cache.values()))[1]
    plan = _engine.plan_buffers([a, e, b], writable=False, fn="f", cache=True).cpu.plan
    assert plan.table.chunks is cached.table.chunks and [x is y for x, y in zip(plan.arrays, [a, b])] == [True] * 2
    # the same key (length, first and last memory), the empty slot now holds data
    assert fc.global_norm([a, np.full(3, 3.0), b]) == pytest.approx(np.sqrt(47))
    c = fc.Clipper([a, e, b], 1.0)
    assert c().norm == pytest.approx(np.sqrt(20)) and fc.global_norm([a, b]) == pytest.approx(1.0)


# ---------------------------------------------------------------- arrays resized after planning
def _resize_cases():
    def own(a):
        return a

    return {
        "array": own,
        "strided_view": lambda a: a[::2],
        "reshaped_view": lambda a: a.reshape(10, 100),
        "as_strided_view": lambda a: as_strided(a, (100,), (16,)),
    }


@pytest.mark.parametrize("new_size", [4000, 10], ids=["grown", "shrunk"])
@pytest.mark.parametrize("case", list(_resize_cases()))
def test_resized_array_is_detected_before_anything_is_read_or_written(case, new_size):
    a = np.full(1000, 10.0)
    other = np.full(50, 10.0)
    clipper = fc.Clipper([other, np.zeros(3), _resize_cases()[case](a)], 1.0)
    a.resize(new_size, refcheck=False)
    snap = snapshot([other, a])
    with pytest.raises(RuntimeError) as e:
        clipper()
    assert "buffer 2" in str(e.value) and "new Clipper" in str(e.value)
    assert_untouched([other, a], snap)
    # a fresh plan over the resized array works
    want = ref_norm([other, a])
    assert fc.Clipper([other, a], 1.0)().norm == pytest.approx(want, rel=1e-14)


def test_unchanged_plans_keep_working_with_staged_buffers(rng):
    a = rng.standard_normal((30, 40)) * 10
    b = rng.standard_normal(100) * 10
    views = [a[::2, ::3], b[::-1]]
    clipper = fc.Clipper(views, 1.0)
    for _ in range(3):
        a *= 5  # new values between calls: the plan reads the memory each time
        b *= 5
        want = ref_norm(views)
        stats = clipper()
        assert stats.clipped and stats.norm == pytest.approx(want, rel=1e-14)


def test_the_resize_check_has_no_python_work_per_buffer():
    bufs = [np.ones(4, np.float32) for _ in range(10_000)]
    plan = fc.Clipper(bufs, 1e9)._plan
    assert calls_during(plan.check) < 10
    bufs[7777].resize(8, refcheck=False)
    with pytest.raises(RuntimeError, match="buffer 7777"):
        plan.check()
