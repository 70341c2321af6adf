"""Bitwise determinism for every thread count, and the thread controls: the bound
on num_threads, the parallel path really starting threads, forks after a
parallel call, and concurrent calls from Python threads."""
import math
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import DTYPE_IDS, DTYPES, assert_untouched, ref_norm, rel, scaled, snapshot
from helpers import grads
from threadpoolctl import threadpool_info, threadpool_limits

import fusedclip as fc
from fusedclip.kernels import cpu

THREADS = [1, 2, 3, 4, 7, 16]


def big(dtype, seed=0):
    rng = np.random.default_rng(seed)
    # enough elements to run in parallel, and chunks of unequal sizes
    return [(rng.standard_normal(n) * 3).astype(dtype) for n in (400_000, 33_000, 5, 250_001, 70_000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 3.0])
def test_norm_bitwise_identical_for_any_thread_count(dtype, p):
    bufs = big(dtype)
    norms = {fc.global_norm(bufs, p, num_threads=t) for t in THREADS}
    assert len(norms) == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_clip_result_identical_for_any_thread_count(dtype):
    results = []
    for t in THREADS:
        bufs = big(dtype)
        n = fc.clip_grad_norm_(bufs, 1.0, num_threads=t)
        results.append((n, b"".join(b.tobytes() for b in bufs)))
    assert len(set(results)) == 1
    ref = big(dtype)
    n = results[0][0]
    assert results[0][1] == b"".join(scaled(b, 1.0 / n).tobytes() for b in ref)


def test_threadpoolctl_limits_are_honoured_and_harmless():
    from fusedclip.kernels import cpu

    bufs = big(np.float32)
    free = fc.global_norm(bufs)
    libs = [i for i in threadpool_info() if i["user_api"] == "openmp"]
    assert libs, "the OpenMP runtime fusedclip links should be visible to threadpoolctl"
    with threadpool_limits(1, user_api="openmp"):
        assert cpu.max_threads() == 1
        assert fc.global_norm(bufs) == free


@pytest.mark.parametrize("omp", ["1", "2", "5"])
def test_omp_num_threads_is_the_default(omp):
    code = (
        "import numpy as np, fusedclip as fc; from fusedclip.kernels import cpu;"
        "x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32);"
        "print(cpu.max_threads(), fc.global_norm(x).hex())"
    )
    env = dict(os.environ, OMP_NUM_THREADS=omp)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    threads, norm = out.stdout.split()
    assert threads == omp
    x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    assert norm == fc.global_norm(x).hex()


def test_the_stealing_loop_visits_every_chunk_once_under_oversubscription():
    """kernels/tableloop.h: static ranges, idle threads steal from the back of
    others.  With 3 to 16 threads on this machine's cores, threads are often
    descheduled mid-range, so steals happen on most calls: every chunk must
    still be reduced once (the norm's bits equal the serial ones) and written
    once (a scale by 0.5, then by 2, restores every element only if each was
    scaled exactly once each time; zeroing reaches every chunk)."""
    from fusedclip.kernels import cpu

    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 3 * cpu.CHUNK, 60)
    bufs = [rng.standard_normal(int(s)) for s in sizes] + [rng.standard_normal(300) for _ in range(400)]
    t = cpu.Table([b.ctypes.data for b in bufs], [b.size for b in bufs], [cpu.F64] * len(bufs))
    want = t.norm(cpu.NORM_2, 2.0, 1)
    before = [b.copy() for b in bufs]
    for k in range(40):
        nt = 3 + k % 14
        assert t.norm(cpu.NORM_2, 2.0, nt) == want
        t.scale(0.5, nt)
        t.scale(2.0, nt)
        rows = t.row_norms(cpu.NORM_2, 2.0, nt)[0]
        assert rows.tolist() == t.row_norms(cpu.NORM_2, 2.0, 1)[0].tolist()
    assert all(np.array_equal(a, b) for a, b in zip(bufs, before))
    actions = np.zeros(len(bufs), np.int8)
    actions[::2] = cpu.ROW_ZERO
    t.scale_rows(actions, np.ones(len(bufs)), 7)
    assert all((not b.any()) == (i % 2 == 0) for i, b in enumerate(bufs))
    t.zero(5)
    assert not any(b.any() for b in bufs)


TOO_MANY = [1025, 20000, 100000, 2**31, 2**63]  # cpu.MAX_THREADS is 1024


def run_probe(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter; a crash or hang fails, not kills, the test."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the probe hung for {timeout} s (stderr: {e.stderr!r})")


# ---------------------------------------------------------------- num_threads: bounded before OpenMP sees it
def test_max_threads_is_a_documented_bound():
    assert cpu.MAX_THREADS == 1024
    assert fc._policy.MAX_THREADS == cpu.MAX_THREADS


