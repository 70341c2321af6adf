"""'Not triggered' means not written: proven with write-protected pages.

The buffers live in an mmap whose pages are made read-only with mprotect
after numpy has wrapped them (numpy still believes they are writable).  Any
store, even of an unchanged value, kills the process with SIGSEGV, so each
case runs in a subprocess; the triggered case is the control that shows the
trap works.
"""
import signal
import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent(
    """
    import ctypes, mmap, sys
    import numpy as np, fusedclip as fc
    n = 1 << 20
    m = mmap.mmap(-1, n * 4)
    a = np.frombuffer(m, dtype=np.float32)
    a[:] = 1e-3
    a[7] = BAD
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(a.ctypes.data, n * 4, 1) == 0  # PROT_READ
    """
)

CASES = {
    "function": "fc.clip_grad_norm_([a], MAX)",
    "clipper": "c = fc.Clipper([a[:1000], a[1000:]], MAX); c(); c()",
    "strided": "fc.clip_grad_norm_([a[::2], a[1::2]], MAX)",
    "inf-norm": "fc.clip_grad_norm_([a], MAX, float('inf'))",
}
NONFINITE = {
    "skip": "s = fc.Clipper([a], MAX, nonfinite='skip')(); assert not s.finite",
    "error": "try:\n    fc.clip_grad_norm_([a], MAX)\nexcept fc.NonFiniteError: pass",
}


def run(stmt, max_norm, bad="1e-3"):
    code = PRELUDE.replace("BAD", bad) + stmt.replace("MAX", repr(max_norm)) + "\nprint('ok')\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("case", CASES)
def test_not_triggered_never_stores(case):
    r = run(CASES[case], 1e9)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.parametrize("case", NONFINITE)
@pytest.mark.parametrize("bad", ["np.nan", "np.inf"])
def test_skip_and_error_policies_never_store(case, bad):
    r = run(NONFINITE[case], 1e-9, bad)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.parametrize("case", ["function", "clipper", "strided"])
def test_control_triggered_clip_does_store(case):
    r = run(CASES[case], 1e-9)
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr[-500:])
