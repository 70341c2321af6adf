"""The GPU suites, each in its own process (the simulator and real compilation
cannot share one), plus the tests that need a real GPU.

* tests/gpu/sim_suite.py -- the kernels and the dispatch under the Numba CUDA
  simulator (NUMBA_ENABLE_CUDASIM=1);
* tests/gpu/ptx_suite.py -- every kernel compiled for sm_80 and sm_90 and
  assembled by ptxas: no spills, registers under the bound;
* below -- real-GPU tests, skipped cleanly where there is no GPU.

They need the [cuda] extra (numba-cuda and the pinned CUDA 13.0 toolkit
wheels); without it they are skipped with the reason.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedclip as fc
from conftest import ref_norm, rel, scaled

HERE = Path(__file__).parent
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba") is not None and importlib.util.find_spec(
    "numba_cuda") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda not installed: pip install '.[cuda]'")


def run_suite(paths: list[Path], simulator: bool, shards: int = 1, engine: str | None = None) -> None:
    """Run a suite in its own process; ``shards`` processes at once, each
    taking every shards-th test (conftest: FUSEDCLIP_TEST_SHARD), where the
    machine has the cores (the simulator runs each CUDA thread as a Python
    thread, on one core)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "FUSEDCLIP_TEST_ENGINE")}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    if engine is not None:  # the engine contract's engine (conftest.engine_here)
        env["FUSEDCLIP_TEST_ENGINE"] = engine
    shards = max(1, min(shards, len(os.sched_getaffinity(0))))
    procs = []
    for i in range(shards):
        e = dict(env, FUSEDCLIP_TEST_SHARD=f"{i}/{shards}") if shards > 1 else env
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, paths)],
            cwd=HERE.parent, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for i, p in enumerate(procs):
        out = p.communicate()[0]
        tail = out[-6000:]
        print(f"--- shard {i} of {shards}\n{tail}")
        assert p.returncode == 0, tail
        assert " passed" in out and " failed" not in out


@needs_numba
def test_simulator_suite():
    """The kernels and dispatch (sim_suite.py) and the engine contract
    (test_contract.py) on the CUDA engine under the simulator."""
    run_suite([HERE / "gpu" / "sim_suite.py", HERE / "test_contract.py"], simulator=True, shards=2)


@needs_numba
def test_real_compile_suite():
    run_suite([HERE / "gpu" / "ptx_suite.py"], simulator=False)


# ---------------------------------------------------------------- on a real GPU
def gpu_available() -> bool:
    if not HAVE_NUMBA_CUDA or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    from numba import cuda

    return cuda.is_available()


needs_gpu = pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU here")


@needs_gpu
def test_real_gpu_suite():
    """The CUDA engine on the real GPU (tests/gpu/real_suite.py) and the
    engine contract on it (tests/test_contract.py)."""
    run_suite([HERE / "gpu" / "real_suite.py", HERE / "test_contract.py"], simulator=False, engine="gpu")


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["f64", "f32", "f16"])
def test_real_gpu_clip_matches_cpu(dtype):
    from numba import cuda

    rng = np.random.default_rng(0)
    hs = [(rng.standard_normal(n) * 10).astype(dtype) for n in (3, 100_000, 1_000_003)]
    ds = [cuda.to_device(h) for h in hs]
    stats = fc.Clipper(ds, 1.0)()
    assert rel(stats.norm, ref_norm(hs)) <= 1e-12
    for h, d in zip(hs, ds):
        np.testing.assert_array_equal(d.copy_to_host(), scaled(h, stats.scale))


@needs_gpu
@pytest.mark.parametrize("mod", ["cupy", "torch"])
def test_real_gpu_cupy_and_torch_if_present(mod):
    if importlib.util.find_spec(mod) is None:
        pytest.skip(f"{mod} is not installed: nothing to check its CUDA arrays with")
    if mod == "cupy":
        import cupy as xp

        g = [xp.ones(1000, dtype=xp.float32) * 3]
        back = lambda a: xp.asnumpy(a)
    else:
        import torch as xp

        g = [xp.ones(1000, dtype=xp.float32, device="cuda") * 3]
        back = lambda a: a.cpu().numpy()
    n = fc.clip_grad_norm_(g, 1.0)
    assert rel(n, ref_norm([np.full(1000, 3.0, np.float32)])) <= 1e-12
    got = back(g[0])
    np.testing.assert_array_equal(got, scaled(np.full(1000, 3.0, np.float32), 1.0 / n))
    assert rel(ref_norm([got]), 1.0) <= 1e-6
