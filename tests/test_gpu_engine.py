"""The CUDA engine's host side, without a GPU and without the simulator: a
recording launcher (``tests/launchers.py``) takes the launches and
runs nothing, so launch counts and the host's per-call work can be measured
for 10 and for 10,000 buffers in the normal test process."""
import os
import sys

import numpy as np
import pytest

import fusedclip as fc

pytest.importorskip("numba_cuda", reason="numba-cuda not installed: pip install '.[cuda]'")
from fusedclip import _launch  # noqa: E402
from launchers import RecordingLauncher  # noqa: E402


class FakeCuda:
    """A CUDA array as the engine sees one: only __cuda_array_interface__
    (the recorder never dereferences the address)."""

    def __init__(self, addr, n, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": typestr, "data": (addr, False),
                                         "strides": None, "version": 3}


@pytest.fixture
def recorder():
    rec = RecordingLauncher()
    old = _launch.use_launcher(rec)
    yield rec
    _launch.use_launcher(old)


def fakes(nbuf, n=256, dtypes=("<f4",)):
    base = 1 << 36  # disjoint, increasing addresses
    return [FakeCuda(base + 8 * n * i, n, dtypes[i % len(dtypes)]) for i in range(nbuf)]


def python_calls(f) -> int:
    """How many Python-level and C-level function calls ``f()`` makes."""
    count = [0]

    def prof(frame, event, arg):
        if event in ("call", "c_call"):
            count[0] += 1

    sys.setprofile(prof)
    try:
        f()
    finally:
        sys.setprofile(None)
    return count[0]


@pytest.mark.parametrize("policy", ["skip", "zero", "propagate"])
def test_a_norm_clip_is_three_launches_for_any_buffer_count_and_dtype_mix(recorder, policy):
    for nbuf in (1, 10, 10_000):
        c = fc.Clipper(fakes(nbuf, dtypes=("<f4", "<f8", "<f2")), 1.0, nonfinite=policy)
        for k in range(3):
            n0 = len(recorder.launches)
            c()
            names = [x[0] for x in recorder.launches[n0:]]
            assert names == ["partials", "finalize", "scale"], (nbuf, k, names)


def test_a_value_clip_is_one_launch(recorder):
    bufs = fakes(10_000)
    n0 = len(recorder.launches)
    fc.clip_grad_value_(bufs, 1.0)
    assert [x[0] for x in recorder.launches[n0:]] == ["clamp"]


def test_calls_replay_a_graph_and_a_new_max_norm_needs_no_recapture(recorder):
    c = fc.Clipper(fakes(10), 1.0, nonfinite="skip")
    c()                       # first call: plain launches
    assert recorder.replays == 0
    c()                       # second: captured, then replayed
    c.max_norm = 0.5          # lives in device memory: the same graph
    c()
    assert recorder.replays == 2 and len(c._gpu._graphs) == 1


@pytest.mark.parametrize("policy", ["skip", "zero", "propagate"])
def test_host_work_per_call_does_not_grow_with_the_buffer_count(recorder, policy):
    """The deterministic form of "host time per Clipper call is flat": the
    same number of function calls for 10 and for 10,000 buffers.  (The time
    itself is measured by ``fusedclip bench --device cuda``, not here.)"""
    counts = []
    for nbuf in (10, 10_000):
        c = fc.Clipper(fakes(nbuf), 1.0, nonfinite=policy)
        c(), c()  # plan, capture
        counts.append(python_calls(c))
    assert counts[0] == counts[1], counts
    assert counts[0] < 200  # and it is small: a few dozen calls


def test_the_counter_sees_per_buffer_work():
    """Control: the counter would catch a per-buffer loop."""
    small = python_calls(lambda: [abs(x) for x in range(10)])
    big = python_calls(lambda: [abs(x) for x in range(10_000)])
    assert big > small + 9000


