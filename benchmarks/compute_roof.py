"""The kernels' compute roof: their throughput on cache-resident data.

    python benchmarks/compute_roof.py

Each kernel runs over 2 MB that stay in L2, next to the plain read and
read-write passes over the same bytes.  Where a kernel's in-cache rate is
below the machine's DRAM bandwidth, no amount of memory tuning brings it to
the bandwidth floor: its arithmetic is the limit.  (float64 accumulation of
16-bit data needs a widening conversion and an FMA per element.)
"""
import statistics
import time

import ml_dtypes
import numpy as np

from fusedclip.kernels import cpu


def med(f, r=200):
    ts=[]
    for _ in range(r):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return statistics.median(ts)
nbytes = 2 * 2**20
for name, dt in [("float32",np.float32),("float64",np.float64),("bfloat16",ml_dtypes.bfloat16),("float16",np.float16)]:
    x=np.random.default_rng(0).standard_normal(nbytes//np.dtype(dt).itemsize).astype(dt)
    code={"float64":0,"float32":1,"bfloat16":2,"float16":3}[name]
    n=x.size; rows=np.arange(0,n,32768)
    t=cpu.Table(x.ctypes.data+rows*x.itemsize, np.minimum(32768, n-rows), [code]*len(rows))
    u=x.view(np.uint64)
    for nt in (1,2):
        fr=med(lambda: cpu.floor_read(u,nt)); tn=med(lambda: t.norm(2,2.0,nt)); ts=med(lambda: t.scale(1.0,nt)); fw=med(lambda: cpu.floor_rw(u,nt))
        print(f"{name:8s} threads={nt}: floor read {nbytes/fr/1e9:6.1f} GB/s  norm {nbytes/tn/1e9:6.1f} GB/s  | floor rw {nbytes/fw/1e9:6.1f}  scale {nbytes/ts/1e9:6.1f} GB/s")
