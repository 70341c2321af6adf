"""The engine interface's host pieces (src/fusedclip/_engine.py and the
rules it shares): the caller map, the plan cache, the local combiner, and
the split of a list into engines.  The contract suites
(contract_policies.py, contract_family.py) run the engines themselves."""
import math

import numpy as np
import pytest

import fusedclip as fc
from fusedclip import _cache, _engine, _policy
from fusedclip._rows import CallerMap
from fusedclip.kernels import cpu, dtypes
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import ref_norm, rel


def test_the_caller_map_scatters_gathers_and_names_duplicates():
    m = CallerMap(np.array([0, 2, 5]), {1: [3, 4]})
    out = np.full(6, -1.0)
    m.scatter(out, np.array([10.0, 20.0, 30.0]))
    assert out.tolist() == [10.0, -1.0, 20.0, 20.0, 20.0, 30.0]
    assert m.gather(np.arange(6) * 1.5).tolist() == [0.0, 3.0, 7.5]
    assert m.callers([1]) == (2, 3, 4) and m.callers([2, 0]) == (0, 5)
    assert sorted(m.pairs()) == [(0, 0), (2, 1), (3, 1), (4, 1), (5, 2)]
    assert [m.row_of(c) for c in range(6)] == [0, None, 1, 1, 1, 2]


def test_the_lru_keeps_the_most_recently_used():
    c = _cache.LRU(2)
    c.store("a", 1)
    c.store("b", 2)
    assert c.lookup("a") == 1  # now the most recent
    c.store("c", 3)
    assert list(c) == ["a", "c"] and c.lookup("b") is None


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_the_local_combiner_matches_the_exact_norm(p):
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal(n) * s for n, s in ((50, 1e150), (7, 1.0), (30, 1e160))]
    kind, pp = _policy.norm_kind(p)
    norms = [(ref_norm([a], p), 1.0) for a in parts]
    assert rel(_policy.combine_norms(norms, kind, pp), ref_norm(parts, p)) <= 1e-14
    # a part taken k times (a zero-stride view's core)
    k = 5
    got = _policy.combine_norms([(ref_norm([parts[1]], p), float(k))], kind, pp)
    assert rel(got, ref_norm([parts[1]] * k, p)) <= 1e-14
    assert math.isnan(_policy.combine_norms([(1.0, 1.0)], kind, pp, cpu.HAS_NAN))
    assert _policy.combine_norms([(1.0, 1.0)], kind, pp, cpu.HAS_INF) == math.inf


def test_a_cpu_list_is_one_cpu_engine_and_a_read_only_broadcast_is_still_work():
    b = _engine.plan_buffers([np.ones(3), np.zeros(0)], writable=True, fn="f")
    assert b.engines == [b.cpu] and b.cuda is None and not b.device_only
    assert b.n_inputs == 2 and b.row_callers() == [0] and b.locate(1) is None
    view = np.broadcast_to(np.ones(2), (3, 2))  # no table row: the core, 3 times
    b = _engine.plan_buffers([view], writable=False, fn="f")
    assert len(b.cpu.map) == 0 and b.engines == [b.cpu]
    assert rel(b.reduce(cpu.NORM_2, 2.0, None).norm, math.sqrt(6.0)) <= 1e-15


def test_one_path_clips_and_names_the_nonfinite_callers_through_the_map():
    a = np.full(4, 3.0)
    bad = np.array([1.0, np.nan])
    stats = fc.Clipper([a, np.zeros(0), bad, a], 1.0, nonfinite="skip")()
    assert not stats.finite and stats.nonfinite_buffers == (2,)
    assert (a == 3.0).all()  # skip: nothing written
    stats = fc.Clipper([a, np.zeros(0), a], 1.0)()
    assert stats.clipped and rel(stats.norm, 6.0) <= 1e-15 and rel(float(a[0]), 0.5) <= 1e-15


# ---------------------------------------------------------------- the chunk table builder
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), max_size=12), chunk=st.integers(1, 70),
       seed=st.integers(0, 2**32 - 1))
def test_chunk_rows_cut_every_row_in_order(sizes, chunk, seed):
    """kernels.cpu.chunk_rows (the CUDA engine's table) against the rule
    written out: chunk k of a row starts k * chunk elements in and holds
    min(chunk, rest) of them; empty rows get no chunk."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, dtypes.NDTYPES, len(sizes)).tolist()
    ptrs = (rng.integers(1, 2**40, len(sizes)) * 8).tolist()
    want = [(p + k * chunk * dtypes.ITEMSIZE[c], min(chunk, n - k * chunk), c, r)
            for r, (p, n, c) in enumerate(zip(ptrs, sizes, codes)) for k in range(-(-n // chunk))]
    got = cpu.chunk_rows(ptrs, sizes, codes, chunk)
    assert got.dtype == np.int64 and got.shape == (len(want), 4)
    assert [tuple(row) for row in got.tolist()] == want


def test_chunk_rows_and_the_cpu_table_are_one_builder(rng):
    arrays = [rng.standard_normal(n).astype(dt) for n, dt in
              [(5, np.float32), (cpu.CHUNK * 2 + 3, np.float64), (0, np.float16), (70_000, np.float16)]]
    ptrs, sizes = [a.ctypes.data for a in arrays], [a.size for a in arrays]
    codes = [dtypes.code_of(a.dtype) for a in arrays]
    t = cpu.Table(ptrs, sizes, codes)
    rows = cpu.chunk_rows(ptrs, sizes, codes, cpu.CHUNK)
    c = t.chunks
    assert (rows[:, 0] == c["ptr"].astype(np.int64)).all() and (rows[:, 1] == c["n"]).all()
    assert (rows[:, 2] == c["dtype"]).all() and (rows[:, 3] == c["buf"]).all()


@pytest.mark.parametrize("bad,match", [(dict(sizes=[-1]), "row 0: bad size"), (dict(codes=[7]), "row 0: bad size"),
                                       (dict(sizes=[3, 4]), "same length"), (dict(chunk=0), "chunk must be")])
def test_chunk_rows_and_the_cpu_table_refuse_bad_rows(bad, match):
    """One check for both builders (kernels/cpu.pyx _rows_chunks)."""
    args = dict(ptrs=[64], sizes=[3], codes=[0], chunk=4) | bad
    with pytest.raises(ValueError, match=match):
        cpu.chunk_rows(args["ptrs"], args["sizes"], args["codes"], args["chunk"])
    if "chunk" not in bad:
        with pytest.raises(ValueError, match=match):
            cpu.Table(args["ptrs"], args["sizes"], args["codes"])