def test_an_explicit_stream_carries_every_launch(recorder):
    bufs = fakes(20)
    c = fc.Clipper(bufs, 1e-3, nonfinite="skip", stream=1234)
    n0 = len(recorder.streams)
    c(), c(), c()  # plain launches, then a captured graph's replays
    fc.clip_grad_value_(bufs, 1.0, stream=99)
    assert recorder.streams[n0:] == [1234] * 9 + [99]
    c2 = fc.Clipper(bufs, 1e-3, nonfinite="skip")  # no stream: the default (None, handle 0)
    n0 = len(recorder.streams)
    c2()
    assert recorder.streams[n0:] == [None] * 3


class StreamLike:
    """A stream object as cuda.core, torch or CuPy hand one out."""

    def __init__(self, h):
        self.handle = h


@pytest.mark.parametrize("make", [lambda: 77, lambda: StreamLike(77)], ids=["int", "object"])
def test_stream_objects_and_handles(recorder, make):
    bufs = fakes(3)
    n0 = len(recorder.streams)
    fc.Clipper(bufs, 1e-3, nonfinite="skip", stream=make())()
    assert recorder.streams[n0:] == [77] * 3


@pytest.mark.parametrize("bad", ["0", 1.5, True, object()], ids=["str", "float", "bool", "object"])
def test_a_bad_stream_is_a_type_error_before_anything(recorder, bad):
    bufs = fakes(3)
    n0 = len(recorder.launches)
    for call in (lambda: fc.Clipper(bufs, 1.0, stream=bad), lambda: fc.clip_grad_norm_(bufs, 1.0, stream=bad),
                 lambda: fc.global_norm(bufs, stream=bad), lambda: fc.clip_grad_value_(bufs, 1.0, stream=bad)):
        with pytest.raises(TypeError, match="stream must be a CUDA stream object or an int handle"):
            call()
    assert len(recorder.launches) == n0


# ---------------------------------------------------------------- streams of a CuPy-like library
class FakeCupy(FakeCuda):
    """A CuPy array as the engine sees one (module name, .data.ptr, CAI)."""

    def __init__(self, addr, n):
        super().__init__(addr, n)
        self.data = type("MemoryPointer", (), {"ptr": addr})()
        self.dtype, self.shape, self.strides = np.dtype(np.float32), (n,), (4,)


FakeCupy.__module__ = "cupy._core.core"


@pytest.fixture
def cupy_streams(monkeypatch):
    """A stand-in ``cupy`` module whose current stream the test sets."""
    import types

    current = {"ptr": 111}
    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=current["ptr"]))
    monkeypatch.setitem(sys.modules, "cupy", mod)
    return current


def cupy_bufs(nbuf):
    return [FakeCupy((1 << 37) + 4096 * i, 256) for i in range(nbuf)]


def test_statistics_are_read_on_the_stream_the_call_ran_on(recorder, cupy_streams):
    """`with stream: st = clipper()` then `st.norm` outside the block: the copy
    must be ordered after the call's kernels, so it goes on the call's stream,
    not on whatever stream is current when the statistics are read."""
    c = fc.Clipper(cupy_bufs(4), 1.0, nonfinite="skip")
    cupy_streams["ptr"] = 222
    n0 = len(recorder.streams)
    st = c()
    assert recorder.streams[n0:] == [222] * 3
    cupy_streams["ptr"] = 111
    d0 = len(recorder.download_streams)
    st.norm, st.nonfinite_buffers
    assert recorder.download_streams[d0:] and set(recorder.download_streams[d0:]) == {222}


def test_the_function_api_cache_keys_on_the_stream(recorder, cupy_streams):
    from fusedclip import _engine

    _engine._plan_cache.clear()
    bufs = cupy_bufs(3)
    for s in (5, 6, 5, 6):
        n0 = len(recorder.streams)
        fc.clip_grad_norm_(bufs, 1e30, nonfinite="skip", stream=s)
        assert set(recorder.streams[n0:]) == {s}
    assert len(_engine._plan_cache) == 2  # one plan per stream, each reused
    fc.clip_grad_norm_(bufs, 1e30, nonfinite="skip")  # the current stream: a third
    assert len(_engine._plan_cache) == 3


