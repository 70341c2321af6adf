"""The fusedclip command."""
import subprocess
import sys
from pathlib import Path

import fusedclip


def fusedclip_cmd():
    exe = Path(sys.executable).parent / "fusedclip"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fusedclip.cli"]


def test_info_reports_build_and_runtime():
    out = subprocess.run(fusedclip_cmd() + ["info"], capture_output=True, text=True, check=True).stdout
    assert fusedclip.__version__ in out
    for key in ("compiler flags", "-fopenmp", "SIMD selected", "OpenMP threads", "CUDA"):
        assert key in out, key


def test_console_script_is_installed():
    assert (Path(sys.executable).parent / "fusedclip").exists()


def test_unknown_command_fails():
    r = subprocess.run(fusedclip_cmd() + ["frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr
