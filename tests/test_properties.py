"""Property-based tests: dtypes, shapes, strides, buffer counts, thread counts."""
import math

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fusedclip as fc
from conftest import DTYPES, clamped, ref_norm, rel, scaled
from fusedclip.kernels import cpu

P = st.sampled_from([1.0, 2.0, math.inf, 0.5, 3.0])


@st.composite
def buffer_lists(draw, max_buffers=6):
    """A list of independent buffers, each possibly a strided/reversed view."""
    n = draw(st.integers(0, max_buffers))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 40), min_size=1, max_size=3)))
        if draw(st.booleans()) and len(shape) == 1:
            shape = (draw(st.integers(32760, 32780)),)  # around the chunk size
        scale = 10.0 ** draw(st.integers(-3, 3))
        base = (rng.standard_normal(shape) * scale).astype(dtype)
        kind = draw(st.sampled_from(["plain", "step", "reverse", "transpose"]))
        if kind == "step":
            base = base[tuple(slice(None, None, draw(st.integers(1, 3))) for _ in shape)]
        elif kind == "reverse":
            base = base[::-1]
        elif kind == "transpose":
            base = base.T
        out.append(base)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bufs=buffer_lists(), p=P, threads=st.sampled_from([None, 1, 2, 3]))
def test_norm_matches_exact_reference(bufs, p, threads):
    got = fc.global_norm(bufs, p, num_threads=threads)
    want = ref_norm(bufs, p)
    assert rel(got, want) <= (0.0 if p == math.inf else 1e-12)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bufs=buffer_lists(), p=P, max_norm=st.floats(1e-3, 1e3), threads=st.sampled_from([None, 1, 2]))
def test_clip_is_algorithm_1(bufs, p, max_norm, threads):
    before = [b.copy() for b in bufs]
    n0 = fc.global_norm(bufs, p)
    stats = fc.Clipper(bufs, max_norm, p, num_threads=threads)()
    assert stats.norm == n0  # the same buffers give the same bits
    assert rel(stats.norm, ref_norm(before, p)) <= (0.0 if p == math.inf else 1e-12)
    assert stats.clipped == (stats.norm > max_norm)
    for b, o in zip(bufs, before):
        want = scaled(o, max_norm / stats.norm) if stats.clipped else o
        assert np.array_equal(b.astype(np.float64), want.astype(np.float64))


def _overflows_a_chunk(bufs, p):
    """Whether some float64 chunk's fast sum overflows (so it must be rescued)."""
    for b in bufs:
        if b.dtype != np.float64:
            continue
        flat = np.abs(np.ascontiguousarray(b).ravel())
        for k in range(0, flat.size, cpu.CHUNK):
            with np.errstate(over="ignore"):
                if np.isinf(np.sum(flat[k:k + cpu.CHUNK] ** p)):
                    return True
    return False


def _huge_case():
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(cpu.PARALLEL_MIN + 5) * 1e304), rng.standard_normal(9).astype(np.float32)], True


@st.composite
def parallel_lists(draw):
    """Buffers that take the parallel path: >= cpu.PARALLEL_MIN elements in
    more than one chunk, in any dtype, possibly strided (staged), possibly
    with values whose squares (or sums) overflow, so that the rescue path
    (scaled partials) runs inside the parallel loop too."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, 3 * cpu.CHUNK)) for _ in range(n - 1)]
    sizes.append(max(cpu.PARALLEL_MIN - sum(sizes), 0) + draw(st.integers(0, 2 * cpu.CHUNK)))
    huge = draw(st.booleans())
    out = []
    for size in sizes:
        dtype = draw(st.sampled_from(DTYPES))
        x = rng.standard_normal(size * 2 if draw(st.booleans()) else size)
        if huge and dtype == np.float64:
            x *= 1e304  # squares overflow (L2 rescue) and chunk sums too (L1 rescue)
        x = x.astype(dtype)
        out.append(x[::2] if x.size > size else x)
    return out, huge


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=parallel_lists(), p=P)
@example(case=_huge_case(), p=2.0)
@example(case=_huge_case(), p=1.0)
def test_thread_count_never_changes_a_bit(case, p):
    bufs, huge = case
    # the same plan the public call builds; its table decides parallel or not
    c = fc.Clipper(bufs, math.inf, p)
    table = c._plan.table
    # Table._parallel: nt > 1 and nelem >= PARALLEL_MIN and nchunks > 1.  That
    # these sizes really start OpenMP threads is proven by
    # test_threads.py::test_parallel_path_starts_threads.
    assert table.nelem >= cpu.PARALLEL_MIN and table.nchunks > 1
    norms = set()
    for t in (1, 2, 3, 5):  # 1 is serial by construction: the others must match it
        c.num_threads = t
        stats = c()
        norms.add(stats.norm.hex())
        if p in (1.0, 2.0) and _overflows_a_chunk(bufs, p):
            assert (table.partials["m"] != 1.0).any(), "the rescue path was not taken"
    assert len(norms) == 1
    assert fc.global_norm(bufs, p, num_threads=4).hex() in norms
    assert rel(float.fromhex(norms.pop()), ref_norm(bufs, p)) <= (0.0 if p == math.inf else 1e-12)


@settings(max_examples=60, deadline=None)
@given(bufs=buffer_lists(max_buffers=4), c=st.floats(0, 100))
def test_value_clip_bounds(bufs, c):
    before = [b.copy() for b in bufs]
    fc.clip_grad_value_(bufs, c)
    for b, o in zip(bufs, before):
        y = b.astype(np.float64)
        lim = float(np.asarray(c, dtype=b.dtype).astype(np.float64))
        assert (np.abs(y) <= lim).all()
        # element-exact: an implementation that zeroed everything passes the bound
        np.testing.assert_array_equal(y, clamped(o, c).astype(np.float64))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(1, 40)), min_size=0, max_size=90),
       st.sampled_from(["any", "up", "down"]))
def test_extents_disjoint_is_the_pairwise_rule(spans, order):
    """cpu.disjoint (the fast path's overlap check) against every pair: the
    monotone one-pass cases, the insertion sort (<= 64 extents) and qsort
    beyond."""
    e = [(lo, lo + n) for lo, n in spans]
    if order != "any":
        e.sort(reverse=order == "down")
    want = all(a[1] <= b[0] or b[1] <= a[0] for i, a in enumerate(e) for b in e[i + 1:])
    assert cpu.disjoint(np.array(e, dtype=np.int64).reshape(-1, 2)) == want
    if len(e) > 1 and want:  # a disjoint list with one extent stretched over its neighbour overlaps
        e2 = sorted(e)
        e2[0] = (e2[0][0], e2[1][0] + 1)
        assert not cpu.disjoint(np.array(e2[::-1] if order == "any" else e2, dtype=np.int64))
