"""Behaviours that had no test: the parallel path really starts threads,
concurrent calls from Python threads, memory over 10,000 calls, the DLPack
path, the bench and CLI entry points, and no writes when a policy's call raises.
"""
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import fusedclip as fc
from conftest import CHUNK, DTYPES, DLPackOnly, assert_untouched, clamped, ref_norm, rel, scaled, snapshot
from fusedclip import cli
from fusedclip.kernels import cpu


# ---------------------------------------------------------------- parallel path
THREADS_PROBE = textwrap.dedent(
    """
    import os, numpy as np
    from fusedclip.kernels import cpu
    import fusedclip as fc

    def nthreads():
        return len(os.listdir("/proc/self/task"))

    # the documented threshold (DESIGN.md: 131,072 elements), not the module's
    # constant, so that moving the threshold is caught too
    big = np.ones(131072, np.float32)                     # the threshold, 4 chunks
    small = np.ones(131071, np.float32)                   # one element short
    out = {}
    def step(name, f):
        before = nthreads()
        f()
        out[name] = nthreads() - before

    t_small = cpu.Table([small.ctypes.data], [small.size], [1])
    t_big = cpu.Table([big.ctypes.data], [big.size], [1])
    step("serial-norm", lambda: t_small.norm(cpu.NORM_2, 2.0, 8))
    step("serial-scale", lambda: t_small.scale(1.0, 8))
    step("serial-clamp", lambda: t_small.clamp(np.inf, 8))
    step("serial-zero", lambda: t_small.zero(8))
    step("serial-1thread", lambda: t_big.norm(cpu.NORM_2, 2.0, 1))
    # libgomp keeps its pool and grows it for a larger team: each op asks for
    # one thread more than the last, so each must add a thread
    step("norm", lambda: t_big.norm(cpu.NORM_2, 2.0, 2))
    # a team is never larger than the chunk count: 16 chunks for the rest
    many = np.ones(1 << 19, np.float32)
    t_many = cpu.Table([many.ctypes.data], [many.size], [1])
    step("scale", lambda: t_many.scale(1.0, 3))
    step("clamp", lambda: t_many.clamp(np.inf, 4))
    step("zero", lambda: t_many.zero(5))
    step("api", lambda: fc.global_norm([many, np.ones(3)], num_threads=6))
    print(out)
    """
)


def test_documented_chunk_and_threshold():
    assert cpu.CHUNK == 32768 and cpu.PARALLEL_MIN == 131072


