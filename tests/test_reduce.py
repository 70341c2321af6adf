"""The reduce= hook in one process: simulated ranks (threads, tests/dist_sim.py)
run the same cases as the real-process tests (tests/dist_workers/cases.py),
plus the contract's rounds and every argument error (nothing modified)."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedclip as fc
from conftest import assert_untouched, ref_norm, snapshot
from dist_sim import run_ranks

sys.path.insert(0, str(Path(__file__).parent / "dist_workers"))
import cases  # noqa: E402

#: cases that need another rank to mean anything
MULTI = {"overflow-l1", "overflow-local", "random-unfit", "nonfinite-random"}


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("name", list(cases.CASES))
def test_case_on_simulated_ranks(name, k):
    if k == 1 and name in MULTI:
        pytest.skip("needs two ranks")
    res, _ = run_ranks(k, lambda r, f: cases.CASES[name](r, k, f))
    for r, x in enumerate(res):
        if isinstance(x, BaseException):
            raise AssertionError(f"rank {r}: {x!r}") from x
    assert all(x == res[0] for x in res), res  # the same bits on every rank


# ---------------------------------------------------------------- the rounds
def test_one_round_in_the_common_case_and_four_when_powers_overflow():
    def go(values):
        def f(r, red):
            return fc.clip_grad_norm_([np.full(3, values)], 1.0, reduce=red)
        return run_ranks(2, f)

    (a, b), w = go(1.0)
    assert a == b == math.sqrt(6.0)
    assert w.calls == [[("sum", 6)]] * 2
    (a, b), w = go(1e200)  # each rank's square overflows
    assert a == b and cases.rel(a, math.sqrt(6.0) * 1e200) <= 1e-15
    assert w.calls[0] == [("sum", 6), ("max", 1), ("max", 1), ("sum", 2)] == w.calls[1]


def test_inf_norm_is_one_max_round():
    res, w = run_ranks(3, lambda r, f: fc.clip_grad_norm_([np.array([1.0, -r - 4.0])], 100.0,
                                                          math.inf, reduce=f))
    assert res == [6.0] * 3 and w.calls[0] == [("max", 3)]


def test_a_single_rank_reducer_is_the_plain_clip():
    g = [np.random.default_rng(0).standard_normal(n) for n in (70_000, 3, 1000)]
    h = [a.copy() for a in g]
    ref = ref_norm(g)
    ident = lambda x, op: x  # noqa: E731 - one rank: the all-reduce is the identity
    s1 = fc.Clipper(g, 1.0)()
    s2 = fc.Clipper(h, 1.0, reduce=ident)()
    assert cases.rel(s2.norm, ref) <= 1e-12 and cases.rel(s2.norm, s1.norm) <= 1e-15
    assert cases.rel(s2.scale, s1.scale) <= 1e-15


def test_replicas_reducer_counts_sharded_k_times_and_replicated_once():
    """A reducer that pretends k ranks hold this rank's values: the sharded
    part counts k times, the replicated part once."""
    k = 4

    def replicas(x, op):
        return x * k if op == "sum" else x

    sh, rp = np.arange(1.0, 6.0), np.full(7, 0.5)
    n = fc.clip_grad_norm_([sh, rp], math.inf, reduce=replicas, replicated=[1])
    want = ref_norm([sh] * k + [rp])
    assert cases.rel(n, want) <= 1e-15


def test_the_reducer_may_work_in_place_on_its_float64_argument():
    seen = []

    def in_place(x, op):  # as torch's all_reduce does
        assert x.dtype == np.float64 and x.ndim == 1 and x.flags.c_contiguous
        seen.append(x)
        x *= 1.0
        return x

    assert fc.clip_grad_norm_([np.ones(4)], 1.0, reduce=in_place) == 2.0
    assert len(seen) == 1


# ---------------------------------------------------------------- errors, nothing modified
def _grads():
    return [np.full(5, 3.0), np.full(3, 4.0, np.float32)]


def _ok(x, op):
    return x


@pytest.mark.parametrize("replicated, exc, match", [
    ([2], ValueError, r"replicated index 2 is out of range for 2 buffers"),
    ([-1], ValueError, r"replicated index -1 is out of range"),
    ([0.0], TypeError, r"buffer indices \(ints\)"),
    (["0"], TypeError, r"buffer indices"),
    ([True], ValueError, r"one entry per buffer \(2\), got 1"),
    ([None], TypeError, r"buffer indices"),
    (0, TypeError, r"a list of buffer indices or a boolean mask, got int"),
    ("0", TypeError, r"got str"),
    ({0}, TypeError, r"got set"),
    ([0, True], TypeError, r"buffer indices"),
])
@pytest.mark.parametrize("api", ["Clipper", "clip_grad_norm_"])
def test_bad_replicated_raises_before_anything(api, replicated, exc, match):
    g = _grads()
    snap = snapshot(g)
    with pytest.raises(exc, match=match):
        if api == "Clipper":
            fc.Clipper(g, 1.0, reduce=_ok, replicated=replicated)
        else:
            fc.clip_grad_norm_(g, 1.0, reduce=_ok, replicated=replicated)
    assert_untouched(g, snap)


def test_replicated_accepts_numpy_ints_masks_and_repeats():
    for rep in (np.array([1]), [np.int32(1)], (1, 1), np.array([False, True]), []):
        g = _grads()
        n = fc.clip_grad_norm_(g, math.inf, reduce=_ok, replicated=rep)
        assert cases.rel(n, ref_norm(_grads())) <= 1e-15


def test_replicated_without_reduce_is_an_error():
    g = _grads()
    snap = snapshot(g)
    with pytest.raises(ValueError, match="replicated= needs reduce="):
        fc.Clipper(g, 1.0, replicated=[0])
    assert_untouched(g, snap)


@pytest.mark.parametrize("bad", [3, "sum", [min]])
def test_reduce_must_be_callable(bad):
    g = _grads()
    with pytest.raises(TypeError, match="reduce must be a callable"):
        fc.Clipper(g, 1.0, reduce=bad)


def test_duplicate_buffers_marked_inconsistently():
    a = np.full(5, 3.0)
    g = [a, np.ones(2), a.reshape(5, 1)]
    snap = snapshot(g)
    with pytest.raises(ValueError, match="buffers 0 and 2 are the same memory but only one is marked"):
        fc.Clipper(g, 1.0, reduce=_ok, replicated=[2])
    assert_untouched(g, snap)
    n = fc.clip_grad_norm_(g, math.inf, reduce=lambda x, op: x * 2 if op == "sum" else x,
                           replicated=[0, 2])
    assert cases.rel(n, ref_norm([a, np.ones(2), np.ones(2)])) <= 1e-15  # a once, not per rank


@pytest.mark.parametrize("answer, exc, match", [
    (lambda x, op: x[:1], ValueError, r"returned shape \(1,\) for x of shape \(6,\)"),
    (lambda x, op: "no", TypeError, "not a float64 array"),
    (lambda x, op: x * 0, RuntimeError, "not a sum all-reduce"),
    (lambda x, op: x * 0.5, RuntimeError, "not a sum all-reduce"),
])
def test_a_broken_reducer_raises_and_writes_nothing(answer, exc, match):
    g = _grads()
    snap = snapshot(g)
    with pytest.raises(exc, match=match):
        fc.clip_grad_norm_(g, 1.0, reduce=answer)
    assert_untouched(g, snap)


def test_nonfinite_error_names_local_buffers_and_says_another_rank():
    def f(r, red):
        g = [np.ones(3), np.array([math.inf if r == 1 else 1.0])]
        snap = snapshot(g)
        try:
            fc.Clipper(g, 1.0, reduce=red)()
        except fc.NonFiniteError as e:
            assert_untouched(g, snap)
            return e.buffers, str(e)
        return None

    res, _ = run_ranks(2, f)
    assert res[1][0] == (1,) and "buffers [1] hold" in res[1][1]
    assert res[0][0] == () and "another rank's buffers hold inf or NaN" in res[0][1]


def test_clipper_reuses_its_plan_and_follows_assignments():
    def f(r, red):
        g = [np.full(4, 1.0 + r)]
        c = fc.Clipper(g, 100.0, reduce=red)
        s1 = c()
        c.norm_type = 1.0
        c.max_norm = 1.0
        s2 = c()
        return s1.norm, s2.norm, s2.scale, g[0].copy()

    res, _ = run_ranks(2, f)
    assert res[0][:3] == res[1][:3]
    assert res[0][0] == math.sqrt(4 * 1 + 4 * 4) and res[0][1] == 12.0
    assert np.array_equal(res[1][3], np.full(4, 2.0 / 12.0))


def test_staged_strided_views_are_reduced_and_written_back():
    def f(r, red):
        base = np.arange(20.0).reshape(4, 5) + r
        v = base[:, ::2]  # a strided view: staged
        orig = v.copy()
        s = fc.Clipper([v], 1.0, reduce=red)()
        assert np.array_equal(v, orig * s.scale)
        return s.norm

    res, _ = run_ranks(2, f)
    want = ref_norm([(np.arange(20.0).reshape(4, 5) + r)[:, ::2] for r in range(2)])
    assert res[0] == res[1] and cases.rel(res[0], want) <= 1e-12


def test_importing_fusedclip_imports_neither_torch_nor_mpi4py():
    code = ("import sys, fusedclip, fusedclip.distributed; "
            "assert 'torch' not in sys.modules and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_reducers_reject_an_unknown_op():
    from fusedclip.distributed import _check_op

    with pytest.raises(ValueError, match="'sum' or 'max'"):
        _check_op("min")


def test_gpu_host_wait_path_under_the_simulator():
    pytest.importorskip("numba_cuda", reason="numba-cuda not installed: pip install '.[cuda]'")
    from test_gpu import HERE, run_suite

    run_suite([HERE / "gpu" / "sim_reduce_suite.py"], simulator=True)


def test_a_rank_with_no_buffers_takes_part():
    def f(r, red):
        g = [np.full(4, 2.0)] if r == 0 else []
        return fc.clip_grad_norm_(g, 1.0, reduce=red)

    res, _ = run_ranks(2, f)
    assert res == [4.0, 4.0]


def test_an_exception_from_the_reducer_propagates_with_nothing_written():
    class Down(Exception):
        pass

    def broken(x, op):
        raise Down("connection lost")

    g = _grads()
    g[0][1] = math.inf
    snap = snapshot(g)
    for policy in ("zero", "random"):
        with pytest.raises(Down, match="connection lost"):
            fc.Clipper(g, 1.0, nonfinite=policy, reduce=broken)()
        assert_untouched(g, snap)


# ---------------------------------------------------------------- copies and extra flags (DTensor gradients)
def _part(n: float, copies: float = 1.0, flags: int = 0):
    from fusedclip import _reduce

    return _reduce.Part(n, flags, lambda v, n=n: v / n, False, copies)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("scale", [1.0, 1e200, 1e-200])
def test_copies_divide_each_parts_power_in_every_round(p, scale):
    """Three ranks; rank r holds a shard (norm r + 1) and one copy of a part
    replicated on all three (norm 2): the global norm counts the copy once,
    also where the powers leave float64 (the exact rounds)."""
    from fusedclip import _reduce
    from fusedclip.kernels import cpu

    kind, pw = (cpu.NORM_1, 1.0) if p == 1.0 else (cpu.NORM_2, 2.0) if p == 2.0 else (cpu.NORM_P, p)

    def f(r, red):
        parts = [_part((r + 1) * scale), _part(2.0 * scale, copies=3.0)]
        return _reduce.combine(parts, kind, pw, _reduce.Reducer(red, "t"), (0.0, 0.0))

    res, w = run_ranks(3, f)
    want = math.fsum([1.0, 2.0 ** pw, 3.0 ** pw, 2.0 ** pw]) ** (1 / pw) * scale
    assert len({g.norm for g in res}) == 1 and cases.rel(res[0].norm, want) <= 1e-14, (res[0].norm, want)
    assert res[0].extra == ()
    assert w.calls[0][0] == ("sum", 8)  # the six of round A and the two flags
    # one round, unless the powers leave float64's range (then the exact rounds: four)
    assert len(w.calls[0]) == (4 if pw > 1.0 and scale != 1.0 else 1), w.calls[0]


@pytest.mark.parametrize("kind_p", ["l2", "inf"])
def test_an_extra_flag_from_one_rank_reaches_every_rank_in_the_first_round(kind_p):
    from fusedclip import _reduce
    from fusedclip.kernels import cpu

    kind, p = (cpu.NORM_2, 2.0) if kind_p == "l2" else (cpu.NORM_INF, math.inf)

    def f(r, red):
        return _reduce.combine([_part(1e200)] if r else [], kind, p, _reduce.Reducer(red, "t"),
                               (0.0, 1.0) if r == 1 else (0.0, 0.0))

    res, w = run_ranks(3, f)
    assert [g.extra for g in res] == [(0.0, 1.0)] * 3 and all(math.isnan(g.norm) for g in res)
    assert all(len(c) == 1 for c in w.calls)  # no exact rounds after a refusal
