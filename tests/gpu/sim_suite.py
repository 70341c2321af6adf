"""GPU kernels and dispatch under the Numba CUDA simulator.

Run by tests/test_gpu.py in its own process with NUMBA_ENABLE_CUDASIM=1
(the simulator and real compilation cannot share a process):

    NUMBA_ENABLE_CUDASIM=1 pytest tests/gpu/sim_suite.py

Small blocks (16 threads) and small chunks (48 elements; conftest sets them
through FUSEDCLIP_GPU_THREADS and FUSEDCLIP_GPU_CHUNK), so that chunking
and grouping are exercised on small data.
"""
import math
import os

import ml_dtypes
import numpy as np
import pytest

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from numba import cuda  # noqa: E402
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: E402

import fusedclip as fc  # noqa: E402
from fusedclip import _engine, _gpu, _launch  # noqa: E402
from fusedclip.kernels import cuda as ck  # noqa: E402
from conftest import DTYPE_IDS, DTYPES, ref_norm, rel, scaled  # noqa: E402

assert (ck.THREADS, ck.CHUNK) == (16, 48), "conftest sets the simulator's small geometry"
LAUNCHER = _launch.launcher()
P = [1.0, 2.0, math.inf, 3.0]
# the simulator runs kernels as numpy scalars: an overflow (rescued) or an
# inf * 0 (the propagate policy) warns where the GPU would not
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


def host(a):
    return a.copy_to_host() if isinstance(a, FakeCUDAArray) else a


def dev_bufs(dtype, sizes=(5, 70, 130), seed=0, scale=10.0):
    rng = np.random.default_rng(seed)
    hs = [(rng.standard_normal(n) * scale).astype(dtype) for n in sizes]
    return hs, [cuda.to_device(h) for h in hs]


def snapshot(bufs):
    return [host(b).tobytes() for b in bufs]


@pytest.fixture
def launches():
    start = len(LAUNCHER.launches)
    return lambda: len(LAUNCHER.launches) - start


# ---------------------------------------------------------------- norms and clips
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", P)
def test_norm_matches_reference(dtype, p):
    hs, ds = dev_bufs(dtype)
    assert rel(fc.global_norm(ds, p), ref_norm(hs, p)) <= (0.0 if p == math.inf else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_clip_in_place_matches_the_cpu_rule(dtype, p):
    hs, ds = dev_bufs(dtype)
    stats = fc.Clipper(ds, 1.0, p, nonfinite="skip")()
    assert isinstance(stats, _gpu.DeviceClipStats)
    assert stats.clipped and stats.finite and rel(stats.norm, ref_norm(hs, p)) <= 1e-13
    for h, d in zip(hs, ds):
        np.testing.assert_array_equal(host(d).astype(np.float64), scaled(h, stats.scale).astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32], ids=["f16", "bf16", "f32"])
@pytest.mark.parametrize("f", [0.7, 1e-3, 0.31830988618379067])
def test_the_scale_kernel_is_correctly_rounded(dtype, f):
    """x*s exactly, rounded once to the dtype: the exact path (the float64
    product rounded to odd, then float32 rounded to odd, then the type) on
    random bit patterns, none non-finite (so the norm is finite)."""
    from conftest import correctly_rounded_product, ulp_distance

    rng = np.random.default_rng(int(f * 1e6))
    bits = rng.integers(0, 2**16 if np.dtype(dtype).itemsize == 2 else 2**32, 1500, dtype=np.uint64)
    h = (bits.astype(np.uint16) if np.dtype(dtype).itemsize == 2 else bits.astype(np.uint32)).view(dtype)
    h = h[np.isfinite(h.astype(np.float64))] if np.dtype(dtype).itemsize == 2 else \
        h[np.isfinite(h) & (np.abs(h.astype(np.float64)) < 1e30)]
    d = cuda.to_device(h.copy())
    stats = fc.Clipper([d], fc.global_norm([h]) * f, nonfinite="skip")().result()
    assert stats.clipped
    assert ulp_distance(host(d), correctly_rounded_product(h, stats.scale)).max() == 0