@pytest.mark.parametrize("h,exc", [(-7, ValueError), (2**70, ValueError)])
def test_stream_handles_out_of_range(recorder, h, exc):
    with pytest.raises(exc, match=r"stream handle must be in \[0, 2\*\*64\)"):
        fc.Clipper(fakes(2), 1.0, stream=h)


def test_numpy_integer_handles_are_handles(recorder):
    n0 = len(recorder.streams)
    fc.Clipper(fakes(2), 1e-3, nonfinite="skip", stream=np.int64(42))()
    assert recorder.streams[n0:] == [42] * 3


def test_gpu_overlap_goes_through_the_shared_extent_checker(recorder):
    """The same range and dtype twice counts once (reported under both
    indices); a partial overlap is the CPU plan's error, naming both buffers."""
    base = 1 << 38
    a, dup, other = FakeCuda(base, 64), FakeCuda(base, 64), FakeCuda(base + 4096, 8)
    c = fc.Clipper([other, a, dup], 1.0, nonfinite="skip")
    assert len(c._gpu.rows) == 2 and c._gpu.dups == {1: [2]}
    for bad, pair in (([a, FakeCuda(base + 4, 64)], "0 and 1"),               # shifted by one element
                      ([a, other, FakeCuda(base, 64, "<f8")], "0 and 2"),     # same start, other dtype
                      ([FakeCuda(base + 128, 4), a], "0 and 1"),              # inside another
                      ([a, FakeCuda(base, 128, "<f2")], "0 and 1")):          # same bytes, other dtype
        n0 = len(recorder.launches)
        with pytest.raises(ValueError, match=f"buffers {pair} partially overlap in GPU memory"):
            fc.clip_grad_norm_(bad, 1.0)
        assert len(recorder.launches) == n0


# ---------------------------------------------------------------- the clipping family
def test_family_launch_counts_do_not_grow_with_buffers(recorder):
    for nbuf in (1, 10, 10_000):
        bufs = fakes(nbuf, dtypes=("<f4", "<f8"))
        for fn, want in [(lambda: fc.buffer_norms(bufs), ["partials", "finalize", "rownorms"]),
                         (lambda: fc.clip_by_norm_(bufs, 1.0, nonfinite="skip"),
                          ["partials", "finalize", "rownorms", "scale_rows"])]:
            n0, d0 = len(recorder.launches), len(recorder.download_streams)
            res = fn()
            assert [x[0] for x in recorder.launches[n0:]] == want, nbuf
            assert isinstance(res, fc.DeviceNorms) and len(res) == nbuf
            assert len(recorder.download_streams) == d0  # nothing read back: no host wait


def test_a_zscore_clipper_waits_for_nothing_and_keeps_its_state_on_the_device(recorder):
    thr = fc.thresholds.ZScore(warmup=3)
    c = fc.Clipper(fakes(10), thr, nonfinite="skip")
    d0 = len(recorder.download_streams)
    for _ in range(5):
        c()
    assert len(recorder.download_streams) == d0  # the threshold ran in finalize
    assert recorder.replays == 4 and thr._device is not None
    thr.state_dict()  # reading it back is the one wait
    assert len(recorder.download_streams) == d0 + 1


def test_a_percentile_clipper_needs_one_wait_per_call(recorder):
    c = fc.Clipper(fakes(10), fc.thresholds.Percentile(10), nonfinite="skip")
    d0 = len(recorder.download_streams)
    c()
    assert len(recorder.download_streams) == d0 + 1