@pytest.mark.parametrize("n", TOO_MANY, ids=str)
def test_too_many_threads_is_a_value_error_and_the_interpreter_survives(n):
    """Every entry point, in a subprocess: libgomp aborted (20000), segfaulted
    (100000) or raised an OverflowError without the argument's name (>= 2**31)."""
    r = run_probe(f"""
        import numpy as np, fusedclip as fc
        from fusedclip.kernels import cpu
        n = {n}
        a = np.linspace(-3, 3, 4 * cpu.PARALLEL_MIN).astype(np.float32)
        snap = a.tobytes()
        calls = [
            lambda: fc.clip_grad_norm_([a], 1e-3, num_threads=n),
            lambda: fc.global_norm([a], num_threads=n),
            lambda: fc.clip_grad_value_([a], 1e-3, num_threads=n),
            lambda: fc.Clipper([a], 1e-3, num_threads=n),
        ]
        c = fc.Clipper([a], 1e-3)
        def assign():
            c.num_threads = n
        calls.append(assign)
        t = cpu.Table([a.ctypes.data], [a.size], [1])
        calls += [lambda: t.norm(cpu.NORM_2, 2.0, n), lambda: t.scale(0.5, n),
                  lambda: t.clamp(1e-3, n), lambda: t.zero(n),
                  lambda: cpu.floor_read(a, n), lambda: cpu.floor_rw(a, n)]
        for k, call in enumerate(calls):
            try:
                call()
            except ValueError as e:
                assert "num_threads" in str(e) and str(cpu.MAX_THREADS) in str(e), (k, e)
            else:
                raise AssertionError(f"call {{k}} accepted num_threads={{n}}")
        assert a.tobytes() == snap, "modified"
        assert c.num_threads is None
        print("survived")
    """)
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("n", TOO_MANY, ids=str)
def test_too_many_threads_names_the_argument_and_writes_nothing(n):
    g = grads()
    snap = snapshot(g)
    for call in (lambda: fc.clip_grad_norm_(g, 1e-3, num_threads=n),
                 lambda: fc.global_norm(g, num_threads=n),
                 lambda: fc.clip_grad_value_(g, 1e-3, num_threads=n),
                 lambda: fc.Clipper(g, 1e-3, num_threads=n)):
        with pytest.raises(ValueError, match="num_threads"):
            call()
    assert_untouched(g, snap)


@pytest.mark.parametrize("bad", [0, -1, True, 1.0, "2"], ids=repr)
def test_table_rejects_bad_thread_counts_without_overflow_error(bad):
    a = np.ones(10, np.float64)
    t = cpu.Table([a.ctypes.data], [a.size], [0])
    exc = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
    with pytest.raises(exc, match="num_threads"):
        t.norm(cpu.NORM_2, 2.0, bad)
    with pytest.raises(exc, match="num_threads"):
        t.scale(0.5, bad)
    assert (a == 1.0).all()


@pytest.mark.parametrize("n", [1, 2, 7, 1024])
def test_thread_counts_up_to_the_bound_give_the_exact_norm(n):
    """More threads than chunks are accepted (the team is capped at the chunk count)."""
    g = [np.linspace(-2, 2, 3 * cpu.CHUNK + 5), np.arange(4 * cpu.PARALLEL_MIN, dtype=np.float32) % 5]
    want = ref_norm(g)
    got = fc.global_norm(g, num_threads=n)
    assert rel(got, want) <= 1e-12
    assert got == fc.global_norm(g, num_threads=1)  # bitwise, any thread count


# ---------------------------------------------------------------- a process forked after a parallel call
FORK_PROBE = """
    import os, signal, sys
    import multiprocessing as mp
    import numpy as np, fusedclip as fc
    from fusedclip.kernels import cpu

    a = (np.arange(4 * cpu.PARALLEL_MIN, dtype=np.float64) % 7) - 3
    assert a.size >= cpu.PARALLEL_MIN and a.size > 2 * cpu.CHUNK  # the parallel path
    parent = fc.global_norm([a], num_threads=2)  # the OpenMP team now exists

    def child_norms(_=None):
        signal.alarm(40)  # a hung child ends itself
        b = a.copy()
        norms = [fc.global_norm([a], num_threads=2), fc.global_norm([a])]
        fc.clip_grad_norm_([b], 1.0, num_threads=2)
        return norms + [fc.global_norm([b], num_threads=2), float(cpu.forked())]

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, repr(child_norms()).encode())
        finally:
            os._exit(0)
    os.close(w)
    raw = os.read(r, 4096).decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and raw, status
    with mp.get_context("fork").Pool(2) as pool:
        pooled = pool.map(child_norms, range(2))
    assert not cpu.forked()
    print(repr([parent, eval(raw)] + pooled))
"""


def test_a_process_forked_after_a_parallel_call_works():
    r = run_probe(FORK_PROBE, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    parent, *children = eval(r.stdout.strip().splitlines()[-1])
    a = (np.arange(4 * cpu.PARALLEL_MIN, dtype=np.float64) % 7) - 3
    want = ref_norm([a])
    assert rel(parent, want) <= 1e-12
    assert len(children) == 3
    for two, default, clipped, forked in children:
        assert two == parent and default == parent  # bitwise: serial gives the same bits
        assert rel(clipped, 1.0) <= 1e-12
        assert forked == 1.0


def test_the_parent_keeps_its_threads_after_forking():
    r = run_probe("""
        import os, numpy as np, fusedclip as fc
        from fusedclip.kernels import cpu
        a = np.ones(8 * cpu.PARALLEL_MIN)  # 2**20 ones: the norm is 2**10
        fc.global_norm([a], num_threads=2)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if cpu.forked() else 1)
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0 and not cpu.forked()
        assert fc.global_norm([a], num_threads=2) == 2.0 ** 10
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# ---------------------------------------------------------------- the parallel path really starts threads
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


# ---------------------------------------------------------------- concurrent calls from Python threads
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
