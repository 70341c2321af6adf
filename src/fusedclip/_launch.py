"""How GPU kernels are started, and where GPU memory comes from: the launchers.

A launcher owns device memory (``alloc``, ``upload``, ``download``), starts
kernels by name with raw addresses and scalars (``launch``), and records a
sequence of launches as a replayable graph (``capture``/``replay``).  The
GPU engine (``_gpu.py``) talks to nothing else, so the same engine code runs

* on a GPU, through ``CoreLauncher``: Numba-compiled cubins launched by
  ``cuda.core`` (~5 µs of host time per launch), CUDA graphs for plans;
* under the Numba CUDA simulator, through ``SimLauncher``: host memory and
  the simulator's kernels (the kernels' logic, tested without a GPU);
* any other object with the same methods, installed by ``use_launcher``:
  the tests' ``RecordingLauncher`` (tests/launchers.py) records what would
  have been launched over host memory (``HostMemory``), for launch counts
  and host cost without a GPU and without the simulator's slowness.

``launcher()`` picks one of the first two by ``simulated()``, the launcher
choice; nothing else in the package knows about the simulator.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .kernels import cuda as ck
from .kernels.cudacore import core, linker_in_use  # noqa: F401  (re-exported)

_lock = threading.Lock()
_current: Any = None




def simulated() -> bool:
    """The launcher choice: the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1,
    read where the kernels read it)."""
    return ck.simulator()


def launcher():
    """The process's launcher: the simulator's or the GPU's, made on first use."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = SimLauncher() if simulated() else CoreLauncher()
    return _current


def is_cuda_array(obj: Any) -> bool:
    """Whether ``obj`` speaks the CUDA array interface (under the simulator,
    its device arrays count: ``SimLauncher.interface`` speaks for them)."""
    return hasattr(obj, "__cuda_array_interface__") or (simulated() and SimLauncher.owns(obj))


def array_interface(obj: Any) -> dict:
    """``obj.__cuda_array_interface__``, or the simulator's reading of its
    device arrays, which have none: the engine reads every non-torch CUDA
    array through this one record, so it holds no simulator branch."""
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None and simulated() and SimLauncher.owns(obj):
        cai = SimLauncher.interface(obj)
    if cai is None:
        raise TypeError(f"{type(obj).__name__} has no __cuda_array_interface__")
    return cai


def use_launcher(new):
    """Replace the process's launcher (tests); returns the previous one."""
    global _current
    old, _current = _current, new
    return old


def stream_handle(stream) -> int:
    """An int handle from a stream object (cuda.core, torch, CuPy, numba) or an
    integer (numpy's too); TypeError for anything else, ValueError for a handle
    outside [0, 2**64) (checked before any buffer is touched)."""
    import numbers

    if isinstance(stream, bool):
        raise TypeError("stream must be a CUDA stream object or an int handle, got bool")
    if isinstance(stream, numbers.Integral):
        h = int(stream)
    elif hasattr(stream, "__cuda_stream__"):
        h = int(stream.__cuda_stream__()[1])
    else:
        for attr in ("cuda_stream", "ptr", "handle"):
            v = getattr(stream, attr, None)
            if v is not None:
                h = int(getattr(v, "value", v) or 0)
                break
        else:
            raise TypeError(f"stream must be a CUDA stream object or an int handle, got {type(stream).__name__}")
    if not 0 <= h < 2**64:
        raise ValueError(f"stream handle must be in [0, 2**64), got {h}")
    return h



def _address(x: Any) -> int:
    """The address of device memory: an int, or anything with ``addr``."""
    return int(getattr(x, "addr", x))


class DeviceArray:
    """Device memory owned by a plan: ``addr`` is its address; freed with it."""

    __slots__ = ("addr", "nbytes", "_free", "__weakref__")

    def __init__(self, addr: int, nbytes: int, free):
        self.addr, self.nbytes, self._free = addr, nbytes, free

    def __del__(self):
        if self._free is not None:
            try:
                self._free(self.addr)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass
            self._free = None


