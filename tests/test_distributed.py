"""Distributed clipping with real processes on this machine.

* torch.distributed over gloo (CPU), 2 and 3 ranks: tests/dist_workers/torch_worker.py;
* MPI through mpi4py under ``mpirun -n 2`` (the mpich wheel's, in the
  environment's bin/): tests/dist_workers/mpi_worker.py.

Every rank runs every case of tests/dist_workers/cases.py (a sharded
gradient against the single-process reference, replicated buffers, inf/NaN
on one rank under each policy, p = 1, 2, inf, 3, 0.5, overflow) and checks
its own shard; here every rank must exit 0 and report the same bits.  A hang
fails after TIMEOUT seconds (every process is killed) instead of blocking.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "dist_workers"))
import cases  # noqa: E402

WORKERS = Path(__file__).parent / "dist_workers"
TIMEOUT = 90


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # localhost only
    env["OMP_NUM_THREADS"] = "1"  # k ranks on 2 shared cores
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKERS), env.get("PYTHONPATH")]))
    return env


def _wait_all(procs: list) -> list[tuple[int, str]]:
    """(returncode, output) of every process; all killed on the first timeout."""
    out = []
    try:
        for p in procs:
            text, _ = p.communicate(timeout=TIMEOUT)
            out.append((p.returncode, text))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        texts = [p.communicate()[0] for p in procs]
        pytest.fail(f"distributed run hung for {TIMEOUT} s (a rank took another path?):\n"
                    + "\n---\n".join(t[-3000:] for t in texts))
    return out


def _check(results: list[dict]) -> None:
    assert len(results) >= 2
    assert set(results[0]) == set(cases.CASES)
    for r in results[1:]:
        assert r == results[0], "the ranks saw different norms or scales"


@pytest.mark.parametrize("world", [2, 3])
def test_torch_gloo(world, tmp_path):
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(WORKERS / "torch_worker.py"), str(r), str(world),
                               str(store)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=_env(), cwd=tmp_path)
             for r in range(world)]
    done = _wait_all(procs)
    results = []
    for r, (rc, text) in enumerate(done):
        assert rc == 0, f"rank {r} failed:\n{text[-6000:]}"
        line = [x for x in text.splitlines() if x.startswith("RESULT ")]
        assert line, text[-3000:]
        results.append(json.loads(line[-1][len("RESULT "):]))
    _check(results)


def _mpirun() -> str | None:
    here = Path(sys.executable).parent
    for name in ("mpirun", "mpiexec"):
        p = here / name
        if p.exists():
            return str(p)
    return shutil.which("mpirun") or shutil.which("mpiexec")


def test_mpi4py_mpirun(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install mpi4py mpich)")
    run = _mpirun()
    if run is None:
        pytest.skip("no mpirun/mpiexec (pip install mpich)")
    # loading libmpi in a child, not here: importing mpi4py.MPI initialises MPI
    probe = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True,
                           text=True, timeout=TIMEOUT)
    if probe.returncode:
        pytest.skip(f"mpi4py cannot load an MPI library: {probe.stderr.strip()[-300:]}")
    p = subprocess.Popen([run, "-n", "2", sys.executable, str(WORKERS / "mpi_worker.py"), str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                         cwd=tmp_path)
    [(rc, text)] = _wait_all([p])
    assert rc == 0, f"mpirun failed:\n{text[-6000:]}"
    files = [tmp_path / f"result-{r}.json" for r in range(2)]
    assert all(f.exists() for f in files), text[-3000:]
    _check([json.loads(f.read_text()) for f in files])
