"""Property-based tests: dtypes, shapes, strides, buffer counts, thread counts."""
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedclip as fc
from conftest import DTYPES, ref_norm, rel, scaled

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
    assert stats.clipped == (stats.norm > max_norm)
    for b, o in zip(bufs, before):
        want = scaled(o, max_norm / stats.norm) if stats.clipped else o
        assert np.array_equal(b.astype(np.float64), want.astype(np.float64))


@settings(max_examples=60, deadline=None)
@given(bufs=buffer_lists(), p=P)
def test_thread_count_never_changes_a_bit(bufs, p):
    assert len({fc.global_norm(bufs, p, num_threads=t).hex() for t in (1, 2, 3, 5)}) == 1


@settings(max_examples=60, deadline=None)
@given(bufs=buffer_lists(max_buffers=4), c=st.floats(0, 100))
def test_value_clip_bounds(bufs, c):
    fc.clip_grad_value_(bufs, c)
    for b in bufs:
        y = b.astype(np.float64)
        lim = float(np.asarray(c, dtype=b.dtype).astype(np.float64))
        assert (np.abs(y) <= lim).all()