# ------------------------------------------------------------------ host memory
class HostMemory:
    """Device memory simulated by host arrays (the simulator's, and the tests'
    recording launcher's)."""

    def __init__(self):
        self._live: dict[int, np.ndarray] = {}
        self.launches: list[tuple] = []

    def alloc(self, nbytes: int) -> DeviceArray:
        a = np.zeros(max(nbytes, 8), np.uint8)
        addr = a.ctypes.data
        self._live[addr] = a
        return DeviceArray(addr, nbytes, self._live.pop)

    def upload(self, dst: DeviceArray | int, host: np.ndarray, stream=None) -> None:
        addr = _address(dst)
        host = np.ascontiguousarray(host)
        np.copyto(self._view(addr, host.nbytes), host.view(np.uint8).reshape(-1))

    def download(self, host: np.ndarray, src: DeviceArray | int, stream=None) -> np.ndarray:
        addr = _address(src)
        host.view(np.uint8).reshape(-1)[...] = self._view(addr, host.nbytes)
        return host

    def copy(self, dst: int, src: int, nbytes: int, stream=None) -> None:
        """Device-to-device copy, ordered on ``stream``; no host wait."""
        np.copyto(self._view(int(dst), nbytes), self._view(int(src), nbytes))

    @staticmethod
    def _view(addr: int, nbytes: int) -> np.ndarray:
        import ctypes

        return np.frombuffer((ctypes.c_char * nbytes).from_address(addr), np.uint8)  # type: ignore[call-overload]

    def launch(self, name: str, grid: int, args: tuple, stream=None) -> None:
        raise NotImplementedError

    def stream_of(self, handle: int | None):
        return handle

    def synchronize(self, stream=None) -> None:
        pass

    # a "graph" here is the list of launches, replayed one by one
    def capture(self, launches: list[tuple]):
        return list(launches)

    def replay(self, graph, stream=None) -> None:
        for name, grid, args in graph:
            self.launch(name, grid, args, stream)


def _view_of_current(addr: int, n: int, elem):
    """The simulator's kernels read addresses through the current launcher
    (tests swap launchers), which owns host memory there."""
    return launcher().view(addr, n, elem)


class SimLauncher(HostMemory):
    """The Numba CUDA simulator: kernels run as Python on host memory.

    ``view`` is how the kernels' ``as_ptr`` reads an address here.  Host
    arrays registered with ``watch`` keep their numpy write protection in
    kernels (a view into a non-writeable one is read-only), which is how the
    tests prove that a kernel stores nothing."""

    kind = "simulator"
    graphs = False

    def __init__(self):
        super().__init__()
        ck.set_host_view(_view_of_current)  # the kernels' reads of an address
        self.watched: list[np.ndarray] = []

    def watch(self, host_array: np.ndarray) -> None:
        self.watched.append(host_array)

    @staticmethod
    def owns(obj: Any) -> bool:
        """A device array of the simulator's."""
        return (type(obj).__module__ or "").startswith("numba.cuda.simulator")

    @staticmethod
    def interface(obj: Any) -> dict:
        """A simulator device array's CUDA array interface: its host array's
        layout and address (writable: ``watch`` guards read-only memory
        where the kernels run)."""
        a = obj._ary
        return {"shape": a.shape, "strides": a.strides, "typestr": a.dtype.str,
                "data": (int(a.__array_interface__["data"][0]), False), "version": 3}

    def view(self, addr: int, n: int, dtype) -> np.ndarray:
        import ctypes

        dt = np.dtype(dtype)
        nbytes = max(int(n), 1) * dt.itemsize
        v = np.frombuffer((ctypes.c_char * nbytes).from_address(int(addr)), dtype=dt)
        for a in self.watched:
            lo = a.__array_interface__["data"][0]
            if lo <= addr < lo + a.nbytes and not a.flags.writeable:
                v.flags.writeable = False
        return v

    def launch(self, name: str, grid: int, args: tuple, stream=None) -> None:
        self.launches.append((name, grid, args))
        if grid > 0:
            ck.sim_kernel(name)[grid, ck.THREADS](*args)