@pytest.mark.parametrize("where", ["same", "inside", "straddles"])
def test_unitwise_refuses_grads_in_a_params_memory_before_any_launch(recorder, where):
    """The unit plan (built here, not by plan_buffers) is checked too: a grad
    whose memory meets a param's is refused, naming both, with nothing
    launched and no unit plan kept."""
    from fusedclip import _family

    _family._unit_plans.clear()
    addr = lambda f: f.__cuda_array_interface__["data"][0]
    W = fakes(10)  # float32, 256 elements (1 KB) each, 2 KB apart
    G = [FakeCuda(addr(f) + (1 << 30), 256) for f in fakes(10)]
    w7 = addr(W[7])
    if where == "same":
        G[3] = FakeCuda(w7, 256)
    elif where == "straddles":  # its second half meets params[7]'s first
        G[3] = FakeCuda(w7 - 512, 256)
    else:  # 64 elements in the middle of params[7]
        W[3], G[3] = FakeCuda(addr(W[3]), 64), FakeCuda(w7 + 256, 64)
    n0 = len(recorder.launches)
    with pytest.raises(ValueError) as e:
        fc.clip_unitwise_(W, G, 0.01, nonfinite="skip")
    msg = str(e.value)
    assert "params[7]" in msg and "grads[3]" in msg and "nothing was modified" in msg, msg
    assert len(recorder.launches) == n0 and not _family._unit_plans


def test_unitwise_is_five_launches_and_plans_its_units_once(recorder):
    from fusedclip import _family

    _family._unit_plans.clear()
    W, G = fakes(1000), fakes(1000)
    G = [FakeCuda(f.__cuda_array_interface__["data"][0] + (1 << 30), 256) for f in G]
    for k in range(3):
        n0 = len(recorder.launches)
        fc.clip_unitwise_(W, G, 0.01, nonfinite="skip")
        assert [x[0] for x in recorder.launches[n0:]] in (
            ["partials", "finalize", "rownorms", "agc", "scale_rows"], ["graph"])
    assert len(_family._unit_plans) == 1 and recorder.replays == 2


def test_a_bound_zscore_refuses_an_impossible_state_and_its_device_state_stays(recorder):
    """A ZScore bound to a plan keeps its state in the plan's params: a bad
    state is refused before any upload, a good one is uploaded and read back."""
    import math
    import pickle

    thr = fc.thresholds.ZScore(warmup=3)
    c = fc.Clipper(fakes(10), thr, nonfinite="skip")
    c()
    assert thr._device is not None
    good = {**thr.state_dict(), "n": 3, "mean": 1.5, "m2": 0.75, "var": 0.25}
    thr.load_state_dict(good)  # uploaded: the device holds it
    thr._set_vector([0, 0.0, 0.0, 0.0])  # the host's copy is stale; state_dict reads the device
    assert thr.state_dict() == good
    before = pickle.dumps(c.state_dict())
    for key, bad in [("var", -1.0), ("var", math.nan), ("var", math.inf), ("mean", math.nan),
                     ("m2", -1.0), ("n", -1), ("n", 4), ("alpha", 1.0)]:
        with pytest.raises(ValueError, match=key):
            thr.load_state_dict({**good, key: bad})
        with pytest.raises(ValueError, match=key):
            c.load_state_dict({"threshold": {**good, key: bad}, "history": None})
        assert pickle.dumps(c.state_dict()) == before and thr.state_dict() == good
    c.load_state_dict({"threshold": {**good, "mean": 2.5}, "history": None})
    assert thr.state_dict()["mean"] == 2.5


# ---------------------------------------------------------------- alignment
@pytest.mark.parametrize("typestr,offset", [("<f4", 2), ("<f8", 4), ("<f2", 1), ("<f8", 2)])
def test_a_pointer_not_aligned_to_its_element_is_refused_before_any_launch(recorder, typestr, offset):
    """A hand-made __cuda_array_interface__ whose address is not a multiple of
    its element size would fault in the kernels and leave the CUDA context
    unusable: refused by the validation, naming the buffer, nothing launched."""
    base = 1 << 39
    good = FakeCuda(base, 64, typestr)
    bad = FakeCuda(base + 4096 + offset, 64, typestr)
    for call in (lambda: fc.clip_grad_norm_([good, bad], 1.0), lambda: fc.global_norm([good, bad]),
                 lambda: fc.clip_grad_value_([good, bad], 1.0), lambda: fc.Clipper([good, bad], 1.0),
                 lambda: fc.buffer_norms([good, bad])):
        n0, a0 = len(recorder.launches), recorder.allocs
        with pytest.raises(ValueError, match=r"buffer 1 \(a CUDA array\) starts at address .* not a "
                                             r"multiple of its element size.*nothing was launched"):
            call()
        assert len(recorder.launches) == n0 and recorder.allocs == a0


