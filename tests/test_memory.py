"""Memory: nothing grows over many calls."""
import os
import tracemalloc

import numpy as np

import fusedclip as fc


# ---------------------------------------------------------------- no memory growth
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_memory_growth_over_ten_thousand_calls():
    rng = np.random.default_rng(0)
    g = [rng.standard_normal(n) for n in (64, 3, 100)] + [rng.standard_normal((4, 6))[:, ::2]]
    bad = [np.array([1.0, np.nan]), np.ones(3)]
    clipper = fc.Clipper(g, 1.0)

    def one_round():
        for b in g:
            b *= 3.0  # so that every call clips (scale + write-back of the staged view)
        clipper()
        fc.clip_grad_norm_(g, 1.0)
        fc.global_norm(g, 3.0)
        fc.clip_grad_value_(g, 0.5)
        try:
            fc.clip_grad_norm_(bad, 1.0)
        except fc.NonFiniteError:
            pass

    for _ in range(500):  # warm up caches, interned objects, allocator pools
        one_round()
    rss0 = _rss_bytes()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(2000):
            one_round()
        mid, _ = tracemalloc.get_traced_memory()
        for _ in range(8000):
            one_round()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss1 = _rss_bytes()
    # 10,000 rounds of 5 calls: a leak of even 8 bytes per call is 400 KB
    assert end - base < 64 * 1024, (base, mid, end)
    assert end - mid < 32 * 1024, (mid, end)  # no trend once warm
    assert rss1 - rss0 < 4 * 2**20, (rss0, rss1)
