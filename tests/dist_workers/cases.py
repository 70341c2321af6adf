"""The distributed cases: one specification for every transport.

Each case is ``case(rank, k, reduce) -> dict``: every rank builds the same
global data from a fixed seed, takes its shard, clips it with ``reduce`` and
checks the outcome against a single-process reference computed from the
whole data (``conftest.ref_norm``: float64, math.fsum; and fusedclip's own
single-process clip): the norm to 1e-12 relative, the scale, and every
element of the rank's shard against the scale rule (``conftest.scaled``).
A failed check raises AssertionError.  The returned dict (norms as
``float.hex``) lets the caller check that every rank saw the same bits.

They run on simulated ranks (threads: tests/test_reduce.py), on
torch.distributed over gloo and under mpirun (tests/test_distributed.py).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # conftest's helpers

import fusedclip as fc  # noqa: E402
from conftest import ref_norm, scaled, snapshot, assert_untouched  # noqa: E402

REL = 1e-12
INF = math.inf


def rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / abs(b)


def _global(seed: int, dtypes=(np.float64, np.float32, ml_dtypes.bfloat16, np.float16, np.float64),
            sizes=(70_001, 3_000, 517, 1_000, 1)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dt) for n, dt in zip(sizes, dtypes)]


def _shard(full: list, rank: int, k: int) -> list:
    """ZeRO/FSDP style: every buffer flattened and cut into k contiguous pieces
    (some empty when a buffer has fewer than k elements)."""
    return [np.array_split(b.reshape(-1), k)[rank].copy() for b in full]


def _deal(full: list, rank: int, k: int) -> list:
    """Data parallel over whole buffers: buffer i lives on rank i % k."""
    return [b.copy() for i, b in enumerate(full) if i % k == rank]


def _check_clip(mine, orig, stats, ref, max_norm, p):
    assert rel(stats.norm, ref) <= REL, (stats.norm, ref)
    assert stats.finite and stats.nonfinite_buffers == ()
    if ref > max_norm:
        assert stats.clipped and rel(stats.scale, max_norm / ref) <= REL, (stats.scale, max_norm / ref)
        for a, o in zip(mine, orig):
            assert np.array_equal(a, scaled(o, stats.scale)), "a clipped value breaks the scale rule"
    else:
        assert not stats.clipped and stats.scale == 1.0
        assert_untouched(mine, snapshot(orig))


def _single(full, max_norm, p, **kw):
    """fusedclip's single-process clip of the whole data (copies)."""
    return fc.Clipper([b.copy() for b in full], max_norm, p, **kw)()


# ---------------------------------------------------------------- cases
def sharded(rank, k, reduce, p=2.0, layout="shard"):
    full = _global(1)
    ref = ref_norm(full, p)
    max_norm = ref / 2
    mine = (_shard if layout == "shard" else _deal)(full, rank, k)
    orig = [a.copy() for a in mine]
    st = fc.Clipper(mine, max_norm, p, reduce=reduce)()
    _check_clip(mine, orig, st, ref, max_norm, p)
    assert rel(st.norm, _single(full, max_norm, p).norm) <= REL
    # not triggered: nothing written
    mine2 = (_shard if layout == "shard" else _deal)(full, rank, k)
    orig2 = [a.copy() for a in mine2]
    n = fc.clip_grad_norm_(mine2, ref * 2, p, reduce=reduce)
    assert rel(n, ref) <= REL
    assert_untouched(mine2, snapshot(orig2))
    return {"norm": st.norm.hex(), "scale": st.scale.hex()}


def replicated(rank, k, reduce, p=2.0):
    full = _global(2)
    rep = _global(3, dtypes=(np.float32, np.float64), sizes=(300, 40_000))  # same on every rank
    ref = ref_norm(full + rep, p)
    max_norm = ref / 3
    mine = [rep[0].copy()] + _shard(full, rank, k) + [rep[1].copy()]
    orig = [a.copy() for a in mine]
    st = fc.Clipper(mine, max_norm, p, reduce=reduce, replicated=[0, len(mine) - 1])()
    _check_clip(mine, orig, st, ref, max_norm, p)
    # the same as a boolean mask, through the function
    mine2 = [rep[0].copy()] + _shard(full, rank, k) + [rep[1].copy()]
    mask = [True] + [False] * len(full) + [True]
    n = fc.clip_grad_norm_(mine2, max_norm, p, reduce=reduce, replicated=mask)
    assert n == st.norm
    # unmarked, they count once per rank
    mine3 = [rep[0].copy()] + _shard(full, rank, k) + [rep[1].copy()]
    n3 = fc.clip_grad_norm_(mine3, INF, p, reduce=reduce)
    if p != INF:
        want = ref_norm(full + rep * k, p)
        assert rel(n3, want) <= REL, (n3, want)
    return {"norm": st.norm.hex()}


