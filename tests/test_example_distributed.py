"""examples/distributed_torch.py runs: 2 processes on gloo, fusedclip's
distributed norm equal to the full gradient's at every step, the spike
clipped and the one-rank inf skipped on every rank."""
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_torch.py"


def test_distributed_torch_example_runs():
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    try:
        r = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "20"], capture_output=True,
                           text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the example hung:\n{(e.stdout or b'')[-3000:]!r}")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "OK: fusedclip's distributed norm" in out and "identical" in out, out[-3000:]
    step = {int(line.split()[1]): line for line in out.splitlines() if line.startswith("step ")}
    assert "clipped True" in step[10]  # the spike in one rank's shard: clipped everywhere
    assert "finite False" in step[20] and "clipped False" in step[20]  # inf on one rank: skipped