def test_parallel_path_starts_threads():
    """The sizes the thread tests use really run on several OS threads, and
    sizes below PARALLEL_MIN (or num_threads=1) really run on one: counted in
    /proc/self/task of a fresh process (OpenMP workers are invisible to
    threading and threadpoolctl)."""
    env = dict(os.environ, OMP_DYNAMIC="false")
    env.pop("OMP_NUM_THREADS", None)
    r = subprocess.run([sys.executable, "-c", THREADS_PROBE], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    grew = eval(r.stdout.strip())
    for k in ("serial-norm", "serial-scale", "serial-clamp", "serial-zero", "serial-1thread"):
        assert grew[k] == 0, (k, grew)
    assert grew["norm"] >= 1, grew  # a team of 2: one worker beside the caller
    for k in ("scale", "clamp", "zero", "api"):
        assert grew[k] >= 1, (k, grew)


# ---------------------------------------------------------------- Python threads
def test_concurrent_calls_on_disjoint_buffers():
    """The kernels release the GIL: several Python threads clipping their own
    buffers at once must each get the exact norm and the scale rule."""
    nthreads, rounds = 4, 6
    barrier = threading.Barrier(nthreads)
    errors = []

    def work(k):
        try:
            rng = np.random.default_rng(100 + k)
            dt = DTYPES[k % len(DTYPES)]
            # big enough for the OpenMP path in each Python thread
            sizes = (cpu.PARALLEL_MIN + 17 * k, 1000 + k, 3)
            for r in range(rounds):
                bufs = [(rng.standard_normal(n) * 10).astype(dt) for n in sizes]
                orig = [b.copy() for b in bufs]
                barrier.wait()
                stats = fc.Clipper(bufs, 1.0, num_threads=2)()
                if p_ok := rel(stats.norm, ref_norm(orig)) > 1e-13:
                    errors.append((k, r, "norm", p_ok))
                for b, o in zip(bufs, orig):
                    if not np.array_equal(b, scaled(o, 1.0 / stats.norm)):
                        errors.append((k, r, "scale"))
                v = fc.global_norm(orig, 1.0)
                if rel(v, ref_norm(orig, 1.0)) > 1e-13:
                    errors.append((k, r, "l1"))
                fc.clip_grad_value_(orig, 0.5)
                if max(float(np.abs(o.astype(np.float64)).max()) for o in orig) > 0.5:
                    errors.append((k, r, "clamp"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append((k, repr(e)))
            barrier.abort()

    ts = [threading.Thread(target=work, args=(k,)) for k in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


# ---------------------------------------------------------------- memory
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_memory_growth_over_ten_thousand_calls():
    rng = np.random.default_rng(0)
    g = [rng.standard_normal(n) for n in (64, 3, 100)] + [rng.standard_normal((4, 6))[:, ::2]]
    bad = [np.array([1.0, np.nan]), np.ones(3)]
    clipper = fc.Clipper(g, 1.0)

    def one_round():
        for b in g:
            b *= 3.0  # so that every call clips (scale + write-back of the staged view)
        clipper()
        fc.clip_grad_norm_(g, 1.0)
        fc.global_norm(g, 3.0)
        fc.clip_grad_value_(g, 0.5)
        try:
            fc.clip_grad_norm_(bad, 1.0)
        except fc.NonFiniteError:
            pass

    for _ in range(500):  # warm up caches, interned objects, allocator pools
        one_round()
    rss0 = _rss_bytes()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(2000):
            one_round()
        mid, _ = tracemalloc.get_traced_memory()
        for _ in range(8000):
            one_round()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss1 = _rss_bytes()
    # 10,000 rounds of 5 calls: a leak of even 8 bytes per call is 400 KB
    assert end - base < 64 * 1024, (base, mid, end)
    assert end - mid < 32 * 1024, (mid, end)  # no trend once warm
    assert rss1 - rss0 < 4 * 2**20, (rss0, rss1)


# ---------------------------------------------------------------- DLPack
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["f64", "f32", "f16"])
def test_dlpack_objects_are_read_and_written_in_place(dtype, rng):
    a = (rng.standard_normal(CHUNK + 7) * 10).astype(dtype)
    b = (rng.standard_normal((7, 9)) * 10).astype(dtype)
    objs = [DLPackOnly(a), DLPackOnly(b)]
    assert not hasattr(objs[0], "__array_interface__") and not hasattr(objs[0], "__array__")
    orig = [a.copy(), b.copy()]
    assert rel(fc.global_norm(objs), ref_norm(orig)) <= 1e-13
    assert_untouched([a, b], snapshot(orig))  # reading wrote nothing
    norm = fc.clip_grad_norm_(objs, 1.0)
    assert rel(norm, ref_norm(orig)) <= 1e-13
    np.testing.assert_array_equal(a, scaled(orig[0], 1.0 / norm))  # written in place
    np.testing.assert_array_equal(b, scaled(orig[1], 1.0 / norm))
    scaled_a = a.copy()
    fc.clip_grad_value_(objs, 0.01)
    np.testing.assert_array_equal(a, clamped(scaled_a, 0.01))


def test_dlpack_of_read_only_array_is_rejected_for_writers():
    a = np.ones(5)
    a.flags.writeable = False
    try:
        np.from_dlpack(DLPackOnly(a))
    except BufferError:
        pytest.skip("this numpy refuses to export read-only arrays through DLPack")
    with pytest.raises(ValueError, match="buffer 0"):
        fc.clip_grad_norm_([DLPackOnly(a)], 1e-3)
    assert (a == 1).all()


# ---------------------------------------------------------------- bench / CLI
def test_bench_quick_writes_complete_json(tmp_path, capsys):
    out = tmp_path / "q.json"
    rc = cli.main(["bench", "--quick", "--workload", "small", "--mode", "triggered",
                   "--reps", "2", "--threads", "1", "--json", str(out)])
    assert rc == 0
    assert "x floor" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"date", "machine", "config", "workloads", "results"} <= set(doc)
    assert doc["config"]["quick"] is True and doc["config"]["modes"] == ["triggered"]
    assert set(doc["workloads"]) == {"small/float32"}
    assert doc["workloads"]["small/float32"]["buffers"] == 10_000
    keys = {"workload", "dtype", "mode", "impl", "median_s", "times_s", "bytes_moved", "gbps",
            "floor_s", "x_floor", "norm", "rel_err", "speedup"}
    impls = set()
    for r in doc["results"]:
        assert keys <= set(r), set(r) ^ keys
        impls.add(r["impl"])
        for k in ("median_s", "gbps", "floor_s", "x_floor"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r[k])
        assert all(math.isfinite(v) and v > 0 for v in r["speedup"].values()), r["speedup"]
        if r["impl"].startswith("fusedclip"):
            assert r["rel_err"] <= 1e-12 and "naive-numpy" in r["speedup"]
    assert {"floor", "fusedclip", "fusedclip-plan", "naive-numpy"} <= impls


def test_bench_help_and_top_level_help():
    exe = [sys.executable, "-m", "fusedclip.cli"]
    r = subprocess.run(exe + ["bench", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for opt in ("--quick", "--workload", "--dtype", "--mode", "--threads", "--reps", "--json",
                "--plot", "--markdown"):
        assert opt in r.stdout, opt
    r = subprocess.run(exe + ["--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "info" in r.stdout and "bench" in r.stdout
    r = subprocess.run(exe, capture_output=True, text=True)
    assert r.returncode == 2  # a command is required


def test_info_reports_the_real_constants(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"{cpu.CHUNK} elements; one thread below {cpu.PARALLEL_MIN} elements" in out
    assert f"{cpu.max_threads()} (OMP_NUM_THREADS=" in out
    assert cpu.info()["simd_selected"] in out


# ---------------------------------------------------------------- no writes on raise
def _nan_grads():
    rng = np.random.default_rng(5)
    g = [rng.standard_normal(40) * 10, rng.standard_normal(CHUNK + 3).astype(np.float32),
         rng.standard_normal(9).astype(ml_dtypes.bfloat16)]
    g[0][3] = np.nan
    g[1][7] = np.inf
    return g


def _read_only(n=5):
    ro = np.ones(n)
    ro.flags.writeable = False
    return ro


RAISING = {
    "read-only": (lambda g: g + [_read_only()], ValueError, "read-only"),
    "overlap": (lambda g: g + [g[0][10:20]], ValueError, "overlap"),
    "dtype": (lambda g: g + [np.ones(3, np.int32)], TypeError, "buffer 3"),
    "not-array": (lambda g: g + [[1.0, 2.0]], TypeError, "buffer 3"),
}


@pytest.mark.parametrize("policy", ["zero", "random", "propagate"])
@pytest.mark.parametrize("case", RAISING)
def test_replacing_policies_write_nothing_when_the_call_raises(policy, case):
    make, exc, needle = RAISING[case]
    g = _nan_grads()
    bufs = make(g)
    arrays = [b for b in bufs if isinstance(b, np.ndarray)]
    snap = snapshot(arrays)
    with pytest.raises(exc, match=needle):
        fc.clip_grad_norm_(bufs, 1.0, nonfinite=policy, rng=1)
    with pytest.raises(exc, match=needle):
        fc.Clipper(bufs, 1.0, nonfinite=policy, rng=1)()
    assert_untouched(arrays, snap)
    # the control: without the bad buffer, the same policy does write
    fc.clip_grad_norm_(g, 1.0, nonfinite=policy, rng=1)
    assert not all(np.asarray(a).tobytes() == s for a, s in zip(g, snap))


@pytest.mark.parametrize("policy", ["zero", "random"])
def test_replacing_policies_with_bad_scalars_write_nothing(policy):
    g = _nan_grads()
    snap = snapshot(g)
    for kw, exc in [(dict(max_norm=-1.0), ValueError), (dict(max_norm=1.0, norm_type=0.0), ValueError),
                    (dict(max_norm=1.0, num_threads=0), ValueError),
                    (dict(max_norm=1.0, rng="seed"), TypeError if policy == "random" else None)]:
        if exc is None:
            continue
        with pytest.raises(exc):
            fc.clip_grad_norm_(g, nonfinite=policy, **kw)
    assert_untouched(g, snap)
