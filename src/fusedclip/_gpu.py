"""CUDA buffers: recognise, validate and plan them; the lazy GPU statistics.

Imported only when a buffer turns out to live on a GPU, so CPU users never
import numba.  Everything here checks and builds tables on the host; no
kernel runs until ``GpuPlan.reduce`` / ``scale`` / ``clamp``.

Inputs are normalised here: under the simulator (``NUMBA_ENABLE_CUDASIM=1``)
numba's fake device arrays (which have no ``__cuda_array_interface__``);
on a GPU, anything with ``__cuda_array_interface__`` (numba device arrays,
CuPy, torch CUDA tensors) is wrapped zero-copy with ``cuda.as_cuda_array``.

When does the host wait for the GPU?  ``Clipper.__call__`` on GPU buffers
never does with the policies "skip", "zero" and "propagate": the norm, the
scale and the decision stay on the device, and the scale kernel reads them
there.  It waits once per call where the host must know the outcome:
policy "error" (to raise), policy "random" (to draw the step), and lists that
mix CPU and GPU buffers (the CPU buffers' scale depends on the GPU's norm).
Reading a ``DeviceClipStats`` attribute waits once (then it is cached);
``clip_grad_norm_`` and ``global_norm`` return Python floats, so they wait
once at the end.
"""
from __future__ import annotations

import numpy as np

from ._policy import ClipStats
from .kernels import cpu
from .kernels import cuda as ck

_BF16 = cpu.DTYPES[ck.BF16]
_CODES = {np.dtype(np.float64): ck.F64, np.dtype(np.float32): ck.F32, _BF16: ck.BF16,
          np.dtype(np.float16): ck.F16}
#: How many DeviceClipStats of one plan stay readable (the state ring's length).
RING = 8


def is_gpu(obj) -> bool:
    """A CUDA array: it exposes __cuda_array_interface__, or it is the simulator's."""
    return hasattr(obj, "__cuda_array_interface__") or type(obj).__module__.startswith(
        "numba.cuda.simulator")


def _current_device() -> int:
    from numba import cuda

    try:
        return int(cuda.get_current_device().id)
    except Exception:  # pragma: no cover - no driver: the check cannot apply
        return 0


def _device_of(obj) -> int | None:
    dev = getattr(obj, "device", None)
    for attr in ("id", "index"):  # CuPy's Device.id, torch's device.index
        v = getattr(dev, attr, None)
        if isinstance(v, int):
            return v
    return None


class _Buf:
    __slots__ = ("caller", "array", "code", "lo", "hi", "n")

    def __init__(self, caller, array, code, lo, hi, n):
        self.caller, self.array, self.code, self.lo, self.hi, self.n = caller, array, code, lo, hi, n


def _describe(obj, i: int, writable: bool, fn: str) -> _Buf:
    """Validate one CUDA buffer and return its kernel-ready 1-D view (not yet wrapped)."""
    fake = type(obj).__module__.startswith("numba.cuda.simulator")
    if fake:
        dtype, shape = obj.dtype, tuple(obj.shape)
        contiguous = obj.is_c_contiguous() or obj.is_f_contiguous()
        ptr, readonly = obj._ary.__array_interface__["data"][0], False
    else:
        cai = obj.__cuda_array_interface__
        try:
            dtype = np.dtype(cai["typestr"])
        except TypeError:
            dtype = None
        shape = tuple(cai["shape"])
        ptr, readonly = cai["data"]
        strides = cai.get("strides")
        if strides is None or dtype is None:
            contiguous = True
        else:
            want, acc = [], dtype.itemsize
            for n in reversed(shape):
                want.append(acc)
                acc *= n
            contiguous = tuple(reversed(want)) == tuple(strides) or int(np.prod(shape)) <= 1
    if dtype not in _CODES:
        raise TypeError(
            f"{fn}: buffer {i} (a CUDA array) has dtype {dtype}; fusedclip clips float16, "
            "bfloat16, float32 and float64 gradients"
        )
    if writable and readonly:
        raise ValueError(
            f"{fn}: buffer {i} (a CUDA array) is read-only and {fn} writes in place; pass a "
            "writable array (nothing was modified)"
        )
    if not contiguous:
        raise ValueError(
            f"{fn}: buffer {i} (a CUDA array) is not contiguous; the GPU kernels need contiguous "
            "buffers (cupy.ascontiguousarray / tensor.contiguous()); nothing was modified"
        )
    dev = _device_of(obj)
    if dev is not None and dev != _current_device():
        raise ValueError(
            f"{fn}: buffer {i} is on CUDA device {dev} but fusedclip runs on the current device "
            f"{_current_device()}; move it, or select that device first; nothing was modified"
        )
    n = int(np.prod(shape, dtype=np.int64))
    return _Buf(i, obj, _CODES[dtype], int(ptr), int(ptr) + n * dtype.itemsize, n)


