"""`fusedclip bench` runs, writes its JSON, and its reference checks out."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fusedclip import bench
from conftest import ref_norm


def test_gpt_like_shapes():
    shapes = bench.gpt_like_shapes()
    assert 140 <= len(shapes) <= 160
    assert 20e6 <= sum(math.prod(s) for s in shapes) <= 30e6


def test_workload_set_is_the_documented_one():
    keys = set(bench.workloads())
    assert keys == {"big/float32", "gpt/float32", "small/float32", "medium/float32",
                    "gpt/float64", "gpt/bfloat16", "gpt/float16"}
    assert bench.workloads()["big/float32"].elements == 64 * 2**20
    assert bench.workloads()["small/float32"].shapes == ((256,),) * 10_000


def test_exact_norm_matches_the_test_reference():
    bufs = [np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 1e20, np.ones(3)]
    assert bench.exact_norm(bufs) == pytest.approx(ref_norm(bufs), rel=1e-15)


def test_naive_numpy_is_algorithm_1():
    g = [np.array([3.0, 0.0]), np.array([4.0])]
    assert bench.naive_numpy(g, 1.0) == 5.0
    np.testing.assert_allclose(np.concatenate(g), [0.6, 0.0, 0.8])


def test_cli_runs_one_workload_and_writes_json(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run(
        [sys.executable, "-m", "fusedclip.cli", "bench", "--workload", "small", "--reps", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "x floor" in r.stdout and "[2/2]" in r.stderr  # table and progress
    doc = json.loads(out.read_text())
    impls = {x["impl"] for x in doc["results"]}
    assert {"floor", "fusedclip", "fusedclip-plan", "naive-numpy"} <= impls
    assert {x["mode"] for x in doc["results"]} == {"triggered", "not-triggered"}
    for x in doc["results"]:
        assert x["median_s"] > 0 and len(x["times_s"]) == 2
        if x["impl"].startswith("fusedclip"):
            assert x["rel_err"] <= 1e-12 and "naive-numpy" in x["speedup"]
    assert doc["machine"]["simd"]


def test_cli_rejects_unknown_workload():
    r = subprocess.run([sys.executable, "-m", "fusedclip.cli", "bench", "--workload", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown workload" in r.stderr


def _float16_overflowing_workload():
    # 200,000 float16 values ~N(0, 1): naive numpy's float16 dot product is
    # ~2e5, past float16's 65504, so its norm is inf
    return bench.Workload("f16", "float16", ((200_000,), (7,)), "naive numpy's float16 norm overflows")


def test_the_float16_naive_numpy_peer_warns_nothing():
    """Its overflow is the peer's result (the table reports the inf): numpy's
    RuntimeWarning must not reach the user's terminal, from the untimed first
    call or the timed ones."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup = bench.Setup(_float16_overflowing_workload(), None)
        rows = bench.run_workload(setup, "triggered", 1, None)
    assert setup.first["naive-numpy"] == math.inf  # the overflow happened, and is reported
    assert next(r for r in rows if r.impl == "naive-numpy").rel_err == math.inf
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_only_the_benchmarks_peer_is_silenced():
    """naive_numpy itself (Algorithm 1 as a user writes it) still warns, and
    numpy's error state is the caller's again after the peer."""
    import warnings

    before = np.geterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bench.naive_peer([np.ones(100_000, np.float16)], 1.0) == math.inf
        assert not caught
        assert bench.naive_numpy([np.ones(100_000, np.float16)], 1.0) == math.inf
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    assert np.geterr() == before


def test_cli_float16_bench_prints_no_runtime_warning(tmp_path):
    """End to end: 16 x 1M float16 (medium in float16): the naive peer's
    per-buffer norm overflows; stderr holds progress, not a warning."""
    out = tmp_path / "f16.json"
    r = subprocess.run(
        [sys.executable, "-m", "fusedclip.cli", "bench", "--workload", "medium", "--dtype", "float16",
         "--mode", "not-triggered", "--reps", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "RuntimeWarning" not in r.stderr and "overflow" not in r.stderr, r.stderr
    naive = [x for x in json.loads(out.read_text())["results"] if x["impl"] == "naive-numpy"]
    assert naive and math.isinf(naive[0]["norm"])  # the table and the JSON report the overflow
