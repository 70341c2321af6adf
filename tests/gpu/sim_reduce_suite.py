"""The distributed path (reduce=) on GPU buffers, under the Numba CUDA simulator.

Run by tests/test_reduce.py in its own process with NUMBA_ENABLE_CUDASIM=1.
What is built for GPU buffers is the host-wait path: the device reduces, the
host reads the local norm (one wait), all-reduces it and decides, and the
device applies (docs/DISTRIBUTED.md).  A "replicas" reducer stands for k
ranks holding this rank's values: sharded parts count k times, replicated
ones once.
"""
import math
import os

import numpy as np
import pytest

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from numba import cuda  # noqa: E402

import fusedclip as fc  # noqa: E402
from fusedclip.kernels import cuda as ck  # noqa: E402
from conftest import ref_norm, rel, scaled  # noqa: E402

assert (ck.THREADS, ck.CHUNK) == (16, 48), "conftest sets the simulator's small geometry"
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]
K = 3


def replicas(x, op):
    return x * K if op == "sum" else x


def host_of(bufs):
    return [b.copy_to_host() if hasattr(b, "copy_to_host") else b for b in bufs]


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 3.0])
def test_gpu_only_sharded(p):
    hs = [np.random.default_rng(1).standard_normal(n) * 10 for n in (5, 130)]
    ds = [cuda.to_device(h) for h in hs]
    st = fc.Clipper(ds, 1.0, p, reduce=replicas)()
    want = ref_norm(hs * K, p)
    assert isinstance(st, fc.ClipStats) and rel(st.norm, want) <= 1e-12
    assert rel(st.scale, 1.0 / want) <= 1e-12
    for d, h in zip(ds, hs):
        assert np.array_equal(d.copy_to_host(), scaled(h, st.scale))


def test_mixed_with_a_replicated_cpu_buffer():
    rep = np.full(7, 2.0)
    cpu_sh = np.arange(1.0, 100.0, dtype=np.float32)
    gh = np.linspace(-3, 3, 90)
    g = cuda.to_device(gh)
    bufs = [rep, g, cpu_sh]
    orig = [rep.copy(), gh.copy(), cpu_sh.copy()]
    st = fc.Clipper(bufs, 1.0, reduce=replicas, replicated=[0])()
    want = ref_norm([orig[2], orig[1]] * K + [orig[0]])
    assert rel(st.norm, want) <= 1e-12
    for b, o in zip(host_of(bufs), orig):
        assert np.array_equal(b, scaled(o, st.scale))


def test_replicated_gpu_buffer_is_refused_before_anything():
    g = cuda.to_device(np.ones(5))
    with pytest.raises(ValueError, match="buffer 1 is a GPU buffer marked replicated"):
        fc.Clipper([np.ones(3), g], 1.0, reduce=replicas, replicated=[1])
    assert np.array_equal(g.copy_to_host(), np.ones(5))


@pytest.mark.parametrize("policy", ["error", "skip", "zero", "random", "propagate"])
def test_inf_on_the_gpu(policy):
    gh = np.ones(60)
    gh[50] = np.inf
    g, c = cuda.to_device(gh), np.full(4, 3.0)
    bufs = [c, g]
    clipper = fc.Clipper(bufs, 2.0, nonfinite=policy, reduce=replicas, rng=0)
    if policy == "error":
        with pytest.raises(fc.NonFiniteError) as e:
            clipper()
        assert e.value.buffers == (1,)
        assert np.array_equal(g.copy_to_host(), gh) and np.array_equal(c, np.full(4, 3.0))
        return
    st = clipper()
    assert not st.finite and st.nonfinite_buffers == (1,) and st.norm == math.inf
    out = host_of(bufs)
    if policy == "skip":
        assert np.array_equal(out[1], gh) and np.array_equal(out[0], np.full(4, 3.0))
    elif policy == "zero":
        assert not out[0].any() and not out[1].any()
    elif policy == "random":
        local = ref_norm(out)
        assert rel(local * math.sqrt(K), 2.0) <= 1e-12  # the joint step over K replicas
    else:  # propagate: scale 0
        assert np.isnan(out[1][50]) and not out[0].any()


def test_squares_overflow_on_the_gpu():
    gh = np.full(10, 1e200)
    g = cuda.to_device(gh)
    st = fc.Clipper([g], 1.0, reduce=replicas)()
    want = math.sqrt(10 * K) * 1e200
    assert rel(st.norm, want) <= 1e-12 and rel(st.scale, 1.0 / want) <= 1e-12
    assert np.array_equal(g.copy_to_host(), scaled(gh, st.scale))
