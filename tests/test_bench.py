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