def test_finite_bfloat16_gradients_are_not_zeroed_by_a_tiny_scale():
    h = np.full(100, 3.0e38, ml_dtypes.bfloat16)
    d = cuda.to_device(h.copy())
    stats = fc.Clipper([d], 1e-6, nonfinite="skip")().result()
    assert stats.scale < 1e-44 and host(d).astype(np.float64).min() > 0
    np.testing.assert_array_equal(host(d), scaled(h, stats.scale))


def test_function_api_returns_float_and_clips():
    hs, ds = dev_bufs(np.float32)
    n = fc.clip_grad_norm_(ds, 2.0)
    assert isinstance(n, float) and rel(n, ref_norm(hs)) <= 1e-13
    assert rel(fc.global_norm(ds), 2.0) <= 1e-6


@pytest.mark.parametrize("p", [0.5, 7.0, 5000.0, 1e6])
def test_any_p_including_huge(p):
    hs, ds = dev_bufs(np.float64, sizes=(70, 30))
    assert rel(fc.global_norm(ds, p), ref_norm(hs, p)) <= 1e-12


@pytest.mark.parametrize("p", [3.0, 0.5])
def test_general_p_when_a_chunk_max_is_exactly_one(p):
    """A general-p chunk is summed relative to its max m; a max of exactly 1.0
    was once taken for an unscaled L1/L2 partial, and the norm came out 10x
    too large.  Chunks of ones, next to chunks that are not."""
    hs = [np.ones(100), np.linspace(-3, 3, 40), np.full(50, 0.25)]
    assert rel(fc.global_norm([cuda.to_device(h) for h in hs], p), ref_norm(hs, p)) <= 1e-13


def test_huge_float64_values_give_a_finite_norm():
    hs = [np.full(100, 1e200), np.full(3, 1e-200), np.ones(7)]
    ds = [cuda.to_device(h) for h in hs]
    for p in P:
        assert rel(fc.global_norm(ds, p), ref_norm(hs, p)) <= 1e-13
    fc.clip_grad_norm_(ds, 1.0)
    assert np.isfinite(host(ds[0])).all() and rel(fc.global_norm(ds), 1.0) <= 1e-14


@pytest.mark.parametrize("layout", ["chunks", "buffers"])
def test_only_the_total_overflows(layout):
    # 48-element chunks: 48 squares of 1e153 are finite, 130 of them are not
    # (a finalize that added plain partials with no rescue zeroed x)
    hs = [np.full(130, 1e153)] if layout == "chunks" else [np.full(40, 1e153) for _ in range(4)]
    ds = [cuda.to_device(h) for h in hs]
    want = ref_norm(hs)
    for p in P:
        assert rel(fc.global_norm(ds, p), ref_norm(hs, p)) <= 1e-13
    stats = fc.Clipper(ds, 1.0, nonfinite="skip")().result()
    assert stats.finite and stats.clipped and rel(stats.norm, want) <= 1e-13
    for h, d in zip(hs, ds):
        np.testing.assert_array_equal(host(d), scaled(h, stats.scale))
    assert rel(ref_norm([host(d) for d in ds]), 1.0) <= 1e-13


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_norm_beyond_float64_still_clips(p):
    h = np.full(130, 1.7e308 if p == 2.0 else 4e306)
    d = cuda.to_device(h)
    stats = fc.Clipper([d], 1.0, p, nonfinite="skip")().result()
    assert stats.norm == math.inf and stats.finite and stats.clipped and stats.scale > 0.0
    assert np.max(np.abs(host(d) * 130 ** (1 / p) - 1.0)) <= 1e-12


def test_same_memory_counts_once_and_partial_overlap_is_rejected(launches):
    h = np.arange(1.0, 101.0)
    d = cuda.to_device(h)
    assert rel(fc.global_norm([d, d]), ref_norm([h])) <= 1e-14
    fc.clip_grad_norm_([d, d], 1.0)
    assert rel(fc.global_norm([d]), 1.0) <= 1e-14  # scaled once
    before = snapshot([d])
    with pytest.raises(ValueError, match="buffers 0 and 1 partially overlap"):
        fc.clip_grad_norm_([d[0:60], d[40:100]], 1e-3)
    assert snapshot([d]) == before


def test_clip_value():
    h = np.array([np.inf, -np.inf, np.nan, 0.5, -7.0, 3.0], np.float32)
    d = cuda.to_device(h)
    fc.clip_grad_value_([d], 1.0)
    np.testing.assert_array_equal(host(d), [1.0, -1.0, np.nan, 0.5, -1.0, 1.0])


# ---------------------------------------------------------------- no write, no wait
def protect(d):
    """The simulator's device memory is a numpy array: make it read-only, so that
    any store by a kernel raises."""
    d._ary.flags.writeable = False
    LAUNCHER.watch(d._ary)
    return d


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_not_triggered_writes_nothing(dtype):
    hs, ds = dev_bufs(dtype)
    for d in ds:
        protect(d)
    stats = fc.Clipper(ds, 1e9, nonfinite="skip")()
    assert not stats.clipped and stats.scale == 1.0


def test_the_write_sentinel_works():
    hs, ds = dev_bufs(np.float32)
    protect(ds[1])
    with pytest.raises(ValueError, match="read-only"):
        _ = fc.Clipper(ds, 1e-3, nonfinite="skip")().norm


@pytest.mark.parametrize("policy", ["skip", "zero", "propagate"])
def test_clipper_call_never_waits_for_the_device(policy, monkeypatch):
    hs, ds = dev_bufs(np.float32)
    hs[1][3] = np.nan
    ds[1] = cuda.to_device(hs[1])
    clipper = fc.Clipper(ds, 1.0, nonfinite=policy)

    def forbidden(*a, **k):
        raise AssertionError("host sync inside Clipper.__call__")

    with monkeypatch.context() as m:
        # the launcher's download is the engine's only way to read the device
        m.setattr(LAUNCHER, "download", forbidden)
        m.setattr(FakeCUDAArray, "copy_to_host", forbidden)
        m.setattr(cuda, "synchronize", forbidden)
        stats = clipper()
        stats2 = clipper()
    # both calls' statistics stay readable, each with its own outcome
    assert stats.finite is False and stats.nonfinite_buffers == (1,)
    if policy == "skip":
        assert math.isnan(stats2.norm) and stats2.nonfinite_buffers == (1,)
    elif policy == "zero":  # the first call replaced the NaN
        assert stats2.finite and stats2.nonfinite_buffers == ()
    else:  # propagate made every value NaN
        assert stats2.nonfinite_buffers == (0, 1, 2)


def test_a_wait_would_be_caught(monkeypatch):
    """Control: the no-wait check fails for a call that must wait (policy error)."""
    hs, ds = dev_bufs(np.float32)
    clipper = fc.Clipper(ds, 1.0, nonfinite="error")
    monkeypatch.setattr(LAUNCHER, "download", lambda *a, **k: (_ for _ in ()).throw(AssertionError("sync")))
    with pytest.raises(AssertionError, match="sync"):
        clipper()


def test_statistics_are_lazy_and_expire():
    hs, ds = dev_bufs(np.float32)
    first = fc.Clipper(ds, 1e9, nonfinite="skip")
    s0 = first()
    for _ in range(ck.RING):
        first()
    with pytest.raises(RuntimeError, match="overwritten"):
        _ = s0.norm
    s = first()
    assert s.norm == s.result().norm and "DeviceClipStats" in repr(s)


def test_every_ring_slot_keeps_its_own_outcome():
    hs, ds = dev_bufs(np.float64)
    c = fc.Clipper(ds, 1e9, nonfinite="skip")
    got = []
    for k in range(ck.RING):
        c.max_norm = 1e9 if k % 2 else 1e-3 / 2**k   # alternate: not clipped / clipped
        got.append(c())
    for k, s in enumerate(got):
        assert s.clipped == (k % 2 == 0) and s.threshold == (1e9 if k % 2 else 1e-3 / 2**k)


# ---------------------------------------------------------------- launches
@pytest.mark.parametrize("nbuf", [1, 4, 5, 10, 17])
def test_launches_per_call(nbuf, launches):
    rng = np.random.default_rng(1)
    dts = [np.float32, np.float64, ml_dtypes.bfloat16, np.float16]
    ds = [cuda.to_device(rng.standard_normal(int(n)).astype(dts[i % 4]))
          for i, n in enumerate(rng.integers(1, 200, nbuf))]
    c = fc.Clipper(ds, 1e-3, nonfinite="skip")
    n0 = launches()
    c()
    assert launches() - n0 == 3  # partials, finalize, scale: any count, any dtype mix
    n0 = launches()
    fc.clip_grad_value_(ds, 1.0)
    assert launches() - n0 == 1


