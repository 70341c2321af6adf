"""Bitwise determinism for every thread count, and the thread controls."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fusedclip as fc
from conftest import DTYPE_IDS, DTYPES, scaled

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
