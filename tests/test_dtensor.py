"""DTensor gradients (FSDP2, FSDP + tensor parallel, two meshes) in
fusedclip.torch, with real processes on this machine (gloo on localhost).

Each rank runs tests/dist_workers/dtensor_worker.py, which asserts every
case against the exact norm of the gathered full gradients, torch's own
result where torch has one, the count of collectives per call (one), and
the bad inputs (every rank raises, nothing is written, nothing hangs).
Here every rank must exit 0 and report the same bits (norms and scales as
float64 hex).  A hang fails after TIMEOUT seconds instead of blocking.
"""
import json
import subprocess
import sys

import pytest

from test_distributed import WORKERS, _env, _wait_all

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("this torch build has no gloo backend", allow_module_level=True)


def _run(world: int, layout: str, tmp_path) -> tuple[list[dict], list[int]]:
    procs = [subprocess.Popen([sys.executable, str(WORKERS / "dtensor_worker.py"), str(r), str(world),
                               str(tmp_path / "store"), layout], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path)
             for r in range(world)]
    results, outside = [], []
    for r, (rc, text) in enumerate(_wait_all(procs)):
        assert rc == 0, f"rank {r} failed:\n{text[-8000:]}"
        lines = text.splitlines()
        results.append(json.loads(next(x for x in reversed(lines) if x.startswith("RESULT "))[7:]))
        outside += [int(x.split()[1]) for x in lines if x.startswith("OUTSIDE ")]
    for r, res in enumerate(results[1:], 1):
        diff = sorted(k for k in set(res) | set(results[0]) if res.get(k) != results[0].get(k))
        assert not diff, f"rank {r} differs from rank 0 in {diff}"
    return results, outside


def _accelerate_ran(res: dict, name: str) -> None:
    """accelerate's FSDP2 clip ran through patch() where accelerate is installed."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return
    assert res[f"{name}/accelerate"].startswith("0x"), res[f"{name}/accelerate"]


@pytest.mark.parametrize("world", [2, 3])
def test_fsdp2(world, tmp_path):
    results, outside = _run(world, "fsdp", tmp_path)
    res = results[0]
    for p in ("1.0", "2.0", "inf"):
        assert res[f"fsdp/p={p}/clip"][2] is True and res[f"fsdp/p={p}/keep"][2] is False
    assert res["fsdp/nonfinite/inf"] == "inf" and res["fsdp/nonfinite/nan"] == "nan"
    assert len(res["overflow"]) == 2
    _accelerate_ran(res, "fsdp")
    if world == 3:  # uneven shards: FSDP2 pads; those bytes were checked unwritten
        assert max(outside) > 0


def test_the_same_bits_from_run_to_run(tmp_path):
    """Two runs of the same training step and clips: every norm and scale the
    same to the bit (the first run's results against the second's)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = _run(2, "fsdp", tmp_path / "a")
    second, _ = _run(2, "fsdp", tmp_path / "b")
    assert first[0] == second[0]


def test_fsdp_tp_and_two_meshes(tmp_path):
    results, _ = _run(4, "tp", tmp_path)
    res = results[0]
    # torch 2.13 fails on the two meshes ("must have the same mesh"); where a
    # later torch does not, the worker compares with it too
    assert isinstance(res["two-mesh/torch fails"], bool)
    _accelerate_ran(res, "two-mesh")
    for name in ("fsdp+tp", "fsdp-only", "two-mesh"):
        for p in ("1.0", "2.0", "inf"):
            assert res[f"{name}/p={p}/clip"][2] is True