def test_chunk_table_offsets_are_64_bit():
    """Chunk addresses are computed on the host in int64: a buffer of more
    than 2**31 elements gets the right address for every chunk."""
    n = 2**31 + 200
    b = _gpu.Buf(0, None, 1 << 40, n, ck.F32, None, None)
    t = _gpu.chunk_table([b])
    assert len(t) == -(-n // ck.CHUNK)
    k = 2**31 // ck.CHUNK + 1
    assert t[k, 0] == (1 << 40) + 4 * k * ck.CHUNK and t[-1, 1] == n - (len(t) - 1) * ck.CHUNK
    assert (t[:, 2] == ck.F32).all() and (t[:, 3] == 0).all()


# The policies and the family: the engine contract (tests/test_contract.py),
# which tests/test_gpu.py runs in this suite's process (conftest's engine
# fixture is then the simulator's).


# ---------------------------------------------------------------- validation
class FakeCAI:
    """A foreign CUDA array (CuPy-like) that only describes itself."""

    def __init__(self, typestr="<f4", shape=(8,), readonly=False, strides=None, device=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "strides": strides,
                                         "data": (1 << 40, readonly), "version": 3}
        if device is not None:
            self.device = type("Device", (), {"id": device})()


@pytest.mark.parametrize("obj,exc,words", [
    (lambda: FakeCAI(readonly=True), ValueError, ["buffer 2", "read-only"]),
    (lambda: FakeCAI(device=1), ValueError, ["buffer 2", "device 1"]),
    (lambda: FakeCAI(typestr="<i4"), TypeError, ["buffer 2", "int32"]),
    (lambda: FakeCAI(shape=(4, 4), strides=(32, 4)), ValueError, ["buffer 2", "contiguous"]),
    (lambda: cuda.to_device(np.arange(10.0))[::2], ValueError, ["buffer 2", "contiguous"]),
    (lambda: cuda.to_device(np.arange(10, dtype=np.int64)), TypeError, ["buffer 2", "int64"]),
], ids=["read-only", "other-device", "int-cai", "strided-cai", "strided", "int"])
def test_bad_gpu_buffers_fail_before_any_kernel(obj, exc, words, launches):
    hs, ds = dev_bufs(np.float32, sizes=(5, 9))
    cpu = np.ones(4, np.float32)
    bufs = ds + [obj(), cpu]
    snap = snapshot(ds + [cpu])
    with pytest.raises(exc) as e:
        fc.clip_grad_norm_(bufs, 1e-3)
    for w in words:
        assert w in str(e.value)
    assert launches() == 0 and snapshot(ds + [cpu]) == snap


def test_cpu_errors_still_come_first_by_index(launches):
    hs, ds = dev_bufs(np.float32, sizes=(5,))
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="buffer 1"):
        fc.clip_grad_norm_([ds[0], ro], 1.0)
    assert launches() == 0