def test_an_empty_buffer_needs_no_alignment(recorder):
    fc.clip_grad_norm_([FakeCuda(1 << 39, 64), FakeCuda((1 << 39) + 4097, 0)], 1.0)


# ---------------------------------------------------------------- the function API's plan cache
@pytest.fixture
def fresh_cache():
    from fusedclip import _engine

    _engine._plan_cache.clear()
    yield _engine._plan_cache
    _engine._plan_cache.clear()


def waits(rec) -> int:
    """Host waits: synchronisations and device-to-host copies (each waits)."""
    return rec.syncs + len(rec.download_streams)


@pytest.mark.parametrize("call,most", [
    (lambda b: fc.clip_grad_norm_(b, 1.0, nonfinite="skip"), 1),
    (lambda b: fc.clip_grad_norm_(b, 1.0, nonfinite="error"), 1),
    (lambda b: fc.global_norm(b), 1),
    (lambda b: fc.clip_grad_value_(b, 1.0), 0)], ids=["clip-skip", "clip-error", "norm", "value"])
def test_the_function_api_on_cai_arrays_plans_once_and_waits_at_most_once(recorder, fresh_cache, call, most):
    from fusedclip.kernels import cuda as ck

    bufs = fakes(100, dtypes=("<f4", "<f8"))
    call(bufs)  # plans
    # the recorder runs no kernel: make every ring slot say "finite", as a real finalize would
    (_, _, b), = fresh_cache.values()
    g = b.cuda.gpu
    st = np.zeros((ck.RING, ck.STATE_LEN))
    st[:, ck.S_FINITE] = st[:, ck.S_SCALE] = 1.0
    recorder.upload(g.state, st)
    for _ in range(3):
        a0, w0, n0 = recorder.allocs, waits(recorder), len(recorder.launches)
        call(bufs)
        assert recorder.allocs == a0, "a repeated call over the same arrays built a plan"
        assert waits(recorder) - w0 <= most
        assert len(recorder.launches) > n0
    assert len(fresh_cache) == 1


def _cai(obj, **changes):
    obj.__cuda_array_interface__ = dict(obj.__cuda_array_interface__, **changes)


def _cached_rows(cache):
    (_, _, b), = [v for v in cache.values()][-1:]
    g = b.cuda.gpu
    return [(b.addr, b.n, b.code) for b in g.rows]


@pytest.mark.parametrize("change,want", [
    (dict(data=((1 << 40) + 8192, False)), ((1 << 40) + 8192, 256, 1)),   # moved
    (dict(shape=(128,)), (None, 128, 1)),                                  # shrunk in place
    (dict(typestr="<f8"), (None, 256, 0)),                                 # retyped in place
    (dict(shape=(2, 128), strides=(4, 8)), (None, 256, 1)),                # transposed: same range
], ids=["address", "shape", "dtype", "strides"])
def test_a_changed_layout_at_the_same_object_is_planned_again(recorder, fresh_cache, change, want):
    from fusedclip.kernels import cpu

    bufs = fakes(3)
    fc.clip_grad_norm_(bufs, 1.0, nonfinite="skip")
    addr0 = bufs[1].__cuda_array_interface__["data"][0]
    _cai(bufs[1], **change)
    a0 = recorder.allocs
    fc.clip_grad_norm_(bufs, 1.0, nonfinite="skip")
    assert recorder.allocs == a0 + 1  # a new plan
    addr, n, code = _cached_rows(fresh_cache)[1]
    codes = {0: cpu.F64, 1: cpu.F32}
    assert (addr, n, code) == (want[0] or addr0, want[1], codes[want[2]])