def nonfinite(rank, k, reduce, policy="error", bad=math.inf, p=2.0):
    """inf/NaN in the last rank's shard of buffer 0 only: one decision everywhere."""
    full = _global(4)
    full[0][-5] = bad
    mine = _shard(full, rank, k)
    holder = rank == k - 1
    orig = [a.copy() for a in mine]
    snap = snapshot(mine)
    want_norm = math.nan if math.isnan(bad) else math.inf
    c = fc.Clipper(mine, 1.0, p, nonfinite=policy, reduce=reduce, rng=100 + rank)
    if policy == "error":
        try:
            c()
        except fc.NonFiniteError as e:
            assert e.buffers == ((0,) if holder else ()), e.buffers
            assert (e.norm != e.norm) if math.isnan(bad) else e.norm == INF
            if not holder:
                assert "another rank" in str(e)
        else:
            raise AssertionError("every rank must raise NonFiniteError")
        assert_untouched(mine, snap)
        return {"raised": True}
    st = c()
    assert not st.finite and st.nonfinite_buffers == ((0,) if holder else ())
    assert (st.norm != st.norm) if math.isnan(bad) else st.norm == want_norm
    if policy == "skip":
        assert not st.clipped and st.scale == 1.0
        assert_untouched(mine, snap)
    elif policy == "zero":
        assert st.clipped and st.scale == 0.0
        assert all(not a.any() for a in mine)
    elif policy == "propagate":  # max_norm / norm: 0 for inf (zeros), NaN for NaN, as torch
        assert st.clipped
        with np.errstate(invalid="ignore"):  # inf * 0
            for a, o in zip(mine, orig):
                assert np.array_equal(a, scaled(o, st.scale), equal_nan=True)
    elif policy == "random":
        assert st.clipped and st.scale == 0.0
        assert all(np.isfinite(a.astype(np.float64)).all() for a in mine)
        got = _global_norm_of(mine, reduce, p)
        u = 2.0 ** -8  # the coarsest dtype here: bfloat16
        assert abs(got - 1.0) <= 4 * u + 1e-8, got
        # the ranks drew different directions
        assert _differs_across_ranks(mine[0][:3], reduce)
    return {"norm": st.norm.hex(), "scale": st.scale.hex()}


def random_replicated(rank, k, reduce, p=2.0):
    """random with replicated buffers: the same step on every rank for them,
    and the joint step (replicated counted once) has norm max_norm."""
    rep = [np.ones(20, np.float32), np.arange(5.0)]
    mine = [rep[0].copy(), np.full(7, 1.0 + rank), rep[1].copy()]
    if rank == 0:
        mine[1][3] = math.nan
    st = fc.Clipper(mine, 2.5, p, nonfinite="random", reduce=reduce, replicated=[0, 2],
                    rng=7 + rank)()
    assert st.clipped and not st.finite
    for a in (mine[0], mine[2]):
        assert not _differs_across_ranks(a, reduce), "a replicated buffer differs across ranks"
    local = math.fsum(np.abs(mine[1].astype(np.float64)) ** p)
    sh = float(reduce(np.array([local]), "sum")[0])
    rp = math.fsum(np.abs(np.concatenate([mine[0], mine[2]]).astype(np.float64)) ** p)
    got = (sh + rp) ** (1 / p)
    assert abs(got - 2.5) <= (4 * 2.0 ** -24 + 1e-8) * 2.5, got
    return {"norm": st.norm.hex()}


def random_unfit(rank, k, reduce):
    """A random step that overflows float16 on the last rank only: every rank
    raises ValueError, and nothing is written anywhere."""
    mine = [np.full(10, np.nan if rank == 0 else 1.0, np.float32),
            np.ones(10, np.float16 if rank == k - 1 else np.float32)]
    snap = snapshot(mine)
    try:
        fc.Clipper(mine, 1e6, nonfinite="random", reduce=reduce, rng=rank)()
    except ValueError as e:
        msg = str(e)
        assert ("buffer 1 (float16" in msg) if rank == k - 1 else ("another rank" in msg), msg
    else:
        raise AssertionError("every rank must raise ValueError")
    assert_untouched(mine, snap)
    return {"raised": True}