def _kernel_view(buf: _Buf):
    """A 1-D numba device array over the buffer's memory (no copy)."""
    from numba import cuda

    a = buf.array
    if not type(a).__module__.startswith("numba.cuda.simulator"):
        a = cuda.as_cuda_array(a)
    a = a.reshape(buf.n) if a.is_c_contiguous() else a.T.reshape(buf.n)
    if buf.code in (ck.BF16, ck.F16):
        a = a.view(np.uint16)
    return a


class _Group:
    __slots__ = ("code", "bufs", "table", "nchunks", "base")

    def __init__(self, code, bufs, table, nchunks, base):
        self.code, self.bufs, self.table, self.nchunks, self.base = code, bufs, table, nchunks, base


class GpuPlan:
    """Validated CUDA buffers in K-buffer groups with their device chunk tables."""

    def __init__(self, bufs: list[_Buf], dups: dict[int, list[int]]):
        from numba import cuda

        self.rows = bufs                       # unique buffers, one per row
        self.dups = dups                       # row -> further caller indices
        views = [_kernel_view(b) for b in bufs]
        chunk_rows: list[np.ndarray] = []
        self.groups: list[_Group] = []
        total = 0
        for code in sorted({b.code for b in bufs}):
            rows = [r for r, b in enumerate(bufs) if b.code == code and b.n > 0]
            dummy = cuda.to_device(np.zeros(1, np.uint16 if code in (ck.BF16, ck.F16)
                                            else cpu.DTYPES[code]))
            for g in range(0, len(rows), ck.K):
                grp = rows[g:g + ck.K]
                parts = []
                for slot, r in enumerate(grp):
                    starts = np.arange(0, bufs[r].n, ck.CHUNK, dtype=np.int64)
                    lens = np.minimum(ck.CHUNK, bufs[r].n - starts)
                    parts.append(np.stack([np.full_like(starts, slot), starts, lens], axis=1))
                    chunk_rows.append(np.full(len(starts), r, dtype=np.int64))
                table = np.ascontiguousarray(np.concatenate(parts), dtype=np.int64)
                tup = tuple(views[r] for r in grp) + (dummy,) * (ck.K - len(grp))
                self.groups.append(_Group(code, tup, cuda.to_device(table), len(table), total))
                total += len(table)
        self.nchunks = total
        self.chunk_rows = np.concatenate(chunk_rows) if chunk_rows else np.zeros(0, np.int64)
        size = max(total, 1)
        self.s = cuda.device_array(size, np.float64)
        self.m = cuda.device_array(size, np.float64)
        # each call's state and per-chunk flags go to the next slot of a ring, so
        # that statistics stay readable after later calls (RING of them)
        self.ring = [(cuda.to_device(np.zeros(ck.STATE_LEN)), cuda.device_array(size, np.int32))
                     for _ in range(RING)]
        self.calls = 0

    # ------------------------------------------------------------------ kernels
    def reduce(self, kind: int, p: float, max_norm: float, policy: str,
               cpu_norm: float = 0.0, cpu_flags: int = 0):
        """Partials and finalize; returns this call's state array (no sync)."""
        state, flags = self.ring[self.calls % RING]
        self.calls += 1
        for g in self.groups:
            ck.launch("partials", g.code, g.nchunks, g.bufs, g.table, g.base, kind, p,
                      self.s, self.m, flags)
        ck.launch("finalize", None, 1, self.s, self.m, flags, self.nchunks, float(cpu_norm),
                  int(cpu_flags), kind, p, max_norm, ck.POLICY_CODES[policy], state)
        return state

    def scale(self, state) -> None:
        for g in self.groups:
            ck.launch("scale", g.code, g.nchunks, g.bufs, g.table, state)

    def clamp(self, v: float) -> None:
        for g in self.groups:
            ck.launch("clamp", g.code, g.nchunks, g.bufs, g.table, v)

    def flagged_callers(self, call: int | None = None) -> list[int]:
        """Caller indices of the buffers holding inf/NaN in reduce number ``call``
        (default: the last one).  Waits for the device."""
        call = self.calls if call is None else call
        f = self.ring[(call - 1) % RING][1].copy_to_host()[: self.nchunks]
        out = []
        for r in np.unique(self.chunk_rows[f != 0]).tolist():
            out.append(self.rows[r].caller)
            out.extend(self.dups.get(r, ()))
        return out

    def write_random(self, draws: list[np.ndarray]) -> None:
        """Copy host draws (float64, one per row) into the buffers, rounded to their dtype."""
        for b, z in zip(self.rows, draws):
            if b.n == 0:
                continue
            host = z.astype(cpu.DTYPES[b.code]).reshape(-1)
            if b.code in (ck.BF16, ck.F16):
                host = host.view(np.uint16)
            _kernel_view(b).copy_to_device(np.ascontiguousarray(host))