def test_a_cached_plan_is_not_served_to_an_array_that_became_invalid(recorder, fresh_cache):
    bufs = fakes(3)
    fc.clip_grad_norm_(bufs, 1.0, nonfinite="skip")
    base = bufs[2].__cuda_array_interface__["data"][0]
    for change, err in ((dict(strides=(8,)), "not contiguous"),                 # now strided
                        (dict(data=(base, True)), "read-only"),                  # now read-only
                        (dict(data=(base + 2, False)), "not a multiple"),        # now misaligned
                        (dict(typestr="<i4"), "has dtype")):                     # now an int array
        fresh = FakeCuda(base, 256)
        _cai(fresh, **change)
        bufs[2].__cuda_array_interface__ = fresh.__cuda_array_interface__
        n0 = len(recorder.launches)
        with pytest.raises((ValueError, TypeError), match=f"buffer 2.*{err}"):
            fc.clip_grad_norm_(bufs, 1.0, nonfinite="skip")
        assert len(recorder.launches) == n0
    bufs[2].__cuda_array_interface__ = FakeCuda(base, 256).__cuda_array_interface__
    fc.clip_grad_norm_(bufs, 1.0, nonfinite="skip")  # valid again: served the first plan


def test_the_cache_holds_no_reference_to_the_arrays(recorder, fresh_cache):
    import gc
    import weakref

    bufs = fakes(3)
    fc.clip_grad_norm_(bufs, 1.0, nonfinite="skip")
    refs = [weakref.ref(b) for b in bufs]
    del bufs
    gc.collect()
    assert all(r() is None for r in refs)


def test_another_list_of_new_objects_at_the_same_addresses_is_checked_again(recorder, fresh_cache):
    """The key is the objects (through weak references) and their layouts:
    new objects at recycled ids are never mistaken for the old ones."""
    fc.clip_grad_norm_(fakes(3), 1.0, nonfinite="skip")
    fc.clip_grad_norm_(fakes(3), 1.0, nonfinite="skip")  # same ids possibly, new objects
    bufs = fakes(3)
    _cai(bufs[0], strides=(8,))
    with pytest.raises(ValueError, match="buffer 0.*not contiguous"):
        fc.clip_grad_norm_(bufs, 1.0, nonfinite="skip")


# ---------------------------------------------------------------- the CUDA context, per thread
class FakeDriver:
    """The driver calls CoreLauncher makes, with a current context per thread
    (as CUDA keeps it): each call that needs one fails without it, as the
    real driver does (CUDA_ERROR_INVALID_CONTEXT)."""

    INVALID_CONTEXT = 201

    def __init__(self):
        import threading

        self.tls = threading.local()
        self.calls = []  # (name, thread id, context current then)

    def current(self):
        return getattr(self.tls, "ctx", 0)

    def _op(self, name, *ret):
        import threading

        self.calls.append((name, threading.get_ident(), self.current()))
        return (0,) + ret if self.current() else (self.INVALID_CONTEXT,)

    def cuCtxGetCurrent(self):
        self.calls.append(("cuCtxGetCurrent", None, None))
        return 0, self.current()

    def cuCtxSetCurrent(self, ctx):
        self.tls.ctx = int(ctx)
        return (0,)

    def cuMemAlloc(self, n):
        return self._op("cuMemAlloc", 1 << 44)

    def cuMemFree(self, addr):
        return self._op("cuMemFree")

    def cuMemcpyHtoDAsync(self, *a):
        return self._op("cuMemcpyHtoDAsync")

    def cuMemcpyDtoHAsync(self, host, src, n, stream):
        import ctypes

        ctypes.memset(host, 0, n)
        return self._op("cuMemcpyDtoHAsync")

    def cuMemcpyDtoDAsync(self, *a):
        return self._op("cuMemcpyDtoDAsync")

    def cuStreamSynchronize(self, s):
        return self._op("cuStreamSynchronize")

    def cuGetErrorString(self, err):
        return 0, b"CUDA_ERROR_INVALID_CONTEXT"


