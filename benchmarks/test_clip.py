"""pytest-benchmark suite over the `fusedclip bench` workloads.

    pytest benchmarks/ --benchmark-only [--benchmark-group-by=group] [-k small]

Each group is one workload in one mode; compare the rows within a group (the
floor row is the memory-bandwidth floor for the same bytes).  This suite is
not part of the test run (pytest's testpaths is tests/).  `fusedclip bench`
measures the same things interleaved in one run, which is what the README's
ratios come from.
"""
import numpy as np
import pytest

import fusedclip as fc
from fusedclip import bench
from fusedclip.kernels import cpu

KEYS = list(bench.workloads())
IMPLS = ["floor", "fusedclip", "fusedclip-plan", "naive-numpy", "torch-foreach"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["triggered", "not-triggered"])
@pytest.mark.parametrize("key", KEYS)
def test_clip(benchmark, data, key, mode, impl):
    bufs = data(key)
    w = bench.workloads()[key]
    benchmark.group = f"{key} {mode}"
    benchmark.extra_info["bytes"] = w.nbytes
    triggered = mode == "triggered"
    state = {"t": fc.global_norm(bufs) * 0.5 if triggered else 1e30}

    def threshold():
        if triggered:
            state["t"] *= 0.99
        return state["t"]

    if impl == "floor":
        buf = np.ones(w.nbytes // 8 + 1, dtype=np.uint64)

        def run():
            cpu.floor_read(buf)
            if triggered:
                cpu.floor_rw(buf)

        warm = lambda: cpu.floor_read(buf)
    elif impl == "fusedclip":
        run = lambda: fc.clip_grad_norm_(bufs, threshold())
        warm = lambda: fc.global_norm(bufs)
    elif impl == "fusedclip-plan":
        clipper = fc.Clipper(bufs, 1e30)

        def run():
            clipper.max_norm = threshold()
            clipper()

        warm = lambda: fc.global_norm(bufs)
    elif impl == "naive-numpy":
        run = lambda: bench.naive_numpy(bufs, threshold())
        warm = lambda: fc.global_norm(bufs)
    else:
        params = bench.torch_tensors(bufs)
        if params is None:
            pytest.skip("torch is not installed")
        run = lambda: bench.torch_clip(params, threshold())
        warm = lambda: fc.global_norm(bufs)
    rounds = 3 if impl == "naive-numpy" and key.startswith("small") else 10

    def setup():  # each round finds its data just read, as after backward
        warm()

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
