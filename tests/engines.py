"""The engines the contract suites (tests/contract_policies.py and
tests/contract_family.py, run by tests/test_contract.py) run against.

An engine turns host arrays into the buffers it clips (``put``: the same
host array twice gives the same buffer, so duplicates stay duplicates),
reads them back (``get``) and overwrites one (``write``).  The contract is
written once against this and run:

* on the CPU engine, in the normal test process;
* on the CUDA engine under the Numba CUDA simulator, in a process of its own
  (NUMBA_ENABLE_CUDASIM=1; tests/test_gpu.py starts it);
* on the CUDA engine on a real GPU, where one exists, in a process of its
  own (FUSEDCLIP_TEST_ENGINE=gpu; tests/test_gpu.py starts it).

``make(name)`` builds one; conftest's ``engine`` fixture calls it.
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


def make(name: str):
    """The engine called ``name`` (conftest.ENGINES)."""
    if name == "cpu":
        return CpuEngine()
    if name == "simulator":  # (conftest sets the simulator's small geometry)
        return NumbaEngine("simulator")
    if name == "gpu":
        e = NumbaEngine("cuda")
        e.big = 200_000  # several 65,536-element chunks
        return e
    raise ValueError(f"no engine {name!r}")