class FakeCore:
    """cuda.core's names as CoreLauncher uses them, over FakeDriver."""

    def __init__(self, drv):
        self.drv = drv

        class Device:
            compute_capability = (9, 0)

            def set_current(self):
                drv.tls.ctx = 7  # the primary context

            def create_stream(self):
                return Stream(99)

        class Stream:
            def __init__(self, h):
                self.handle = h

            @staticmethod
            def from_handle(h):
                return Stream(h)

            def create_graph_builder(self):
                return GraphBuilder()

        class GraphBuilder:
            def __init__(self):
                self.launches = []

            def begin_building(self):
                pass

            def end_building(self):
                pass

            def complete(self):
                return Graph(self.launches)

        class Graph:
            def __init__(self, launches):
                self.launches = launches

            def launch(self, stream):
                drv._op("graph.launch")

        def launch(stream, config, kernel, *args):
            if isinstance(stream, GraphBuilder):
                stream.launches.append(kernel)
                return
            if drv._op("launch:" + kernel)[0]:
                raise RuntimeError("CUDA_ERROR_INVALID_CONTEXT: no current context on this thread")

        self.names = {"Device": Device, "Stream": Stream, "LaunchConfig": lambda **kw: kw, "launch": launch}

    def __call__(self, name):
        return self.names[name]


@pytest.fixture
def fake_core():
    from fusedclip.kernels import cuda as ck

    drv = FakeDriver()
    L = _launch.CoreLauncher(driver=drv, api=FakeCore(drv))
    L.needs_cuda = False  # no numba-cuda driver check: the fake is the driver
    L._kernels = {name: name for name in ck.KERNELS}  # nothing to compile or load
    old = _launch.use_launcher(L)
    yield drv, L
    _launch.use_launcher(old)


def test_a_plan_built_on_one_thread_runs_on_another(fake_core):
    """The launcher made its context current only on the thread that built
    it: a Clipper built on one thread and called from another (a data loader's
    or a framework's worker thread) must make it current there before it
    launches, copies or waits."""
    import threading

    drv, L = fake_core
    c = fc.Clipper(fakes(10), 1.0, nonfinite="skip")
    errors, ran = [], []

    def work():
        try:
            for _ in range(3):  # plain launches, the capture, a replay
                ran.append(c().norm)
            fc.clip_grad_value_(fakes(4), 1.0)
            fc.global_norm(fakes(4))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors, errors
    worker = [(name, ctx) for name, tid, ctx in drv.calls if tid == t.ident]
    assert any(n.startswith("launch:") for n, _ in worker) and any(n == "graph.launch" for n, _ in worker)
    assert all(ctx == 7 for _, ctx in worker), [w for w in worker if w[1] != 7]


def test_the_context_check_is_small_per_call(fake_core):
    """A replayed clip asks the driver for the current context once per
    launcher call, not once per buffer (the driver's own cost, a thread-local
    read, is measured on a GPU by tests/gpu/real_suite.py)."""
    import threading
    import timeit

    drv, L = fake_core
    for nbuf in (10, 10_000):
        c = fc.Clipper(fakes(nbuf), 1.0, nonfinite="skip")
        c(), c()
        n0 = len(drv.calls)
        c()
        asks = [n for n, _, _ in drv.calls[n0:] if n == "cuCtxGetCurrent"]
        assert 1 <= len(asks) <= 2, (nbuf, drv.calls[n0:])
    # and from another thread, once the context is set there, the same
    out = []
    t = threading.Thread(target=lambda: (c(), out.append(len(drv.calls)), c(), out.append(len(drv.calls))))
    t.start()
    t.join()
    assert out[1] - out[0] <= 3
    per = min(timeit.repeat(L._enter, number=1000, repeat=5)) / 1000
    assert per < 5e-6, per  # Python's share, with a Python fake; the real binding is a Cython call