def overflow(rank, k, reduce, which="squares"):
    """Finite values whose power sums leave float64's range."""
    if which == "squares":  # each rank's norm is finite, its square is not
        full, p, max_norm = [np.full(2 * k, 1e200)], 2.0, 1.0
    elif which == "local":  # a rank's own norm is beyond float64 (inf with finite data)
        full, p, max_norm = [np.full(4 * k, 1.5e308)], 2.0, 1e300
    elif which == "l1":
        full, p, max_norm = [np.full(k, 1e308)], 1.0, 1e300
    elif which == "underflow":  # squares below the normal range
        full, p, max_norm = [np.full(3 * k, 1e-170), np.full(k, 3e-171)], 2.0, 1e-180
    elif which == "bigp":  # |x|**50 overflows, the norm does not
        full, p, max_norm = [np.random.default_rng(5).standard_normal(1000) * 1e10], 50.0, 1.0
    else:
        raise ValueError(which)
    mine = _shard(full, rank, k)
    orig = [a.copy() for a in mine]
    st = fc.Clipper(mine, max_norm, p, reduce=reduce)()
    single = _single(full, max_norm, p)
    sc = 600 if which == "underflow" else -600
    exact = ref_norm([np.ldexp(b, sc) for b in full], p)  # scaled: the exact norm * 2**sc
    assert st.finite and st.clipped
    if which == "local" or which == "l1":
        assert st.norm == INF and single.norm == INF
    else:
        assert rel(st.norm, math.ldexp(exact, -sc)) <= REL, (st.norm, exact)
    want_scale = math.ldexp(max_norm / exact, sc)
    assert rel(st.scale, want_scale) <= REL, (st.scale, want_scale)
    assert rel(st.scale, single.scale) <= REL
    for a, o in zip(mine, orig):
        assert np.array_equal(a, scaled(o, st.scale))
    return {"norm": st.norm.hex(), "scale": st.scale.hex()}


# ---------------------------------------------------------------- helpers
def _global_norm_of(mine, reduce, p):
    local = math.fsum(math.fsum(np.abs(a.astype(np.float64)) ** p) for a in mine)
    return float(reduce(np.array([local]), "sum")[0]) ** (1 / p)


def _differs_across_ranks(a, reduce) -> bool:
    x = np.asarray(a, np.float64).reshape(-1)
    hi, lo = reduce(x, "max"), -reduce(-x, "max")
    return not np.array_equal(hi, lo)


CASES = {
    **{f"sharded-p{p}": (lambda p: lambda r, k, f: sharded(r, k, f, p))(p) for p in (1.0, 2.0, INF, 3.0, 0.5)},
    "dealt-p2": lambda r, k, f: sharded(r, k, f, 2.0, layout="deal"),
    **{f"replicated-p{p}": (lambda p: lambda r, k, f: replicated(r, k, f, p))(p) for p in (2.0, 1.0, INF, 3.0)},
    **{f"nonfinite-{pol}": (lambda pol: lambda r, k, f: nonfinite(r, k, f, pol))(pol)
       for pol in ("error", "skip", "zero", "propagate", "random")},
    "nonfinite-error-nan": lambda r, k, f: nonfinite(r, k, f, "error", math.nan),
    "nonfinite-propagate-nan": lambda r, k, f: nonfinite(r, k, f, "propagate", math.nan),
    "nonfinite-skip-pinf": lambda r, k, f: nonfinite(r, k, f, "skip", math.inf, INF),
    "random-replicated": random_replicated,
    "random-unfit": random_unfit,
    **{f"overflow-{w}": (lambda w: lambda r, k, f: overflow(r, k, f, w))(w)
       for w in ("squares", "local", "l1", "underflow", "bigp")},
}


def run_all(rank: int, k: int, reduce, names=None) -> dict:
    """Every case (or ``names``) on this rank: {name: result dict}."""
    out = {}
    for name in names or CASES:
        out[name] = CASES[name](rank, k, reduce)
    return out
