"""Helpers shared by several test files: sample gradients, the writing entry
points, and a counter of Python-level calls."""
import sys

import numpy as np

import fusedclip as fc

#: every entry point that writes in place, as (name, call on a list)
WRITERS = [
    ("clip_grad_norm_", lambda b: fc.clip_grad_norm_(b, 1e-3)),
    ("Clipper", lambda b: fc.Clipper(b, 1e-3)()),
    ("clip_grad_value_", lambda b: fc.clip_grad_value_(b, 1e-3)),
]
WIDS = [n for n, _ in WRITERS]


def grads(dtype=np.float32, n=3):
    rng = np.random.default_rng(5)
    return [(rng.standard_normal(s) * 3).astype(dtype) for s in [(100,), (7, 9), (1000,)][:n]]


def good(n=2):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(50) * 10 for _ in range(n)]


def calls_during(f):
    """Python-level function calls made while f() runs (sys.setprofile)."""
    n = 0

    def prof(frame, event, arg):
        nonlocal n
        if event == "call":
            n += 1

    sys.setprofile(prof)
    try:
        f()
    finally:
        sys.setprofile(None)
    return n