# ---------------------------------------------------------------- what the launches carry
def test_every_launch_passes_the_kernels_argument_count(recorder):
    """Each launch's arguments match its kernel's signature (the real-GPU suite
    checks the loaded cubins' parameter counts against the same table)."""
    from fusedclip import _family
    from fusedclip.kernels import cuda as ck

    _family._unit_plans.clear()
    bufs = fakes(5, dtypes=("<f4", "<f2"))
    c = fc.Clipper(bufs, 1.0, nonfinite="skip")
    c()
    fc.clip_grad_value_(bufs, 1.0)
    fc.clip_by_norm_(bufs, 1.0, nonfinite="skip")
    W = fakes(3)
    G = [FakeCuda(w.__cuda_array_interface__["data"][0] + (1 << 30), 256) for w in W]
    fc.clip_unitwise_(W, G, 0.01, nonfinite="skip")
    c._gpu.apply(ck.A_SCALE, 0.5)
    names = set()
    for name, grid, args in recorder.launches:
        assert len(args) == len(ck.SIGNATURES[name]), name
        assert all(isinstance(a, float) == (t == "float64") for a, t in zip(args, ck.SIGNATURES[name])), name
        names.add(name)
    assert names == set(ck.KERNELS)


#: every cuda.core name the launcher and the linking use, with the attributes
#: it reads (pyproject.toml's cuda extra says which releases were checked)
CORE_NAMES = {"Device": ("set_current", "compute_capability", "create_stream"),
              "Stream": ("from_handle", "handle", "create_graph_builder"),
              "LaunchConfig": (), "launch": (),
              "ObjectCode": ("from_cubin", "from_ptx", "get_kernel"),
              "Linker": ("link", "get_info_log", "close"),
              "LinkerOptions": ("arch", "verbose")}


def test_the_cuda_core_names_the_launcher_uses():
    pytest.importorskip("cuda.core")
    for name, attrs in CORE_NAMES.items():
        obj = _launch.core(name)
        for a in attrs:
            assert hasattr(obj, a), f"cuda.core {name}.{a}"
    try:
        from cuda.core.graph import GraphBuilder  # cuda.core >= 1.1
    except ImportError:
        GraphBuilder = _launch.core("GraphBuilder")
    for a in ("begin_building", "end_building", "complete"):
        assert hasattr(GraphBuilder, a)


def test_a_cupy_array_moved_or_reshaped_in_place_is_planned_again(recorder, fresh_cache, cupy_streams):
    bufs = cupy_bufs(3)
    fc.clip_grad_norm_(bufs, 1e30, nonfinite="skip")
    a0 = recorder.allocs
    fc.clip_grad_norm_(bufs, 1e30, nonfinite="skip")
    assert recorder.allocs == a0  # a hit
    new = FakeCupy((1 << 37) + (1 << 20), 128)  # the same object, now elsewhere and shorter
    bufs[1].__cuda_array_interface__, bufs[1].data, bufs[1].shape = (
        new.__cuda_array_interface__, new.data, new.shape)
    fc.clip_grad_norm_(bufs, 1e30, nonfinite="skip")
    assert recorder.allocs == a0 + 1
    assert _cached_rows(fresh_cache)[1][:2] == ((1 << 37) + (1 << 20), 128)


# ---------------------------------------------------------------- launch geometry
@pytest.mark.parametrize("name,value", [("FUSEDCLIP_GPU_THREADS", "3"), ("FUSEDCLIP_GPU_THREADS", "x"),
                                        ("FUSEDCLIP_GPU_THREADS", "1"), ("FUSEDCLIP_GPU_CHUNK", "0")])
def test_a_bad_launch_geometry_is_refused_at_import(name, value):
    import subprocess

    env = dict(os.environ, **{name: value})
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run([sys.executable, "-c", "import fusedclip.kernels.cuda"], env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and f"{name}={value!r}: must be" in r.stderr, r.stderr


def test_the_launch_geometry_comes_from_the_environment():
    import subprocess

    env = dict(os.environ, FUSEDCLIP_GPU_THREADS="32", FUSEDCLIP_GPU_CHUNK="1000")
    code = "from fusedclip.kernels import cuda as ck; print(ck.THREADS, ck.CHUNK)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["32", "1000"]
