"""The engines the contract suite (tests/contract_policies.py) runs against.

An engine turns host arrays into the buffers it clips (``put``: the same
host array twice gives the same buffer, so duplicates stay duplicates),
reads them back (``get``) and overwrites one (``write``).  The contract is
written once against this and run:

* on the CPU engine, in the normal test process (tests/test_contract_cpu.py);
* on the CUDA engine under the Numba CUDA simulator (tests/gpu/sim_suite.py);
* on the CUDA engine on a real GPU, where one exists (tests/gpu/real_suite.py).
"""
import numpy as np


class CpuEngine:
    name = "cpu"
    #: elements of a buffer that spans several chunks and the parallel path
    big = 70_000

    def put(self, hosts):
        return list(hosts)

    def get(self, b):
        return b

    def write(self, b, host):
        b[...] = host


class NumbaEngine:
    """numba device arrays: the simulator's, or a real GPU's."""

    big = 300  # the simulator's chunks are 48 elements: several chunks, and it is slow

    def __init__(self, name="numba"):
        from numba import cuda

        self.cuda, self.name = cuda, name

    def put(self, hosts):
        seen = {}
        return [seen.setdefault(id(h), self.cuda.to_device(h)) for h in hosts]

    def get(self, b):
        return b.copy_to_host()

    def write(self, b, host):
        b.copy_to_device(np.ascontiguousarray(host))