# ------------------------------------------------------------------ the GPU
class CoreLauncher:
    """Numba-compiled cubins, launched through cuda.core on the caller's stream."""

    kind = "cuda.core"
    graphs = True

    def __init__(self, driver=None, api=None):
        """``driver``: cuda.bindings' driver module, ``api``: a function from a
        cuda.core name to the object (``core``); the tests pass fakes."""
        if driver is None:
            from cuda.bindings import driver as _driver

            driver = _driver
        self._drv = driver
        self._core = api or core
        self.device = self._core("Device")()
        self.device.set_current()
        # CUDA's current context is per thread: remember ours (the device's
        # primary context) and make it current on whichever thread calls (_enter)
        self._ctx = self._check(self._drv.cuCtxGetCurrent())
        self._ctx_id = int(self._ctx)
        cc = self.device.compute_capability
        self.cc = (int(cc[0]), int(cc[1]))
        self._kernels: dict[str, Any] = {}
        self._streams: dict[int, Any] = {}
        self._LaunchConfig = self._core("LaunchConfig")
        self._launch = self._core("launch")
        self._configs: dict[int, Any] = {}
        self._private = self.device.create_stream()  # graphs are captured here
        self.launches: list[tuple] | None = None  # set to a list to record

    def _check(self, res):
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            _, msg = self._drv.cuGetErrorString(err)
            raise RuntimeError(f"CUDA driver error {int(err)}: {msg.decode() if msg else err}")
        return res[1] if isinstance(res, tuple) and len(res) == 2 else res

    def _enter(self) -> None:
        """Make this launcher's context current on the calling thread.  The
        driver keeps the current context per thread, and a launcher is used
        from any thread (a plan built on one and run on another, a data
        loader's, a framework's worker): one driver call per launcher call,
        a thread-local read, and a set only where another context or none is
        current.  Every method below that reaches the driver calls it first."""
        if int(self._drv.cuCtxGetCurrent()[1]) != self._ctx_id:
            self._check(self._drv.cuCtxSetCurrent(self._ctx))

    def kernel(self, name: str):
        k = self._kernels.get(name)
        if k is None:
            data, entry = ck.cubin(name, self.cc)
            self._enter()  # a driver older than CUDA 12 loads modules into the current context
            k = self._core("ObjectCode").from_cubin(data).get_kernel(entry)
            self._kernels[name] = k
        return k

    def warm(self) -> None:
        """Load (compile or read from the disk cache) every kernel now."""
        for name in ck.KERNELS:
            self.kernel(name)

    # memory
    def alloc(self, nbytes: int) -> DeviceArray:
        self._enter()
        addr = int(self._check(self._drv.cuMemAlloc(max(nbytes, 8))))
        return DeviceArray(addr, nbytes, self._free)

    def _free(self, addr: int) -> None:
        self._enter()  # the last reference may go on any thread
        self._drv.cuMemFree(addr)

    def upload(self, dst, host: np.ndarray, stream=None) -> None:
        addr = _address(dst)
        host = np.ascontiguousarray(host)
        self._enter()
        # ordered on the stream, and no wait: from pageable memory the driver
        # stages the bytes before returning, so ``host`` may go away at once
        self._check(self._drv.cuMemcpyHtoDAsync(addr, host.ctypes.data, host.nbytes, self._handle(stream)))

    def download(self, host: np.ndarray, src, stream=None) -> np.ndarray:
        addr = _address(src)
        self._enter()
        self._check(self._drv.cuMemcpyDtoHAsync(host.ctypes.data, addr, host.nbytes, self._handle(stream)))
        self._check(self._drv.cuStreamSynchronize(self._handle(stream)))
        return host

    def copy(self, dst: int, src: int, nbytes: int, stream=None) -> None:
        """Device-to-device copy, ordered on ``stream``; no host wait."""
        self._enter()
        self._check(self._drv.cuMemcpyDtoDAsync(int(dst), int(src), nbytes, self._handle(stream)))

    def synchronize(self, stream=None) -> None:
        self._enter()
        self._check(self._drv.cuStreamSynchronize(self._handle(stream)))

    @staticmethod
    def _handle(stream) -> Any:
        if stream is None:
            return 0
        if isinstance(stream, int):
            return stream
        return int(stream.handle)

    def stream_of(self, handle: int | None):
        """A cuda.core Stream over a raw handle (0 or None: the legacy default)."""
        h = int(handle or 0)
        s = self._streams.get(h)
        if s is None:
            s = self._core("Stream").from_handle(h)
            self._streams[h] = s
        return s

    def _config(self, grid: int):
        c = self._configs.get(grid)
        if c is None:
            c = self._LaunchConfig(grid=grid, block=ck.THREADS)
            self._configs[grid] = c
        return c

    def launch(self, name: str, grid: int, args: tuple, stream=None) -> None:
        if grid <= 0:
            return
        if self.launches is not None:
            self.launches.append((name, grid, args))
        s = stream if stream is not None else self.stream_of(0)
        self._enter()
        self._launch(s, self._config(grid), self.kernel(name), *_kargs(args))

    def capture(self, launches: list[tuple]):
        """A CUDA graph of these launches (captured on a private stream; it can
        be replayed on any stream of the device)."""
        for name, _, _ in launches:
            self.kernel(name)  # compile/load outside the capture
        self._enter()
        gb = self._private.create_graph_builder()
        gb.begin_building()
        for name, grid, args in launches:
            if grid > 0:
                self._launch(gb, self._config(grid), self.kernel(name), *_kargs(args))
        gb.end_building()
        graph = gb.complete()
        return graph

    def replay(self, graph, stream=None) -> None:
        if self.launches is not None:
            self.launches.append(("graph", 0, ()))
        self._enter()
        graph.launch(stream if stream is not None else self.stream_of(0))


def _kargs(args: tuple) -> list:
    """Kernel arguments: Python ints are int64 addresses/integers, floats doubles."""
    return [np.float64(a) if isinstance(a, float) else np.int64(a) for a in args]
