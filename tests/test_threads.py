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