# ---------------------------------------------------------------- mixed lists
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_mixed_cpu_and_gpu(p):
    hs, ds = dev_bufs(np.float32, sizes=(50, 3))
    cpu_h = [np.linspace(-5, 5, 40), (np.arange(20) * 0.3).astype(np.float16)]
    cpu_b = [c.copy() for c in cpu_h]
    mixed = [cpu_b[0], ds[0], cpu_b[1], ds[1]]
    want = ref_norm(cpu_h + hs, p)
    assert rel(fc.global_norm(mixed, p), want) <= 1e-13
    s = fc.Clipper(mixed, 1.0, p)()
    assert s.clipped and rel(s.norm, want) <= 1e-13
    np.testing.assert_array_equal(cpu_b[0], scaled(cpu_h[0], s.scale))
    np.testing.assert_array_equal(host(ds[0]), scaled(hs[0], s.scale))
    hs[1][0] = np.inf
    ds[1] = cuda.to_device(hs[1])
    cpu_b[1][2] = np.nan
    s = fc.Clipper([cpu_b[0], ds[0], cpu_b[1], ds[1]], 1.0, nonfinite="skip")()
    assert math.isnan(s.norm) and s.nonfinite_buffers == (2, 3)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_mixed_list_whose_total_overflows_takes_its_scale_from_both_engines(p):
    """A CPU part and a CUDA part, each with a finite norm, whose total is
    beyond float64: the scale comes from both engines' relative parts (the
    CPU table alone would give v / its own norm: too large by about 2**(1/p))."""
    big = 1.3e307 if p == 2.0 else 1e306  # each part's norm is finite, their total is not
    h_cpu, h_gpu = np.full(130, big), np.full(130, big)
    assert math.isfinite(ref_norm([h_cpu], p)) and (260 ** (1 / p)) * (big / 2) > 2 ** 1023
    c, d = h_cpu.copy(), cuda.to_device(h_gpu)
    v = 1e300  # a normal scale
    stats = fc.Clipper([c, d], v, p, nonfinite="skip")()
    assert stats.norm == math.inf and stats.finite and stats.clipped
    want = (v / big) / (2 * 130) ** (1 / p)  # the exact scale, computed without overflow
    assert rel(stats.scale, want) <= 1e-12
    np.testing.assert_array_equal(c, scaled(h_cpu, stats.scale))
    np.testing.assert_array_equal(host(d), scaled(h_gpu, stats.scale))


# ---------------------------------------------------------------- conversions
@pytest.mark.parametrize("dt", [np.float16, ml_dtypes.bfloat16], ids=["f16", "bf16"])
def test_16_bit_conversions_match_the_cpu(dt, monkeypatch):
    x = np.arange(0, 65536, 7, dtype=np.uint32).astype(np.uint16).view(dt)
    for s in (0.7, 3.0):
        d = cuda.to_device(x.copy())
        want = x.copy()
        with monkeypatch.context() as m:
            m.setattr(ck, "CHUNK", 4096)  # the host's chunk table only: larger chunks, fewer blocks
            g = _gpu.make_gpu_plan([d], [0], True, "t")
            g.apply(ck.A_SCALE, s)
        fc.kernels.cpu.Table([want.ctypes.data], [want.size], [3 if dt == np.float16 else 2]).scale(s)
        got = host(d)
        with np.errstate(invalid="ignore"):
            nan = np.isnan(want.astype(np.float64))
            assert np.isnan(got[nan].astype(np.float64)).all()  # NaN stays NaN (payloads may differ)
        assert got[~nan].view(np.uint16).tobytes() == want[~nan].view(np.uint16).tobytes()


# ---------------------------------------------------------------- the GPU benchmark's plumbing
def test_gpu_bench_runs_and_reports_every_column(tmp_path):
    """``fusedclip bench --device cuda`` on a tiny workload, numba device arrays
    (the simulator): every implementation, both modes, the floor, the norm's
    error, the JSON and Markdown.  The timings mean nothing here."""
    from fusedclip import bench_gpu
    from fusedclip.bench import Workload

    w = {"tiny/bfloat16": Workload("tiny", "bfloat16", ((40,), (7,)), "two small buffers")}
    rows, doc = bench_gpu.run(list(w), w, ["not-triggered", "triggered"], reps=2, steps=2,
                              be=bench_gpu.NumbaBackend())
    assert {(r.workload, r.dtype, r.mode, r.impl) for r in rows} == {
        ("tiny", "bfloat16", m, i) for m in ("not-triggered", "triggered")
        for i in ("fusedclip", "fusedclip-plan")}
    for r in rows:
        assert r.step_s > 0 and r.host_s > 0 and r.floor_s > 0 and r.rel_err <= 1e-12
    assert doc["backend"] == "numba" and len(doc["results"]) == len(rows)
    md = bench_gpu.markdown(rows)
    assert md.count("\n") == 1 + 2 and "tiny/bfloat16 | triggered" in md
    assert "x floor" in bench_gpu.fmt_table(rows)
    assert set(bench_gpu.workloads()) >= {"big/float32", "big/bfloat16", "gpt/float32", "gpt/bfloat16",
                                          "gpt/float16", "gpt/float64", "small/float32",
                                          "gpt-medium/float32", "gpt-medium/bfloat16"}
    assert len(bench_gpu.workloads()["gpt-medium/float32"].shapes) == 292


