"""The CUDA engine: recognise, validate and plan GPU buffers; run a plan.

Imported only when a buffer turns out to live on a GPU, so CPU users never
import numba.  Everything here checks and builds tables on the host; no
kernel runs until a plan is run.  Kernels are started through a launcher
(``_launch.py``): cuda.core on a GPU, the simulator without one.

Buffers accepted: torch CUDA tensors (read directly: pointer, size, dtype,
bfloat16 included, without building ``__cuda_array_interface__``), CuPy and
numba device arrays and anything else with ``__cuda_array_interface__``,
objects that only speak DLPack with a CUDA device (through torch or CuPy),
and the simulator's device arrays.  A buffer must be *dense*: its elements
fill one contiguous range in some order (C or F order, a transpose, a
permutation of dims); the kernels read that range, since a norm and a
rescale do not care about element order.

A plan (``GpuPlan``) owns one device table of chunks for all its buffers,
whatever their dtypes, the partials, a ring of RING state vectors and
per-chunk flags, the threshold in device memory (``params``), and a
counter ``ctr`` that the finalize kernel advances.  A norm clip is three
launches (partials, finalize, scale); a plan records them once as a CUDA
graph per (norm, policy) and replays it, so its host cost does not grow
with the number of buffers.

When does the host wait for the GPU?  Never in ``Clipper.__call__`` with
the policies "skip", "zero" and "propagate": the norm, the scale and the
decision stay on the device.  Once per call where the host must know the
outcome: "error" (to raise), "random" (to draw the step), and lists that mix
CPU and GPU buffers (one scale for both).  Reading a ``DeviceClipStats``
attribute waits once (then it is cached); ``clip_grad_norm_`` and
``global_norm`` return Python floats, so they wait once at the end.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _launch
from ._overlap import overlap_clusters, partial_overlap
from ._policy import ClipStats
from ._rows import CallerMap
from .kernels import cpu, dtypes
from .kernels import cuda as ck

_KDL_CUDA = 2  # DLPack's device type for CUDA memory


def _module(obj) -> str:
    return type(obj).__module__ or ""


def is_gpu(obj) -> bool:
    """A CUDA array: a torch CUDA tensor, one with __cuda_array_interface__
    (the simulator's included, through the launcher), or one whose DLPack
    device is CUDA."""
    mod = _module(obj)
    if mod.startswith("torch"):
        return bool(getattr(obj, "is_cuda", False))
    if _launch.is_cuda_array(obj):
        return True
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is not None and not hasattr(obj, "__array_interface__"):
        try:
            return int(dev()[0]) == _KDL_CUDA
        except Exception:
            return False
    return False


def _current_device() -> int:
    try:
        if _launch.simulated():
            return 0
        from cuda.bindings import runtime

        err, dev = runtime.cudaGetDevice()
        return int(dev) if int(err) == 0 else 0
    except Exception:  # pragma: no cover - no driver: the check cannot apply
        return 0


def _dense(shape, strides, itemsize: int) -> bool:
    """The elements fill [ptr, ptr + size*itemsize) exactly, in some order."""
    dims = sorted((abs(st), n) for n, st in zip(shape, strides) if n != 1)
    want = itemsize
    for st, n in dims:
        if st != want:
            return False
        want *= n
    return all(st >= 0 for n, st in zip(shape, strides) if n != 1)


class Buf:
    """One validated GPU buffer: caller index, address, elements, dtype code."""

    __slots__ = ("caller", "obj", "addr", "n", "code", "device", "lib")

    def __init__(self, caller, obj, addr, n, code, device, lib):
        self.caller, self.obj, self.addr, self.n, self.code = caller, obj, addr, n, code
        self.device, self.lib = device, lib

    @property
    def lo(self) -> int:
        return self.addr

    @property
    def hi(self) -> int:
        return self.addr + self.n * dtypes.ITEMSIZE[self.code]


def shape_of(obj) -> tuple[int, ...]:
    """A CUDA array's shape (torch, CuPy, numba, __cuda_array_interface__)."""
    sh = getattr(obj, "shape", None)
    if sh is None:
        sh = _launch.array_interface(obj)["shape"]
    return tuple(int(n) for n in sh)


def c_ordered(obj) -> bool:
    """Whether a CUDA array's elements are in C order (rows contiguous)."""
    mod = _module(obj)
    shape = shape_of(obj)
    strides: Any
    if mod.startswith("torch"):
        strides, item = tuple(obj.stride()), 1
    else:
        cai = _launch.array_interface(obj)
        strides, item = cai.get("strides"), np.dtype(cai["typestr"]).itemsize
        if strides is None:
            return True
    want = item
    for n, st in zip(reversed(shape), reversed(tuple(strides))):
        if n != 1 and st != want:
            return False
        want *= n
    return True


def _bad_dtype(i: int, fn: str, dtype) -> TypeError:
    return TypeError(
        f"{fn}: buffer {i} (a CUDA array) has dtype {dtype}; fusedclip clips {dtypes.SUPPORTED} "
        "gradients; nothing was modified"
    )


def _not_dense(i: int, fn: str) -> ValueError:
    return ValueError(
        f"{fn}: buffer {i} (a CUDA array) is not contiguous; the GPU kernels need buffers whose "
        "elements fill one range (cupy.ascontiguousarray / tensor.contiguous()); nothing was modified"
    )


def _misaligned(i: int, fn: str, addr: int, item: int) -> ValueError:
    return ValueError(
        f"{fn}: buffer {i} (a CUDA array) starts at address {addr:#x}, which is not a multiple "
        f"of its element size ({item} bytes); the GPU kernels would fault on it and leave the "
        "CUDA context unusable; pass an array that starts on an element boundary (a fresh "
        "allocation, or a view at a whole-element offset); nothing was launched or modified"
    )


def _describe(obj, i: int, writable: bool, fn: str) -> Buf:
    """Validate one CUDA buffer (every check, nothing launched)."""
    mod = _module(obj)
    readonly = False
    lib = None
    if mod.startswith("torch"):
        code = dtypes.code_of(obj.dtype)
        if code is None:
            raise _bad_dtype(i, fn, obj.dtype)
        n = int(obj.numel())
        if n > 1 and not _dense(tuple(obj.shape), tuple(obj.stride()), 1):
            raise _not_dense(i, fn)
        addr, dev, lib = int(obj.data_ptr()), obj.device.index, "torch"
        if n > 1:  # data_ptr is the first element's; a negative-free dense view starts there
            pass
    elif _launch.is_cuda_array(obj):
        cai = _launch.array_interface(obj)
        try:
            dtype = np.dtype(cai["typestr"])
        except TypeError:
            dtype = None
        if dtype is not None and dtype.kind == "V" and dtype.itemsize == 2 and "bfloat16" in str(
                getattr(obj, "dtype", "")):
            dtype = dtypes.NUMPY[dtypes.BF16]  # bfloat16 exported as a 2-byte void type
        code = dtypes.code_of(dtype)
        if code is None:
            raise _bad_dtype(i, fn, getattr(obj, "dtype", dtype))
        shape = tuple(cai["shape"])
        addr, readonly = cai["data"]
        n = int(np.prod(shape, dtype=np.int64))
        strides = cai.get("strides")
        if strides is not None and n > 1 and not _dense(shape, strides, dtype.itemsize):
            raise _not_dense(i, fn)
        dev = getattr(getattr(obj, "device", None), "id", None)
        lib = "cupy" if mod.startswith("cupy") else None
        addr = int(addr or 0)
    else:  # DLPack only: view it through torch (or CuPy) without a copy
        return _describe(_from_dlpack(obj, i, fn), i, writable, fn)
    if writable and readonly:
        raise ValueError(
            f"{fn}: buffer {i} (a CUDA array) is read-only and {fn} writes in place; pass a "
            "writable array (nothing was modified)"
        )
    item = dtypes.ITEMSIZE[code]
    if n and addr % item:
        raise _misaligned(i, fn, addr, item)
    if dev is not None and not isinstance(dev, bool) and int(dev) != _current_device():
        raise ValueError(
            f"{fn}: buffer {i} is on CUDA device {dev} but fusedclip runs on the current device "
            f"{_current_device()}; move it, or select that device first; nothing was modified"
        )
    return Buf(i, obj, addr, n, code, dev, lib)


def _from_dlpack(obj, i: int, fn: str):
    for name in ("torch", "cupy"):
        try:
            m = __import__(name)
        except ImportError:
            continue
        try:
            return m.from_dlpack(obj)
        except Exception as e:  # pragma: no cover - depends on the producer
            err = e
            continue
    raise TypeError(
        f"{fn}: buffer {i} ({type(obj).__name__}) is a CUDA array that only speaks DLPack, and "
        "neither torch nor CuPy is installed to read it in place"
        + (f" ({err})" if "err" in locals() else "")
    )


# ------------------------------------------------------------------ the plan
def chunk_table(bufs: list[Buf]) -> np.ndarray:
    """(nchunks, 4) int64 rows: address, length, dtype code, row; cut by the
    CPU tables' builder (``kernels.cpu.chunk_rows``) with the device's chunk."""
    if not bufs:
        return np.zeros((0, ck.ROW), np.int64)
    k = len(bufs)
    return cpu.chunk_rows(np.fromiter((b.addr for b in bufs), np.int64, k),
                          np.fromiter((b.n for b in bufs), np.int64, k),
                          np.fromiter((b.code for b in bufs), np.int64, k), ck.CHUNK)


class _Sub:
    """An address inside a plan's one allocation."""

    __slots__ = ("addr",)

    def __init__(self, addr: int):
        self.addr = addr


class GpuPlan:
    """Validated CUDA buffers as one device chunk table, with partials, a state
    ring and the captured graphs."""

    #: the regions of the plan's one device allocation (``layout`` below)
    table: _Sub
    s: _Sub
    m: _Sub
    f: _Sub
    state: _Sub
    params: _Sub
    ctr: _Sub
    override: _Sub
    one: _Sub
    rstart: _Sub
    rows_out: _Sub
    rows_in: _Sub

    def __init__(self, bufs: list[Buf], dups: dict[int, list[int]], stream: Any = None):
        L = self.launcher = _launch.launcher()
        self.rows = bufs                       # unique non-empty buffers, one per row
        self.dups = dups                       # row -> further caller indices
        self.map = CallerMap(np.array([b.caller for b in bufs], np.int64), dups)
        self.lib = next((b.lib for b in bufs if b.lib), None)
        self.stream = stream                   # explicit stream handle, or None
        host = chunk_table(bufs)
        self.nchunks = n = len(host)
        self.nrows = nr = len(bufs)
        self.chunk_rows = host[:, 3].copy()
        rstart = np.zeros(nr + 1, np.int64)
        np.cumsum(np.bincount(self.chunk_rows, minlength=nr), out=rstart[1:])
        # one allocation and one upload for everything the kernels touch
        layout = [("table", host.nbytes), ("s", 8 * n), ("m", 8 * n), ("f", 4 * n * ck.RING),
                  ("state", 8 * ck.STATE_LEN * ck.RING), ("params", 8 * ck.PARAMS_LEN), ("ctr", 8),
                  ("override", 8 * ck.STATE_LEN), ("one", 8), ("rstart", rstart.nbytes),
                  ("rows_out", 8 * ck.R_FIELDS * ck.RING * nr), ("rows_in", 8 * ck.R_FIELDS * nr)]
        offsets, total = {}, 0
        for name, nbytes in layout:
            offsets[name] = total
            total += -(-nbytes // 16) * 16
        self.mem = L.alloc(total)
        for name, off in offsets.items():
            setattr(self, name, _Sub(self.mem.addr + off))
        init = np.zeros(total, np.uint8)
        init[:host.nbytes] = host.view(np.uint8).reshape(-1)
        init[offsets["one"]:offsets["one"] + 8] = np.ones(1, np.int64).view(np.uint8)
        init[offsets["rstart"]:offsets["rstart"] + rstart.nbytes] = rstart.view(np.uint8)
        L.upload(self.mem, init)
        L.synchronize()  # once per plan: later work may run on any stream
        self.calls = 0
        self._call_streams: list = [None] * ck.RING  # the stream each ring slot's call ran on
        self._config: tuple | None = None  # the params last uploaded
        self._bound = None                 # the ZScore whose state lives in params
        self._graphs: dict = {}
        dev = next((b.device for b in bufs if b.device is not None), None)
        self._stream_fn = _stream_getter(self.lib, stream, dev)

    # ---------------------------------------------------------------- streams
    def stream_handle(self) -> int | None:
        """The stream to launch on: the explicit one, else the buffers' library's
        current stream (torch, CuPy), else the default stream."""
        return self._stream_fn()

    def _stream(self):
        return self.launcher.stream_of(self.stream_handle())

    # ---------------------------------------------------------------- launches
    def _reduce_launches(self, kind: int, p: float, policy: str) -> list[tuple]:
        n = self.nchunks
        return [
            ("partials", n, (self.table.addr, n, kind, float(p), self.s.addr, self.m.addr, self.f.addr,
                             self.ctr.addr)),
            ("finalize", 1, (self.s.addr, self.m.addr, self.f.addr, n, kind, float(p), self.params.addr,
                             ck.POLICY_CODES[policy], self.state.addr, self.ctr.addr)),
        ]

    def _scale_launch(self, state: int, ctr: int) -> tuple:
        return ("scale", self.nchunks, (self.table.addr, self.nchunks, state, ctr))

    def _set_params(self, stream, max_norm: float = math.inf, row_max: float = math.inf,
                    threshold=None, agc_eps: float = 0.0, eps: float = 0.0) -> None:
        """Upload the host's part of the params when it changed (a captured
        graph reads them at run time); bind a ZScore's state to the device.
        ``eps``: the rule's (clip when norm + eps > max_norm; the torch drop-in's 1e-6)."""
        cfg = (max_norm, row_max) + ((ck.MODE_ZSCORE, threshold.alpha, threshold.z,
                                      threshold.warmup) if threshold is not None else
                                     (ck.MODE_FIXED, 0.0, 0.0, 0.0)) + (agc_eps, eps)
        if cfg != self._config:
            p = np.zeros(ck.P_CONFIG)
            p[[ck.P_MAX_NORM, ck.P_ROW_MAX, ck.P_MODE, ck.P_ALPHA, ck.P_Z, ck.P_WARMUP,
               ck.P_AGC_EPS, ck.P_EPS]] = cfg
            self.launcher.upload(self.params, p, stream)
            self._config = cfg
        if threshold is not None and self._bound is not threshold:
            self._bind(threshold, stream)

    def _bind(self, thr, stream) -> None:
        """Keep this ZScore's state on the device from now on: finalize
        updates it; the object reads it back (one wait) for state_dict()."""
        thr._sync()  # wherever it lived before
        addr = self.params.addr + 8 * ck.P_TSTATE
        self.launcher.upload(addr, np.array(thr._vector(), np.float64), stream)

        def download():
            return self.launcher.download(np.empty(4), addr, self._call_streams[(self.calls - 1) % ck.RING])

        def upload(vec):
            self.launcher.upload(addr, np.array(vec, np.float64), self._stream())

        thr._device = (download, upload)
        self._bound = thr

    def _run(self, key, launches: list[tuple], stream) -> None:
        """Run these launches; from the second run of the same key on, as a
        CUDA graph captured then (a one-off call is cheaper launched plainly)."""
        L = self.launcher
        g = self._graphs.get(key)
        if L.graphs and g is not None:
            if g is True:
                g = self._graphs[key] = L.capture(launches)
            L.replay(g, stream)
        else:
            self._graphs[key] = True
            for name, grid, args in launches:
                L.launch(name, grid, args, stream)
        self.calls += 1
        self._call_streams[(self.calls - 1) % ck.RING] = stream

    def clip(self, kind: int, p: float, max_norm: float, policy: str, threshold=None,
             eps: float = 0.0) -> int:
        """partials + finalize + scale, decided on the device; returns the call
        number.  ``threshold``: a ZScore, run by finalize on the device."""
        stream = self._stream()
        self._set_params(stream, max_norm, threshold=threshold, eps=eps)
        launches = self._reduce_launches(kind, p, policy) + [self._scale_launch(self.state.addr,
                                                                                 self.ctr.addr)]
        self._run(("clip", kind, p, policy), launches, stream)
        return self.calls

    def reduce(self, kind: int, p: float) -> int:
        """partials + finalize only (no decision acted on); returns the call number."""
        stream = self._stream()
        self._set_params(stream)
        self._run(("reduce", kind, p), self._reduce_launches(kind, p, "skip"), stream)
        return self.calls

    # ---------------------------------------------------------------- per-row
    def _rownorms_launch(self, kind: int, p: float, policy: str) -> tuple:
        return ("rownorms", -(-self.nrows // ck.THREADS),
                (self.s.addr, self.m.addr, self.f.addr, self.rstart.addr, self.nrows, self.nchunks,
                 kind, float(p), self.params.addr, ck.POLICY_CODES[policy], self.state.addr,
                 self.ctr.addr, self.rows_out.addr))

    def _scale_rows_launch(self, rows: int, ctr: int, ring: int) -> tuple:
        return ("scale_rows", self.nchunks, (self.table.addr, self.nchunks, rows, self.nrows, ctr, ring))

    def row_norms(self, kind: int, p: float, max_norm: float | None = None) -> int:
        """Each row's norm (and, given max_norm, its clip scale) on the device,
        nothing written; returns the call number (``row_result`` reads it)."""
        stream = self._stream()
        self._set_params(stream, row_max=math.inf if max_norm is None else max_norm)
        launches = self._reduce_launches(kind, p, "skip") + [self._rownorms_launch(kind, p, "skip")]
        self._run(("rownorms", kind, p), launches, stream)
        return self.calls

    def row_clip(self, kind: int, p: float, max_norm: float, policy: str) -> int:
        """Clip each row by its own norm, decided on the device (``policy``
        "error": nothing is written if any value is non-finite)."""
        stream = self._stream()
        self._set_params(stream, row_max=max_norm)
        launches = self._reduce_launches(kind, p, "skip") + [
            self._rownorms_launch(kind, p, policy),
            self._scale_rows_launch(self.rows_out.addr, self.ctr.addr, ck.RING)]
        self._run(("rowclip", kind, p, policy), launches, stream)
        return self.calls

    def unit_clip(self, nu: int, clipping: float, eps: float, policy: str) -> int:
        """Unit-wise adaptive clipping over a plan whose rows are the weights'
        units then the gradients' (``agc`` kernel); decided on the device."""
        stream = self._stream()
        self._set_params(stream, row_max=clipping, agc_eps=eps)
        launches = self._reduce_launches(ck.NORM_2, 2.0, "skip") + [
            self._rownorms_launch(ck.NORM_2, 2.0, "skip"),
            ("agc", -(-nu // ck.THREADS), (self.rows_out.addr, self.nrows, nu, self.params.addr,
                                           ck.POLICY_CODES[policy], self.state.addr, self.ctr.addr)),
            self._scale_rows_launch(self.rows_out.addr, self.ctr.addr, ck.RING)]
        self._run(("agc", policy), launches, stream)
        return self.calls

    def row_result(self, call: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(norms, flags, scales) per row of call ``call`` (waits for the device)."""
        self._check_slot(call)
        slot, nr = (call - 1) % ck.RING, self.nrows
        out = []
        for k in (ck.R_NORM, ck.R_FLAGS, ck.R_SCALE):
            a = np.empty(nr)
            if nr:
                self.launcher.download(a, self.rows_out.addr + 8 * (k * ck.RING + slot) * nr,
                                       self._call_streams[slot])
            out.append(a)
        return out[0], out[1].astype(np.int32), out[2]

    def row_apply(self, actions: np.ndarray, scales: np.ndarray) -> None:
        """Act on per-row host decisions (mixed lists)."""
        if not np.any(actions):
            return
        stream = self._stream()
        nr = self.nrows
        v = np.zeros((ck.R_FIELDS, nr))  # ring of one slot
        v[ck.R_SCALE], v[ck.R_ACTION] = scales, actions
        self.launcher.upload(self.rows_in, v.reshape(-1), stream)
        name, grid, args = self._scale_rows_launch(self.rows_in.addr, self.one.addr, 1)
        self.launcher.launch(name, grid, args, stream)

    def write_rows(self, rows: list[int], draws: list[np.ndarray]) -> None:
        """Copy host values (already in each row's dtype) into these rows."""
        stream = self._stream()
        for r, z in zip(rows, draws):
            b = self.rows[r]
            if b.n:
                self.launcher.upload(b.addr, np.ascontiguousarray(z).reshape(-1), stream)

    def _check_slot(self, call: int) -> None:
        if self.calls - call >= ck.RING:
            raise RuntimeError(
                f"these statistics were overwritten: a plan keeps its last {ck.RING} calls' "
                "statistics on the device; read them (or call .result()) sooner"
            )

    def apply(self, action: int, scale: float) -> None:
        """Act on a host decision (mixed lists): scale or zero every buffer."""
        if action == ck.A_NONE:
            return
        stream = self._stream()
        st = np.zeros(ck.STATE_LEN)
        st[ck.S_ACTION], st[ck.S_SCALE] = action, scale
        self.launcher.upload(self.override, st, stream)
        name, grid, args = self._scale_launch(self.override.addr, self.one.addr)
        self.launcher.launch(name, grid, args, stream)

    def clamp(self, v: float) -> None:
        self.launcher.launch("clamp", self.nchunks, (self.table.addr, self.nchunks, float(v)),
                             self._stream())

    # ---------------------------------------------------------------- results
    def state_of(self, call: int) -> np.ndarray:
        """The state vector of call number ``call`` (waits for the device)."""
        self._check_slot(call)
        out = np.empty(ck.STATE_LEN)
        slot = (call - 1) % ck.RING
        # on the stream that call ran on, not today's current stream: a copy on
        # another (non-blocking) stream would not be ordered after the kernels
        return self.launcher.download(out, self.state.addr + 8 * ck.STATE_LEN * slot,
                                      self._call_streams[slot])

    def copy_norm(self, call: int, dst: int) -> None:
        """Copy call ``call``'s norm (one float64) to device address ``dst`` on
        the stream that call ran on: ordered after its kernels, no host wait."""
        if self.calls - call >= ck.RING:
            raise RuntimeError(f"call {call}'s state was overwritten (a plan keeps {ck.RING})")
        slot = (call - 1) % ck.RING
        self.launcher.copy(dst, self.state.addr + 8 * (ck.STATE_LEN * slot + ck.S_NORM), 8,
                           self._call_streams[slot])

    def release(self) -> None:
        """Drop the references to the caller's arrays (the table has raw
        addresses): whoever runs the plan again must pass the same memory."""
        for b in self.rows:
            b.obj = None

    def flagged_callers(self, call: int) -> tuple[int, ...]:
        """Caller indices (sorted, duplicates included) of the buffers holding
        inf/NaN in call ``call``."""
        n = self.nchunks
        f = np.empty(n, np.int32)
        if n:
            slot = (call - 1) % ck.RING
            self.launcher.download(f, self.f.addr + 4 * n * slot, self._call_streams[slot])
        return self.map.callers(np.unique(self.chunk_rows[f != 0]).tolist())

    def write_random(self, draws: list[np.ndarray]) -> None:
        """Copy host steps (already rounded to each buffer's dtype) into the buffers."""
        stream = self._stream()
        for b, z in zip(self.rows, draws):
            if b.n:
                self.launcher.upload(b.addr, np.ascontiguousarray(z).reshape(-1), stream)

    def shapes(self) -> list[tuple[int, ...]]:
        return [(b.n,) for b in self.rows]

    def dtypes(self) -> list[np.dtype]:
        return [dtypes.NUMPY[b.code] for b in self.rows]


def _stream_getter(lib, stream, device):
    """A function returning the stream handle to launch on, made once per plan
    (torch.cuda.current_stream() alone costs ~8 us; its raw getter ~0.3 us)."""
    if stream is not None:
        h = _launch.stream_handle(stream)
        return lambda: h
    if lib == "torch":
        import torch

        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        if raw is not None:
            idx = int(device) if device is not None else torch.cuda.current_device()
            return lambda: raw(idx)
        return lambda: torch.cuda.current_stream().cuda_stream
    if lib == "cupy":
        import cupy

        return lambda: cupy.cuda.get_current_stream().ptr
    return lambda: None


def gpu_state() -> str:
    """One line for `fusedclip info`: can the GPU backend run here?"""
    try:
        from numba import cuda
    except ImportError:
        return "unavailable: numba-cuda is not installed (pip install 'fusedclip[cuda]')"
    if _launch.simulated():
        return "numba-cuda simulator (NUMBA_ENABLE_CUDASIM=1): kernels run in Python"
    try:
        if cuda.is_available():
            d = cuda.get_current_device()
            return f"available: {d.name.decode() if isinstance(d.name, bytes) else d.name}, cc {d.compute_capability}"
    except Exception as e:  # pragma: no cover
        return f"unavailable: {e}"
    return "unavailable: numba-cuda is installed but no CUDA driver or GPU was found"


def _require_cuda(i: int, fn: str) -> None:
    if not getattr(_launch._current, "needs_cuda", True):  # a launcher that runs nothing
        return
    try:
        from numba import cuda
    except ImportError:
        raise RuntimeError(
            f"{fn}: buffer {i} is a CUDA array, and the GPU backend needs numba-cuda: "
            "pip install 'fusedclip[cuda]'; nothing was modified"
        ) from None
    if not _launch.simulated() and not cuda.is_available():
        raise RuntimeError(
            f"{fn}: buffer {i} is a CUDA array, but no CUDA driver or GPU is available here; "
            "nothing was modified"
        )


def describe_all(objs: list, gpu_idx: list[int], writable: bool, fn: str):
    """Validate the CUDA buffers among ``objs``; dedupe; (rows, dups)."""
    _require_cuda(gpu_idx[0], fn)
    bufs = [_describe(objs[i], i, writable, fn) for i in gpu_idx]
    # dense ranges: two that overlap are the same buffer (same range and dtype:
    # counted once) or share some elements (an error); the clusters come from
    # the extent checker the CPU plan uses
    live = [b for b in bufs if b.n > 0]
    dup_of: dict[int, int] = {}
    if len(live) > 1:
        lo = np.fromiter((b.lo for b in live), np.int64, len(live))
        hi = np.fromiter((b.hi for b in live), np.int64, len(live))
        order = np.lexsort((np.arange(len(live)), lo))  # by start, then caller
        cid, busy = overlap_clusters(lo, hi, order)
        first: dict[int, Buf] = {}
        for pos in np.flatnonzero(busy).tolist():
            b = live[order[pos]]
            r = first.setdefault(int(cid[pos]), b)
            if r is b:
                continue
            if (b.lo, b.hi, b.code) != (r.lo, r.hi, r.code):
                raise partial_overlap(fn, r.caller, b.caller, where="GPU memory")
            dup_of[b.caller] = r.caller
    rows = [b for b in bufs if b.caller not in dup_of and b.n > 0]
    row_of = {b.caller: r for r, b in enumerate(rows)}
    dups: dict[int, list[int]] = {}
    for d, root in dup_of.items():
        dups.setdefault(row_of[root], []).append(d)
    return rows, dups


def make_gpu_plan(objs: list, gpu_idx: list[int], writable: bool, fn: str, stream=None,
                  keep_refs: bool = True) -> GpuPlan:
    rows, dups = describe_all(objs, gpu_idx, writable, fn)
    plan = GpuPlan(rows, dups, stream)
    if not keep_refs:  # a cached plan must not keep the caller's tensors alive
        plan.release()
    return plan


def layout_key(objs: list):
    """The function API's cache record of a GPU-only list (``_buffers``'
    ``_plan_cache``), or None where the list is not cached (an object that
    is neither a torch CUDA tensor nor a CUDA array with an interface).

    Torch CUDA tensors: each data pointer.  Anything else (numba and CuPy
    device arrays, any ``__cuda_array_interface__``, the simulator's arrays):
    what ``_describe`` reads to validate and plan it -- dtype, shape,
    strides, address and read-only flag -- so that a changed address or
    layout at the same object is planned (and checked) again, never served
    the plan of its old layout.  (CuPy's record comes from its attributes,
    which cost less than the interface dict it builds on each read; its
    arrays are always writable.)  The key also holds the objects' ids,
    checked through weak references."""
    try:
        mods = {t.__module__ or "" for t in set(map(type, objs))}
        if all(m.startswith("torch") for m in mods):
            return tuple([o.data_ptr() for o in objs]) if all(o.is_cuda for o in objs) else None
        if all(m.startswith("cupy") for m in mods):  # the same record, from cheap attributes
            return tuple([(o.data.ptr, o.dtype, o.shape, o.strides) for o in objs])
        out = []
        for o in objs:
            cai = _launch.array_interface(o)
            st = cai.get("strides")
            rec: tuple = (cai["typestr"], tuple(cai["shape"]), st if st is None else tuple(st),
                          tuple(cai["data"]))
            if "V" in rec[0]:  # bfloat16 exported as void: _describe reads the object's dtype
                rec += (str(getattr(o, "dtype", "")),)
            out.append(rec)
        return tuple(out)
    except Exception:
        return None


class DeviceClipStats:
    """ClipStats whose numbers stay on the GPU until an attribute is read.

    The first attribute read copies the state vector to the host (one wait);
    ``result()`` gives the plain ``ClipStats``.  A plan keeps the state of its
    last RING calls; reading older statistics raises RuntimeError.
    """

    _FIELDS = ClipStats._fields

    def __init__(self, plan: GpuPlan, call: int, host: ClipStats | None = None):
        self._plan, self._call = plan, call
        self._host = host

    def result(self) -> ClipStats:
        if self._host is None:
            self._host = stats_from_state(self._plan, self._call, self._plan.state_of(self._call))
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


def stats_from_state(plan: GpuPlan, call: int, st: np.ndarray) -> ClipStats:
    finite = bool(st[ck.S_FINITE])
    bad: tuple[int, ...] = () if finite else plan.flagged_callers(call)
    return ClipStats(float(st[ck.S_NORM]), float(st[ck.S_SCALE]), bool(st[ck.S_CLIPPED]), finite,
                     float(st[ck.S_THRESHOLD]), bad)
