"""Two conditions that ../shared/tools/peer_bench.py measures under, reproduced.

    python benchmarks/contention.py

1. **A spinning BLAS pool.**  numpy's OpenBLAS keeps its worker threads
   spinning for ~0.1 s after a threaded call (a float64 ``np.dot`` of a large
   vector, as ``np.linalg.norm`` makes on the bfloat16 arrays it first
   converts).  On a 2-core machine that worker takes one of the cores, and
   a 2-thread call then often waits 3-4 ms (a scheduler tick) at its join
   for its helper.  The GPT-like bfloat16 clip (triggered)
   is timed quiet and right after such a call, beside the floor (one read
   and one read-write pass over a single buffer of the same bytes, on the
   same table loop).
2. **A Clipper built on every call.**  perf_check's plan shim keys its
   Clipper by ``(tuple(id(g) for g in grads), max_norm)`` and the two modes
   alternate, so every timed call builds one.  The pieces are timed on
   10,000 buffers of 256 float32 after the harness's restore (a rewrite of
   every buffer): the shim's key, the build, the call, and the floor.

Each figure is a median of interleaved repetitions; ratios are from one run.
"""
import statistics
import time

import ml_dtypes
import numpy as np

import fusedclip as fc
from fusedclip.bench import gpt_like_shapes
from fusedclip.kernels import cpu


def arrays(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s, dtype=np.float32) * 0.02).astype(dtype) for s in shapes]


def restorer(bufs):
    pristine = [b.copy() for b in bufs]

    def restore():
        for b, p in zip(bufs, pristine):
            np.copyto(b, p)
    return restore


def timed(f):
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1e3


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spinning_blas(reps=12):
    g = arrays(gpt_like_shapes(), ml_dtypes.bfloat16)
    restore = restorer(g)
    floor = np.random.default_rng(1).standard_normal(sum(b.nbytes for b in g) // 8)
    v = np.random.default_rng(2).standard_normal(4_000_000)
    mn = 0.5 * fc.global_norm(g)

    def clip():
        restore()
        return timed(lambda: fc.clip_grad_norm_(g, mn))

    def bound():
        np.multiply(floor, 1.0, out=floor)
        return timed(lambda: (cpu.floor_read(floor), cpu.floor_rw(floor)))

    t = {k: [] for k in ("fc quiet", "floor quiet", "fc spinning", "floor spinning")}
    for _ in range(reps):
        busy(0.15)  # OpenBLAS's workers from the last round have gone to sleep
        for _ in range(3):  # back to back, as the harness's rounds run (the first warms up)
            a, b = clip(), bound()
        t["fc quiet"].append(a)
        t["floor quiet"].append(b)
        np.dot(v, v)  # OpenBLAS's workers spin ~0.1 s after this
        t["fc spinning"].append(clip())
        np.dot(v, v)
        t["floor spinning"].append(bound())
    m = {k: statistics.median(x) for k, x in t.items()}
    print("GPT-like bfloat16, triggered (ms, medians of %d):" % reps)
    for cond in ("quiet", "spinning"):
        print(f"  {cond:9s} fusedclip {m['fc ' + cond]:6.2f}  floor {m['floor ' + cond]:6.2f}"
              f"  = {m['fc ' + cond] / m['floor ' + cond]:.2f}x floor")


def clipper_per_call(reps=40):
    g = arrays([(256,)] * 10000, np.float32)
    restore = restorer(g)
    floor = np.random.default_rng(1).standard_normal(sum(b.nbytes for b in g) // 8)
    mn = 0.5 * fc.global_norm(g)
    kept = fc.Clipper(g, mn, nonfinite="propagate")
    t = {k: [] for k in ("shim key", "build", "first call", "kept call", "function API", "floor")}
    for _ in range(reps):
        restore()
        t["shim key"].append(timed(lambda: hash((tuple(id(b) for b in g), mn))))
        c = []
        t["build"].append(timed(lambda: c.append(fc.Clipper(g, mn, nonfinite="propagate"))))
        t["first call"].append(timed(c[0]))
        restore()
        t["kept call"].append(timed(kept))
        restore()
        t["function API"].append(timed(lambda: fc.clip_grad_norm_(g, mn, nonfinite="propagate")))
        np.multiply(floor, 1.0, out=floor)
        t["floor"].append(timed(lambda: (cpu.floor_read(floor), cpu.floor_rw(floor))))
    m = {k: statistics.median(x) for k, x in t.items()}
    f = m["floor"]
    print("10,000 x 256 float32, triggered (ms, medians of %d; x floor):" % reps)
    for k, x in m.items():
        print(f"  {k:13s} {x:6.3f}  {x / f:5.2f}x")
    per_call = m["shim key"] + m["build"] + m["first call"]
    print(f"  the shim's call (key + build + first call) {per_call:.3f} = {per_call / f:.2f}x floor")


if __name__ == "__main__":
    spinning_blas()
    clipper_per_call()