def gpu_state() -> str:
    """One line for `fusedclip info`: can the GPU backend run here?"""
    try:
        from numba import cuda
    except ImportError:
        return "unavailable: numba-cuda is not installed (pip install 'fusedclip[cuda]')"
    if ck.simulator():
        return "numba-cuda simulator (NUMBA_ENABLE_CUDASIM=1): kernels run in Python"
    try:
        if cuda.is_available():
            d = cuda.get_current_device()
            return f"available: {d.name.decode() if isinstance(d.name, bytes) else d.name}, cc {d.compute_capability}"
    except Exception as e:  # pragma: no cover
        return f"unavailable: {e}"
    return "unavailable: numba-cuda is installed but no CUDA driver or GPU was found"


def _require_cuda(i: int, fn: str) -> None:
    try:
        from numba import cuda
    except ImportError:
        raise RuntimeError(
            f"{fn}: buffer {i} is a CUDA array, and the GPU backend needs numba-cuda: "
            "pip install 'fusedclip[cuda]'; nothing was modified"
        ) from None
    if not ck.simulator() and not cuda.is_available():
        raise RuntimeError(
            f"{fn}: buffer {i} is a CUDA array, but no CUDA driver or GPU is available here; "
            "nothing was modified"
        )


def make_gpu_plan(objs: list, gpu_idx: list[int], writable: bool, fn: str) -> GpuPlan:
    """Validate the CUDA buffers among ``objs`` (caller indices ``gpu_idx``), dedupe, plan."""
    _require_cuda(gpu_idx[0], fn)
    bufs = [_describe(objs[i], i, writable, fn) for i in gpu_idx]
    live = sorted((b for b in bufs if b.n > 0), key=lambda b: (b.lo, b.caller))
    dup_of: dict[int, int] = {}
    reach_buf = None
    for b in live:
        if reach_buf is not None and b.lo < reach_buf.hi:
            same = b.lo == reach_buf.lo and b.hi == reach_buf.hi and b.code == reach_buf.code
            if not same:
                a, c = sorted((reach_buf.caller, b.caller))
                raise ValueError(
                    f"{fn}: buffers {a} and {c} partially overlap in GPU memory; each element "
                    "must belong to one buffer (pass the same array once); nothing was modified"
                )
            dup_of[b.caller] = dup_of.get(reach_buf.caller, reach_buf.caller)
            continue
        if reach_buf is None or b.hi > reach_buf.hi:
            reach_buf = b
    rows = [b for b in bufs if b.caller not in dup_of]
    row_of = {b.caller: r for r, b in enumerate(rows)}
    dups: dict[int, list[int]] = {}
    for d, root in dup_of.items():
        dups.setdefault(row_of[root], []).append(d)
    return GpuPlan(rows, dups)


class DeviceClipStats:
    """ClipStats whose numbers stay on the GPU until an attribute is read.

    The first attribute read copies the 64-byte state to the host (one wait);
    ``result()`` gives the plain ``ClipStats``.  A plan keeps the state of its
    last RING calls; reading older statistics raises RuntimeError.
    """

    _FIELDS = ClipStats._fields

    def __init__(self, plan: GpuPlan, state, call: int):
        self._plan, self._state, self._call = plan, state, call
        self._host: ClipStats | None = None

    def result(self) -> ClipStats:
        if self._host is None:
            if self._plan.calls - self._call >= RING:
                raise RuntimeError(
                    f"these statistics were overwritten: a plan keeps its last {RING} calls' "
                    "statistics on the device; read them (or call .result()) sooner"
                )
            st = self._state.copy_to_host()
            finite = bool(st[ck.S_FINITE])
            bad: tuple[int, ...] = ()
            if not finite:
                bad = tuple(sorted(self._plan.flagged_callers(self._call)))
            self._host = ClipStats(float(st[ck.S_NORM]), float(st[ck.S_SCALE]),
                                   bool(st[ck.S_CLIPPED]), finite, float(st[ck.S_THRESHOLD]), bad)
        return self._host

    def __getattr__(self, name):
        if name in DeviceClipStats._FIELDS:
            return getattr(self.result(), name)
        raise AttributeError(name)

    def __iter__(self):
        return iter(self.result())

    def __eq__(self, other):
        return self.result() == (other.result() if isinstance(other, DeviceClipStats) else other)

    def __repr__(self) -> str:
        return "Device" + repr(self.result())
