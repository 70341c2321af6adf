"""examples/torch_loop.py runs, clips some steps and its loss goes down."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
EXAMPLE = Path(__file__).parent.parent / "examples" / "torch_loop.py"


def test_the_torch_example_runs_and_clips():
    r = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "40"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"done: 40 steps, (\d+) clipped, loss ([\d.]+) -> ([\d.]+)", r.stdout)
    assert m, r.stdout
    clipped, first, last = int(m[1]), float(m[2]), float(m[3])
    assert 0 < clipped < 40 and last < first
    assert "after clip  1.0000" in r.stdout  # a clipped step's norm is the threshold
