"""examples/numpy_mlp.py runs, clips, and learns; unclipped, the same run diverges."""
import os
import re
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "numpy_mlp.py")


def run(*args):
    return subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True,
                          timeout=120)


def test_numpy_mlp_clips_and_learns():
    r = run()
    assert r.returncode == 0, r.stderr
    m = re.search(r"summary: first_loss=(\S+) last_loss=(\S+) clip_events=(\d+) steps=(\d+)",
                  r.stdout)
    assert m, r.stdout
    first, last, clips, steps = float(m[1]), float(m[2]), int(m[3]), int(m[4])
    assert 0 < clips < steps  # clipping happened, and not on every step
    assert last < first / 5
    assert re.search(r"clip: norm \S+ -> 2\.0", r.stdout)


def test_numpy_mlp_unclipped_diverges():
    r = run("--max-norm", "inf")
    assert r.returncode != 0
    assert "NonFiniteError" in r.stderr
