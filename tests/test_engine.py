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
from fusedclip.kernels import cpu
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