# ---------------------------------------------------------------- the family on mixed lists
def test_family_on_mixed_cpu_and_gpu_lists():
    hs, ds = dev_bufs(np.float32, sizes=(5, 70, 130))
    cpu_bufs = [np.linspace(-3, 3, 50).astype(np.float64), np.full(4, 0.01, np.float32)]
    mixed = [ds[0], cpu_bufs[0], ds[1], cpu_bufs[1], ds[2]]
    hosts = [hs[0], cpu_bufs[0].copy(), hs[1], cpu_bufs[1].copy(), hs[2]]
    norms = fc.buffer_norms(mixed)
    assert isinstance(norms, np.ndarray)
    for i, h in enumerate(hosts):
        assert rel(norms[i], ref_norm([h])) <= 1e-13
    pre = fc.clip_by_norm_(mixed, 1.0)
    np.testing.assert_array_equal(pre, norms)
    for i, (b, h) in enumerate(zip(mixed, hosts)):
        got = host(b)
        if norms[i] > 1.0:
            np.testing.assert_array_equal(got, scaled(h, 1.0 / norms[i]))
        else:
            assert got.tobytes() == h.tobytes()
    # error: a NaN on the GPU side stops the CPU side's writes too
    hs2, ds2 = dev_bufs(np.float32, sizes=(5, 9), seed=4)
    hs2[1][3] = np.nan
    ds2[1].copy_to_device(hs2[1])
    c = np.full(30, 10.0)
    with pytest.raises(fc.NonFiniteError) as e:
        fc.clip_by_norm_([c, ds2[0], ds2[1]], 1.0)
    assert e.value.buffers == (2,) and (c == 10.0).all()
    assert host(ds2[0]).tobytes() == hs2[0].tobytes()


def test_mixed_unitwise_is_refused():
    hs, ds = dev_bufs(np.float32, sizes=(5,))
    g = np.ones(5, np.float32)
    with pytest.raises(TypeError, match="all be CPU arrays or all CUDA"):
        fc.clip_unitwise_([ds[0]], [g])
    assert (g == 1).all()


# ---------------------------------------------------------------- 16-bit views at element offsets
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("offset", [1, 3, 4])
def test_a_16_bit_view_at_an_element_offset(dtype, offset):
    """A view 2 or 6 bytes past an 8-byte boundary (offsets 1, 3) takes the
    element-by-element path, an aligned one (4) the int64 words; the elements
    before the view are never written."""
    rng = np.random.default_rng(offset)
    h = (rng.standard_normal(4 * 48 + 7) * 10).astype(dtype)
    d = cuda.to_device(h)
    v = d[offset:]
    addr = v._ary.__array_interface__["data"][0]
    assert (addr % 8 != 0) == (offset % 4 != 0)
    hv = h[offset:]
    assert rel(fc.global_norm([v]), ref_norm([hv])) <= 1e-13
    s = fc.Clipper([v], 1.0, nonfinite="skip")()
    assert s.clipped
    got = host(d)
    np.testing.assert_array_equal(got[offset:].view(np.uint16), scaled(hv, s.scale).view(np.uint16))
    assert got[:offset].tobytes() == h[:offset].tobytes()
    fc.clip_grad_value_([v], 0.01)
    got2 = host(d)
    assert np.all(np.abs(got2[offset:].astype(np.float32)) <= 0.0101)
    assert got2[:offset].tobytes() == h[:offset].tobytes()


def test_the_function_api_plans_once_and_reads_the_values_of_each_call():
    """A cached plan holds addresses, not values: each call reads the arrays'
    current contents."""
    hs, ds = dev_bufs(np.float32)
    _engine._plan_cache.clear()
    n1 = fc.global_norm(ds)
    (_, _, b), = _engine._plan_cache.values()
    g = b.cuda.gpu
    for k in (2.0, 0.5):
        for h, d in zip(hs, ds):
            d.copy_to_device(h * np.float32(k))
        assert rel(fc.global_norm(ds), n1 * k) <= 1e-6
        (_, _, b2), = _engine._plan_cache.values()
        assert b2.cuda.gpu is g
    n = fc.clip_grad_norm_(ds, 1.0)
    assert rel(n, n1 * 0.5) <= 1e-6 and rel(fc.global_norm(ds), 1.0) <= 1e-6
