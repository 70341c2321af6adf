"""fusedclip GPU kernels (Numba CUDA), v2: one address table, three launches.

Nothing here is compiled, and numba is not even imported, until the first
kernel is asked for: ``import fusedclip`` works on machines without CUDA.

Design (docs/GPU.md has the traffic model, the launch path and the figures):

* **One table for every buffer and dtype.** Each buffer is cut into chunks of
  ``CHUNK`` elements; a table row is four int64 ``(address, length, dtype
  code, row)``, the address already pointing at the chunk's first element.
  One block reduces (or scales) one chunk, and branches once, block-uniformly,
  on its dtype.  So a norm clip is **three launches whatever the number of
  buffers and the mix of dtypes** (partials, finalize, scale), and a value
  clip one (clamp).  Apex's ``multi_tensor_apply`` has the same chunk table;
  here the whole list goes in one launch because the table is in device
  memory instead of the kernel's parameter space.
* **Kernel arguments are raw addresses and scalars**, never numba arrays.
  ``as_ptr`` (an ``intrinsic`` whose code is one ``inttoptr``) makes a typed
  pointer of an int64 address on the GPU; under the simulator it is a numpy
  view of that host address, so the same kernel source runs in both.
* **Numba writes the kernels; cuda.core launches them.**  ``cuda.compile_ptx``
  turns each kernel into PTX once per compute capability, cuda.core's
  ``Linker`` (nvJitLink) makes a cubin of it (cached on disk, see ``CACHE_DIR``), and
  ``cuda.core.launch`` starts it: about 5 µs of host time, against 25-150 µs
  through numba's dispatcher.  A plan's three launches are captured once as
  a CUDA graph and replayed (``_gpu.py``).
* **partials** -- each block reduces its chunk in float64 (sum of squares,
  sum of |x|, or max |x|; general p as a second pass relative to the chunk's
  max), with inf/NaN flags, and writes one partial ``(s, m)`` meaning
  s * m^p, always in relative form: a plain L1/L2 sum S becomes
  (1, S^(1/p)), the chunk's own norm; a float64 chunk whose sum overflows or
  whose squares underflow is recomputed as sum (|x|/m)^p.  So s is in
  [1, n] and no sum of partials can overflow.
* **finalize** -- one block combines the partials in a fixed order
  (relative to the largest m), decides the action from the norm, the
  threshold (read from device memory, so changing it needs no new graph)
  and the non-finite policy, and writes the state vector.  The state and
  the per-chunk flags go to slot ``ctr % RING`` of a ring, and ``ctr`` is
  advanced on the device, so that RING calls' statistics stay readable.
* **scale** -- reads the action and scale from the state and returns at
  once when there is nothing to do: no host wait inside a clip, and no
  write when nothing is clipped.
* **clamp** -- element-wise clipping.

float16 and bfloat16 are read as uint16 and converted by bit manipulation
(the same algorithms as kernels/simd.h), computing in float32.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from typing import Any
from pathlib import Path

import numpy as np

from . import cpu, dtypes
from .cudacore import core


def _env_int(name: str, default: int, ok, what: str) -> int:
    """A launch-geometry setting from the environment, read once at import."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    v: int | None
    try:
        v = int(raw)
    except ValueError:
        v = None
    if v is None or not ok(v):
        raise ValueError(f"{name}={raw!r}: must be {what}")
    return v


#: Threads per block; a power of two.  FUSEDCLIP_GPU_THREADS sets it (the
#: simulator suites use 16: the simulator runs each thread as a Python thread).
THREADS = _env_int("FUSEDCLIP_GPU_THREADS", 256, lambda v: v >= 2 and not v & (v - 1),
                   "a power of two >= 2")
#: Elements per chunk (one block's work in the partials and scale kernels);
#: FUSEDCLIP_GPU_CHUNK sets it (the simulator suites use 48).
CHUNK = _env_int("FUSEDCLIP_GPU_CHUNK", 1 << 16, lambda v: v >= 1, "a positive integer")
#: Loads in flight per thread in the partials and scale loops (4 or 8):
#: enough bytes must be outstanding to cover HBM latency (docs/GPU.md).
UNROLL = int(os.environ.get("FUSEDCLIP_GPU_UNROLL", "8"))
#: How many calls' statistics (state and flags) a plan keeps on the device.
RING = 8

# The codes: dtypes from kernels/dtypes.py's table, norm kinds from simd.h through kernels.cpu.
F64, F32, BF16, F16 = dtypes.F64, dtypes.F32, dtypes.BF16, dtypes.F16
NORM_P, NORM_1, NORM_2, NORM_INF = cpu.NORM_P, cpu.NORM_1, cpu.NORM_2, cpu.NORM_INF
HAS_NAN, HAS_INF = cpu.HAS_NAN, cpu.HAS_INF
# non-finite policies and actions: one table, shared with the host (_policy)
from .codes import A_NONE, A_SCALE, A_ZERO, POLICY_CODES  # noqa: E402

_ZERO_POLICY, _PROPAGATE_POLICY = POLICY_CODES["zero"], POLICY_CODES["propagate"]
#: the state vector, one per call (float64): the norm is big * t^(1/p)
S_NORM, S_SCALE, S_ACTION, S_CLIPPED, S_FINITE, S_FLAGS, S_THRESHOLD, S_BIG, S_T = range(9)
STATE_LEN = 16
#: table row: address, length, dtype code, row (int64 each)
ROW = 4

#: numba.cuda, imported on first use.  A module global on purpose: the
#: simulator swaps module globals that are numba.cuda for its fake module.
cuda: Any = None


def _numba_cuda():
    global cuda
    if cuda is None:
        from numba import cuda as _cuda

        cuda = _cuda
    return cuda


_kernels: dict = {}


def simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# --------------------------------------------------------------------------- device code
def _device_helpers():
    """The per-dtype load / scale / clamp device functions, built on first use."""
    from numba import float32, float64, int64, uint16, uint32

    _numba_cuda()

    # Bit arithmetic is done in int64: numba types uint32 op int64 as float64.
    @cuda.jit(device=True)
    def as_f32(u):
        a = cuda.local.array(1, uint32)
        a[0] = u
        return a.view(np.float32)[0]

    @cuda.jit(device=True)
    def as_u32(f):
        a = cuda.local.array(1, float32)
        a[0] = f
        return int64(a.view(np.uint32)[0])

    @cuda.jit(device=True)
    def ld_bf16(h):
        return as_f32(int64(h) << 16)

    @cuda.jit(device=True)
    def st_bf16(f):
        u = as_u32(f)
        if (u & 0x7FFFFFFF) > 0x7F800000:  # NaN stays a quiet NaN
            return uint16((u >> 16) | 0x40)
        return uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)

    @cuda.jit(device=True)
    def ld_f16(h):
        em = (int64(h) & 0x7FFF) << 13
        f = as_f32(em) * float32(5.192296858534828e33)  # 2**112: rebias, exact for subnormals
        if em >= (0x7C00 << 13):
            f = as_f32(em | 0x7F800000)  # inf, NaN
        if int64(h) & 0x8000:
            f = -f
        return f

    @cuda.jit(device=True)
    def st_f16(f):
        u = as_u32(f)
        sign = (u >> 16) & 0x8000
        u = u & 0x7FFFFFFF
        if u >= 0x477FF000:  # rounds to >= 65520: inf, or NaN
            r = 0x7E00 if u > 0x7F800000 else 0x7C00
        elif u < 0x38800000:  # subnormal result: adding 0.5 aligns the mantissa
            r = as_u32(as_f32(u) + float32(0.5)) - 0x3F000000
        else:  # normal: rebias (-112 << 23), round the 13 dropped bits to nearest even
            r = (u - 0x38000000 + 0xFFF + ((u >> 13) & 1)) >> 13
        return uint16(r | sign)

    # load: storage -> float64 value
    @cuda.jit(device=True)
    def load_f64(v):
        return v

    @cuda.jit(device=True)
    def load_f32(v):
        return float64(v)

    @cuda.jit(device=True)
    def load_bf16(v):
        return float64(ld_bf16(v))

    @cuda.jit(device=True)
    def load_f16(v):
        return float64(ld_f16(v))

    # scale: storage * s, the exact product rounded once to storage (as on
    # the CPU, kernels/simd.h "correctly rounded scaling"): the float64
    # product rounded to odd (its error from an FMA), then to float32 rounded
    # to odd, then to the 16-bit type to nearest even.  The device has the
    # FLOP rate for it; the CPU's fast path with its per-lane proof is not
    # needed here.
    @cuda.jit(device=True)
    def as_f64(u):
        a = cuda.local.array(1, int64)
        a[0] = u
        return a.view(np.float64)[0]

    @cuda.jit(device=True)
    def as_i64(f):
        a = cuda.local.array(1, float64)
        a[0] = f
        return a.view(np.int64)[0]

    if simulator():  # the simulator's cuda.fma is a*b+c, two roundings: Dekker's exact product error
        @cuda.jit(device=True)
        def mul_err(a, b, p):
            k = 134217729.0  # 2^27 + 1: splits a float64 in two 26-bit halves
            t = k * a
            ah = t - (t - a)
            al = a - ah
            t = k * b
            bh = t - (t - b)
            bl = b - bh
            return ((ah * bh - p) + ah * bl + al * bh) + al * bl
    else:
        @cuda.jit(device=True)
        def mul_err(a, b, p):
            return cuda.fma(a, b, -p)

    @cuda.jit(device=True)
    def mul_rto(x, s):  # x*s rounded to odd at float64 precision
        p = x * s
        e = mul_err(x, s, p)
        b = as_i64(p)
        if e != 0.0 and e == e and abs(e) != math.inf and (b & 1) == 0:
            b = b + 1 if (b ^ as_i64(e)) >= 0 else b - 1  # toward x*s, in magnitude
        return as_f64(b)

    @cuda.jit(device=True)
    def f32_rto(d):  # a float64 rounded to odd at float32 precision
        f = float32(d)
        if float64(f) != d and d == d:
            u = as_u32(f)
            if (u & 1) == 0:
                u = u + 1 if abs(float64(f)) < abs(d) else u - 1
                f = as_f32(u)
        return f

    @cuda.jit(device=True)
    def mul_f64(v, s):
        return v * s

    @cuda.jit(device=True)
    def mul_f32(v, s):
        return float32(mul_rto(float64(v), s))

    @cuda.jit(device=True)
    def mul_bf16(v, s):
        return st_bf16(f32_rto(mul_rto(float64(ld_bf16(v)), s)))

    @cuda.jit(device=True)
    def mul_f16(v, s):
        return st_f16(f32_rto(mul_rto(float64(ld_f16(v)), s)))

    # clamp to [-c, c]; NaN stays NaN
    @cuda.jit(device=True)
    def clamp_f64(v, c):
        return c if v > c else (-c if v < -c else v)

    @cuda.jit(device=True)
    def clamp_f32(v, c):
        w = float64(v)
        return float32(c if w > c else (-c if w < -c else w))

    @cuda.jit(device=True)
    def clamp_bf16(v, c):
        w = ld_bf16(v)
        cc = float32(c)
        return st_bf16(cc if w > cc else (-cc if w < -cc else w))

    @cuda.jit(device=True)
    def clamp_f16(v, c):
        w = ld_f16(v)
        cc = float32(c)
        return st_f16(cc if w > cc else (-cc if w < -cc else w))

    # one element into the partials, as cheaply as the norm allows: the sum
    # for L1/L2 (which is inf/NaN iff a value is, except float64 squares
    # that overflow), max |x| where needed (tm), and z = sum(x * 0), NaN iff
    # a value is inf/NaN, for the other norms.  Flags are found afterwards,
    # by a classify pass over the rare chunks whose result is not finite.
    @cuda.jit(device=True)
    def accum(v, kind, s, m, z, tm):
        if kind == NORM_2:
            s += v * v
        elif kind == NORM_1:
            s += abs(v)
        else:
            z += v * 0.0
        if tm:
            a = abs(v)
            m = a if a > m else m
        return s, m, z

    # the per-dtype device functions, one row per dtype of kernels/dtypes.py
    # (the counterpart of simd.h's FC_OPS): load to the compute type, the
    # scaled store, the clamp
    table = {
        F64: (load_f64, mul_f64, clamp_f64),
        F32: (load_f32, mul_f32, clamp_f32),
        BF16: (load_bf16, mul_bf16, clamp_bf16),
        F16: (load_f16, mul_f16, clamp_f16),
    }
    assert sorted(table) == [d.code for d in dtypes.TABLE], "a dtype without its CUDA loads"
    return {"accum": accum, **table}


def _helpers():
    if "helpers" not in _kernels:
        _kernels["helpers"] = _device_helpers()
    return _kernels["helpers"]


#: the element type each pointer kind reads: a dtype code's from the table, and the int words
_ELEM: dict[int | str, str] = {**{d.code: d.cuda_elem for d in dtypes.TABLE}, "i64": "int64", "i32": "int32"}


#: how a kernel reads an address under the simulator, where device memory is
#: host memory: set by the launcher layer, which owns that memory
#: (``fusedclip._launch.SimLauncher``); a list, so that the simulator's copy
#: of this module's globals sees the same hook
_HOST_VIEW: list = [None]


def set_host_view(view) -> None:
    """``view(addr, n, elem) -> array``: the simulator's reads of an address."""
    _HOST_VIEW[0] = view


def _pointer(elem: str):
    """as_ptr(address, length) -> something indexable as elem[length].

    On the GPU: an intrinsic whose code is one ``inttoptr`` (length unused).
    Under the simulator, kernels run as Python on host memory: a numpy view
    of the address."""
    from numba import types

    if simulator():
        def host_ptr(addr, n):
            return _HOST_VIEW[0](addr, n, elem)

        return cuda.jit(device=True)(host_ptr)

    from numba.cuda.extending import intrinsic

    nbtype = getattr(types, elem)

    @intrinsic
    def as_ptr(typingctx, addr, n):
        sig = types.CPointer(nbtype)(types.int64, types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(nbtype)))

        return sig, codegen

    return as_ptr


def _pointers():
    if "ptrs" not in _kernels:
        _numba_cuda()
        _kernels["ptrs"] = {k: _pointer(v) for k, v in _ELEM.items()}
    return _kernels["ptrs"]


def _per_dtype(code: int, threads: int):
    """The loops over one chunk of dtype ``code``: each thread's share."""
    from numba import int64

    unroll = UNROLL

    h = _helpers()
    load, mul, clamp = h[code]
    accum = h["accum"]
    as_ptr = _pointers()[code]

    @cuda.jit(device=True)
    def thread_sum(addr, n, tid, kind, tm):
        # four loads in flight per thread, so that enough bytes are in flight
        # to cover the memory latency (docs/GPU.md)
        x = as_ptr(addr, n)
        s = 0.0
        m = 0.0
        z = 0.0
        i = tid
        if unroll == 8:
            while i + 7 * threads < n:
                v0 = load(x[i])
                v1 = load(x[i + threads])
                v2 = load(x[i + 2 * threads])
                v3 = load(x[i + 3 * threads])
                v4 = load(x[i + 4 * threads])
                v5 = load(x[i + 5 * threads])
                v6 = load(x[i + 6 * threads])
                v7 = load(x[i + 7 * threads])
                s, m, z = accum(v0, kind, s, m, z, tm)
                s, m, z = accum(v1, kind, s, m, z, tm)
                s, m, z = accum(v2, kind, s, m, z, tm)
                s, m, z = accum(v3, kind, s, m, z, tm)
                s, m, z = accum(v4, kind, s, m, z, tm)
                s, m, z = accum(v5, kind, s, m, z, tm)
                s, m, z = accum(v6, kind, s, m, z, tm)
                s, m, z = accum(v7, kind, s, m, z, tm)
                i += 8 * threads
        while i + 3 * threads < n:
            v0 = load(x[i])
            v1 = load(x[i + threads])
            v2 = load(x[i + 2 * threads])
            v3 = load(x[i + 3 * threads])
            s, m, z = accum(v0, kind, s, m, z, tm)
            s, m, z = accum(v1, kind, s, m, z, tm)
            s, m, z = accum(v2, kind, s, m, z, tm)
            s, m, z = accum(v3, kind, s, m, z, tm)
            i += 4 * threads
        while i < n:
            s, m, z = accum(load(x[i]), kind, s, m, z, tm)
            i += threads
        return s, m, z

    @cuda.jit(device=True)
    def thread_classify(addr, n, tid):
        # flags (HAS_NAN / HAS_INF) and the max |x| over the finite values
        x = as_ptr(addr, n)
        f = 0
        fm = 0.0
        i = tid
        while i < n:
            v = load(x[i])
            a = abs(v)
            if v != v:
                f |= HAS_NAN
            elif a == math.inf:
                f |= HAS_INF
            elif a > fm:
                fm = a
            i += threads
        return f, fm

    @cuda.jit(device=True)
    def thread_psum(addr, n, tid, pw, scale):
        # sum (|x| / scale)^pw: the general-p and the rescue path
        x = as_ptr(addr, n)
        t = 0.0
        i = tid
        while i < n:
            y = abs(load(x[i])) / scale
            if pw == 2.0:
                t += y * y
            elif pw == 1.0:
                t += y
            else:
                t += math.pow(y, pw)
            i += threads
        return t

    @cuda.jit(device=True)
    def thread_scale(addr, n, tid, action, s):
        x = as_ptr(addr, n)
        i = tid
        if action == A_ZERO:
            while i < n:
                x[i] = 0
                i += threads
            return
        if unroll == 8:
            while i + 7 * threads < n:  # eight loads in flight, as in thread_sum
                v0 = x[i]
                v1 = x[i + threads]
                v2 = x[i + 2 * threads]
                v3 = x[i + 3 * threads]
                v4 = x[i + 4 * threads]
                v5 = x[i + 5 * threads]
                v6 = x[i + 6 * threads]
                v7 = x[i + 7 * threads]
                x[i] = mul(v0, s)
                x[i + threads] = mul(v1, s)
                x[i + 2 * threads] = mul(v2, s)
                x[i + 3 * threads] = mul(v3, s)
                x[i + 4 * threads] = mul(v4, s)
                x[i + 5 * threads] = mul(v5, s)
                x[i + 6 * threads] = mul(v6, s)
                x[i + 7 * threads] = mul(v7, s)
                i += 8 * threads
        while i + 3 * threads < n:  # four loads in flight
            v0 = x[i]
            v1 = x[i + threads]
            v2 = x[i + 2 * threads]
            v3 = x[i + 3 * threads]
            x[i] = mul(v0, s)
            x[i + threads] = mul(v1, s)
            x[i + 2 * threads] = mul(v2, s)
            x[i + 3 * threads] = mul(v3, s)
            i += 4 * threads
        while i < n:
            x[i] = mul(x[i], s)
            i += threads

    @cuda.jit(device=True)
    def thread_clamp(addr, n, tid, v):
        x = as_ptr(addr, n)
        i = tid
        while i < n:
            x[i] = clamp(x[i], v)
            i += threads

    if dtypes.ITEMSIZE[code] != 2:
        return thread_sum, thread_psum, thread_scale, thread_clamp, thread_classify

    # 16-bit data: one element per load leaves too few bytes in flight to
    # reach HBM bandwidth, so an 8-byte-aligned chunk is read as int64 words
    # of four elements (four words in flight: 32 bytes per thread), and the
    # unaligned remainder element by element.
    as_words = _pointers()["i64"]

    @cuda.jit(device=True)
    def accum4(w, kind, s, m, z, tm):
        s, m, z = accum(load(w & 0xFFFF), kind, s, m, z, tm)
        s, m, z = accum(load((w >> 16) & 0xFFFF), kind, s, m, z, tm)
        s, m, z = accum(load((w >> 32) & 0xFFFF), kind, s, m, z, tm)
        s, m, z = accum(load((w >> 48) & 0xFFFF), kind, s, m, z, tm)
        return s, m, z

    @cuda.jit(device=True)
    def mul4(w, s):
        r0 = int64(mul(w & 0xFFFF, s))
        r1 = int64(mul((w >> 16) & 0xFFFF, s))
        r2 = int64(mul((w >> 32) & 0xFFFF, s))
        r3 = int64(mul((w >> 48) & 0xFFFF, s))
        return r0 | (r1 << 16) | (r2 << 32) | (r3 << 48)

    @cuda.jit(device=True)
    def thread_sum16(addr, n, tid, kind, tm):
        nw = n >> 2 if (addr & 7) == 0 else 0
        s = 0.0
        m = 0.0
        z = 0.0
        if nw > 0:
            x = as_words(addr, nw)
            j = tid
            while j + 3 * threads < nw:
                w0 = x[j]
                w1 = x[j + threads]
                w2 = x[j + 2 * threads]
                w3 = x[j + 3 * threads]
                s, m, z = accum4(w0, kind, s, m, z, tm)
                s, m, z = accum4(w1, kind, s, m, z, tm)
                s, m, z = accum4(w2, kind, s, m, z, tm)
                s, m, z = accum4(w3, kind, s, m, z, tm)
                j += 4 * threads
            while j < nw:
                s, m, z = accum4(x[j], kind, s, m, z, tm)
                j += threads
        s2, m2, z2 = thread_sum(addr + 8 * nw, n - 4 * nw, tid, kind, tm)
        return s + s2, (m2 if m2 > m else m), z + z2

    @cuda.jit(device=True)
    def thread_scale16(addr, n, tid, action, s):
        nw = n >> 2 if ((addr & 7) == 0 and action == A_SCALE) else 0
        if nw > 0:
            x = as_words(addr, nw)
            j = tid
            while j + 3 * threads < nw:
                w0 = x[j]
                w1 = x[j + threads]
                w2 = x[j + 2 * threads]
                w3 = x[j + 3 * threads]
                x[j] = mul4(w0, s)
                x[j + threads] = mul4(w1, s)
                x[j + 2 * threads] = mul4(w2, s)
                x[j + 3 * threads] = mul4(w3, s)
                j += 4 * threads
            while j < nw:
                x[j] = mul4(x[j], s)
                j += threads
        thread_scale(addr + 8 * nw, n - 4 * nw, tid, action, s)

    return thread_sum16, thread_psum, thread_scale16, thread_clamp, thread_classify


#: the operations on one chunk, in _per_dtype's order, and their arguments after the code
_CHUNK_OPS = {"sum": 5, "psum": 5, "scale": 5, "clamp": 4, "classify": 3}


def _switch(name: str, fns: list, arity: int):
    """``name(code, *args)``: fns[code](*args), as one device function: the
    if-chain over the dtype codes, written from the table instead of by hand
    in every kernel.  The branch is block-uniform (a chunk has one dtype)."""
    args = ", ".join(f"a{i}" for i in range(arity))
    src = [f"def {name}(code, {args}):"]
    for c in range(len(fns) - 1):
        src += [f"    {'if' if c == 0 else 'elif'} code == {c}:", f"        return f{c}({args})"]
    src += [f"    return f{len(fns) - 1}({args})"]
    ns = {f"f{c}": f for c, f in enumerate(fns)}
    exec("\n".join(src), ns)  # the source above, made of constants only
    return cuda.jit(device=True)(ns[name])


def _chunk_ops(threads: int) -> dict:
    """Each chunk operation (``_CHUNK_OPS``) over every dtype: ``op(code,
    addr, n, tid, ...)`` dispatching on the chunk's dtype code."""
    key = ("chunk_ops", threads)
    if key not in _kernels:
        loops = [_per_dtype(d.code, threads) for d in dtypes.TABLE]
        _kernels[key] = {op: _switch(f"{op}_by_dtype", [lp[j] for lp in loops], arity)
                         for j, (op, arity) in enumerate(_CHUNK_OPS.items())}
    return _kernels[key]


# Kernel parameters: every pointer is an int64 address, so the four kernels
# have these fixed signatures (and cuda.core passes Python ints).
_I, _D = "int64", "float64"
SIGNATURES = {
    # table, nchunks, kind, p, out_s, out_m, out_f, ctr
    "partials": (_I, _I, _I, _D, _I, _I, _I, _I),
    # out_s, out_m, out_f, nchunks, kind, p, params, policy, state, ctr
    "finalize": (_I, _I, _I, _I, _I, _D, _I, _I, _I, _I),
    # table, nchunks, state, ctr
    "scale": (_I, _I, _I, _I),
    # table, nchunks, v
    "clamp": (_I, _I, _D),
    # out_s, out_m, out_f, rstart, nrows, nchunks, kind, p, params, policy, state, ctr, rows
    "rownorms": (_I, _I, _I, _I, _I, _I, _I, _D, _I, _I, _I, _I, _I),
    # table, nchunks, rows, nrows, ctr, ring
    "scale_rows": (_I, _I, _I, _I, _I, _I),
    # rows, nrows, nu, params, policy, state, ctr
    "agc": (_I, _I, _I, _I, _I, _I, _I),
}
#: params vector (float64, device): what a captured graph reads at run time.
#: [0, P_CONFIG) is uploaded by the host; the threshold state after it is the
#: device's own (ZScore's n, mean, m2, var, updated by finalize).
#: P_EPS: the rule's eps, clip when norm + eps > max_norm (_policy.decide; the torch drop-in's 1e-6)
P_MAX_NORM, P_EPS, P_ROW_MAX, P_MODE, P_ALPHA, P_Z, P_WARMUP, P_AGC_EPS = range(8)
P_CONFIG = 8
P_TSTATE = 8
PARAMS_LEN = 16
#: threshold modes (P_MODE): the host's max_norm, or ZScore run by finalize
MODE_FIXED, MODE_ZSCORE = 0, 1
#: per-row results (rownorms): field k of ring slot s for row r is at
#: rows + 8 * ((k * ring + s) * nrows + r)
R_NORM, R_FLAGS, R_SCALE, R_ACTION, R_BIG, R_ROOT = range(6)
R_FIELDS = 6


def _decision():
    """The device side of the clipping rule, shared by finalize and rownorms:
    the norm from (big, t), the decision (the table of _policy.decide), and
    the ZScore threshold step (thresholds.zscore_step)."""
    if "decision" in _kernels:
        return _kernels["decision"]

    @cuda.jit(device=True)
    def finish(total, big, f, kind, pw):
        """(norm, big, t, root) from a combined sum t relative to big."""
        if kind == NORM_INF:
            big = total
            total = 1.0 if big > 0.0 else 0.0
            root = total
        elif big == 0.0:
            big = 1.0
            total = 0.0
            root = 0.0
        elif pw == 2.0:
            root = math.sqrt(total)
        elif pw == 1.0:
            root = total
        else:
            root = math.pow(total, 1.0 / pw)
        norm = big * root
        if f & HAS_NAN:
            norm = math.nan
        elif f & HAS_INF:
            norm = math.inf
        return norm, big, total, root

    @cuda.jit(device=True)
    def decide(norm, big, root, f, max_norm, policy, eps):
        """(action, scale): error and random are A_NONE (the host acts).
        Clip when norm + eps > max_norm (eps: 0, or torch's 1e-6 in the drop-in)."""
        action = A_NONE
        scale = 1.0
        if f == 0:
            d = norm + eps
            if d > max_norm:
                action = A_SCALE
                # finite data whose norm is beyond float64: v / inf would
                # zero them; (v / big) / root is right
                scale = max_norm / d if d < math.inf else (max_norm / big) / root
        elif policy == _ZERO_POLICY:
            action = A_ZERO
            scale = 0.0
        elif policy == _PROPAGATE_POLICY:  # 0 for an inf norm, NaN for a NaN norm, as torch
            action = A_SCALE
            scale = max_norm / norm
        return action, scale

    @cuda.jit(device=True)
    def zscore(T, g, alpha, z, warmup):
        """thresholds.zscore_step on the state T = (n, mean, m2, var), in place."""
        n = T[0]
        mean = T[1]
        var = T[3]
        if not (g - g == 0.0):  # inf or NaN: no update
            return math.inf if n < warmup else mean + z * math.sqrt(var)
        if n < warmup:
            n += 1.0
            d = g - mean
            mean += d / n
            T[2] += d * (g - mean)
            T[0] = n
            T[1] = mean
            if n == warmup:
                T[3] = T[2] / n
            return math.inf
        thr = mean + z * math.sqrt(var)
        if g > thr:
            thr = mean + (z * z) * var / (g - mean)
        gp = g if g < thr else thr
        mean = alpha * mean + (1.0 - alpha) * gp
        d = gp - mean
        T[1] = mean
        T[3] = alpha * var + (1.0 - alpha) * (d * d)
        return thr

    _kernels["decision"] = (finish, decide, zscore)
    return _kernels["decision"]


def _tree_max_or(threads: int):
    """A block's fixed-tree reduction of (max of sh_m, OR of sh_f), the same
    order every call (deterministic); every thread gets the result."""
    @cuda.jit(device=True)
    def tree_max_or(sh_m, sh_f, tid):
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if tid < step:
                if sh_m[tid + step] > sh_m[tid]:
                    sh_m[tid] = sh_m[tid + step]
                sh_f[tid] |= sh_f[tid + step]
            cuda.syncthreads()
            step //= 2
        return sh_m[0], sh_f[0]

    return tree_max_or


def _make_partials(threads: int):
    from numba import float64, int32

    ops = _chunk_ops(threads)
    chunk_sum, chunk_psum, chunk_classify = ops["sum"], ops["psum"], ops["classify"]
    P = _pointers()
    p_i64, p_f64, p_i32 = P["i64"], P[F64], P["i32"]
    TINY = 2.0**-400  # float64 squares below 2**-1022 would lose precision
    tree_max_or = _tree_max_or(threads)

    def partials(table, nchunks, kind, p, out_s, out_m, out_f, ctr):
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        tb = p_i64(table, nchunks * ROW)
        addr = tb[c * ROW]
        n = tb[c * ROW + 1]
        code = tb[c * ROW + 2]
        sh_s = cuda.shared.array(threads, float64)
        sh_m = cuda.shared.array(threads, float64)
        sh_z = cuda.shared.array(threads, float64)
        sh_f = cuda.shared.array(threads, int32)
        plain = kind == NORM_2 or kind == NORM_1
        # max |x| is needed by the other norms, and by float64 L2 (underflow)
        tm = not plain or (code == F64 and kind == NORM_2)
        s, m, z = chunk_sum(code, addr, n, tid, kind, tm)
        sh_s[tid] = s
        sh_m[tid] = m
        sh_z[tid] = z
        cuda.syncthreads()
        step = threads // 2
        while step > 0:  # fixed tree: deterministic
            if tid < step:
                sh_s[tid] += sh_s[tid + step]
                if sh_m[tid + step] > sh_m[tid]:
                    sh_m[tid] = sh_m[tid + step]
                sh_z[tid] += sh_z[tid + step]
            cuda.syncthreads()
            step //= 2
        s = sh_s[0]
        m = sh_m[0]
        z = sh_z[0]
        f = 0
        # block-uniform: a result that is not finite means inf/NaN values, or
        # float64 squares that overflowed: classify the chunk (rare)
        if (s == math.inf or s != s) if plain else z != 0.0:
            f, fm = chunk_classify(code, addr, n, tid)
            cuda.syncthreads()  # every thread has read the first reduction
            sh_m[tid] = fm
            sh_f[tid] = f
            m, f = tree_max_or(sh_m, sh_f, tid)
        scale = 1.0
        rescaled = False
        # block-uniform: recompute the chunk relative to its max m (general p
        # always; the fast paths when float64 left its range with every value
        # finite); the partial is then s * m^p with s = sum (|x|/m)^p
        if f == 0 and m > 0.0 and (kind == NORM_P or (kind == NORM_2 and (s == math.inf or m < TINY))
                                   or (kind == NORM_1 and s == math.inf)):
            scale = m
            rescaled = True
            pw = p if kind == NORM_P else (2.0 if kind == NORM_2 else 1.0)
            t = chunk_psum(code, addr, n, tid, pw, scale)
            cuda.syncthreads()  # every thread has read sh_s[0]
            sh_s[tid] = t
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if tid < step:
                    sh_s[tid] += sh_s[tid + step]
                cuda.syncthreads()
                step //= 2
            s = sh_s[0]
        if kind == NORM_INF:
            s = m
        elif not rescaled and s > 0.0 and f == 0:  # (a chunk max of 1.0 is rescaled too)
            # a plain L1/L2 partial becomes (1, its chunk's norm): no sum of
            # partials can then overflow (issue 7)
            scale = math.sqrt(s) if kind == NORM_2 else s
            s = 1.0
        if tid == 0:
            slot = p_i64(ctr, 1)[0] % RING
            p_f64(out_s, nchunks)[c] = 0.0 if f else s
            p_f64(out_m, nchunks)[c] = 1.0 if f else scale
            p_i32(out_f, nchunks * RING)[slot * nchunks + c] = f

    return partials


def _make_finalize(threads: int):
    from numba import float64, int32

    P = _pointers()
    p_i64, p_f64, p_i32 = P["i64"], P[F64], P["i32"]
    tree_max_or = _tree_max_or(threads)
    finish, decide, zscore = _decision()

    def finalize(out_s, out_m, out_f, nchunks, kind, p, params, policy, state, ctr):
        # partial i contributes S[i] * M[i]^p, with S[i] in [1, n] or 0
        tid = cuda.threadIdx.x
        S = p_f64(out_s, nchunks)
        M = p_f64(out_m, nchunks)
        C = p_i64(ctr, 1)
        slot = C[0] % RING
        Fl = p_i32(out_f, nchunks * RING)
        sh_a = cuda.shared.array(threads, float64)
        sh_f = cuda.shared.array(threads, int32)
        f = 0
        big = 0.0
        i = tid
        while i < nchunks:
            f |= Fl[slot * nchunks + i]
            if S[i] > 0.0 and M[i] > big:
                big = M[i]
            i += threads
        sh_a[tid] = big
        sh_f[tid] = f
        big, f = tree_max_or(sh_a, sh_f, tid)
        cuda.syncthreads()  # every thread has read sh_a[0]
        pw = p if kind == NORM_P else (2.0 if kind == NORM_2 else 1.0)
        # each thread adds its partials in order, then a fixed tree
        a = 0.0
        i = tid
        while i < nchunks:
            if kind == NORM_INF:
                if S[i] > a:
                    a = S[i]
            elif S[i] > 0.0:
                r = M[i] / big
                if pw == 2.0:
                    a += S[i] * (r * r)
                elif pw == 1.0:
                    a += S[i] * r
                else:
                    a += S[i] * math.pow(r, pw)
            i += threads
        sh_a[tid] = a
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if tid < step:
                if kind == NORM_INF:
                    if sh_a[tid + step] > sh_a[tid]:
                        sh_a[tid] = sh_a[tid + step]
                else:
                    sh_a[tid] += sh_a[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            prm = p_f64(params, PARAMS_LEN)
            norm, big, total, root = finish(sh_a[0], big, f, kind, pw)
            max_norm = prm[P_MAX_NORM]
            if prm[P_MODE] == MODE_ZSCORE:  # the threshold from this norm, on the device
                T = p_f64(params + 8 * P_TSTATE, 4)
                max_norm = zscore(T, norm, prm[P_ALPHA], prm[P_Z], prm[P_WARMUP])
            # the decision: the same table as _policy.decide (error and random: none;
            # the host acts on them)
            action, scale = decide(norm, big, root, f, max_norm, policy, prm[P_EPS])
            st = p_f64(state, STATE_LEN * RING)
            o = slot * STATE_LEN
            st[o + S_NORM] = norm
            st[o + S_SCALE] = scale
            st[o + S_ACTION] = action
            st[o + S_CLIPPED] = 1.0 if action != A_NONE else 0.0
            st[o + S_FINITE] = 1.0 if f == 0 else 0.0
            st[o + S_FLAGS] = f
            st[o + S_THRESHOLD] = max_norm
            st[o + S_BIG] = big
            st[o + S_T] = total
            C[0] = C[0] + 1  # the next call's slot; scale reads slot ctr - 1

    return finalize


def _scale_chunk(threads: int):
    """Scale (or zero) chunk c of the table in place: the dtype branch, once
    per block, shared by the scale and scale_rows kernels."""
    key = ("scale_chunk", threads)
    if key in _kernels:
        return _kernels[key]
    chunk_scale = _chunk_ops(threads)["scale"]

    @cuda.jit(device=True)
    def scale_chunk(tb, c, tid, action, s):
        chunk_scale(tb[c * ROW + 2], tb[c * ROW], tb[c * ROW + 1], tid, action, s)

    _kernels[key] = scale_chunk
    return scale_chunk


def _make_scale(threads: int):
    scale_chunk = _scale_chunk(threads)
    P = _pointers()
    p_i64, p_f64 = P["i64"], P[F64]

    def scale(table, nchunks, state, ctr):
        slot = (p_i64(ctr, 1)[0] - 1) % RING
        st = p_f64(state, STATE_LEN * RING)
        action = int(st[slot * STATE_LEN + S_ACTION])
        if action == A_NONE:  # nothing to write: return before touching memory
            return
        scale_chunk(p_i64(table, nchunks * ROW), cuda.blockIdx.x, cuda.threadIdx.x, action,
                    st[slot * STATE_LEN + S_SCALE])

    return scale


def _make_clamp(threads: int):
    chunk_clamp = _chunk_ops(threads)["clamp"]
    p_i64 = _pointers()["i64"]

    def clamp(table, nchunks, v):
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        tb = p_i64(table, nchunks * ROW)
        chunk_clamp(tb[c * ROW + 2], tb[c * ROW], tb[c * ROW + 1], tid, v)

    return clamp


def _make_rownorms(threads: int):
    """Per-row norms and decisions: one thread per table row (a buffer, or a
    unit), combining its chunks' partials in order, after finalize (whose
    slot it reads).  With ``policy`` "error", any non-finite value in the
    call stops every row's write (the host raises)."""
    P = _pointers()
    p_i64, p_f64, p_i32 = P["i64"], P[F64], P["i32"]
    finish, decide, _ = _decision()
    _ERROR_POLICY = POLICY_CODES["error"]

    def rownorms(out_s, out_m, out_f, rstart, nrows, nchunks, kind, p, params, policy, state, ctr,
                 rows):
        r = cuda.blockIdx.x * threads + cuda.threadIdx.x
        if r >= nrows:
            return
        S = p_f64(out_s, nchunks)
        M = p_f64(out_m, nchunks)
        slot = (p_i64(ctr, 1)[0] - 1) % RING  # finalize advanced ctr
        Fl = p_i32(out_f, nchunks * RING)
        rs = p_i64(rstart, nrows + 1)
        lo = rs[r]
        hi = rs[r + 1]
        pw = p if kind == NORM_P else (2.0 if kind == NORM_2 else 1.0)
        f = 0
        big = 0.0
        for i in range(lo, hi):
            f |= Fl[slot * nchunks + i]
            if S[i] > 0.0 and M[i] > big:
                big = M[i]
        a = 0.0
        for i in range(lo, hi):
            if kind == NORM_INF:
                if S[i] > a:
                    a = S[i]
            elif S[i] > 0.0:
                q = M[i] / big
                if pw == 2.0:
                    a += S[i] * (q * q)
                elif pw == 1.0:
                    a += S[i] * q
                else:
                    a += S[i] * math.pow(q, pw)
        norm, big, total, root = finish(a, big, f, kind, pw)
        v = p_f64(params, PARAMS_LEN)[P_ROW_MAX]
        action, scale = decide(norm, big, root, f, v, policy, 0.0)
        if policy == _ERROR_POLICY and p_f64(state, STATE_LEN * RING)[slot * STATE_LEN + S_FLAGS] != 0.0:
            action = A_NONE
            scale = 1.0
        out = p_f64(rows, R_FIELDS * RING * nrows)
        out[(R_NORM * RING + slot) * nrows + r] = norm
        out[(R_FLAGS * RING + slot) * nrows + r] = f
        out[(R_SCALE * RING + slot) * nrows + r] = scale
        out[(R_ACTION * RING + slot) * nrows + r] = action
        out[(R_BIG * RING + slot) * nrows + r] = big
        out[(R_ROOT * RING + slot) * nrows + r] = root

    return rownorms


def _make_agc(threads: int):
    """Unit-wise adaptive clipping's decision (Brock et al., 2021), after
    rownorms: rows [0, nu) are the units of the weights, [nu, 2 nu) the same
    units of the gradients.  Gradient unit u is clipped to clipping *
    max(||W_u||, eps) (P_ROW_MAX, P_AGC_EPS) by the shared rule; the weight
    rows are never written."""
    P = _pointers()
    p_i64, p_f64 = P["i64"], P[F64]
    _, decide, _ = _decision()
    _ERROR_POLICY = POLICY_CODES["error"]

    def agc(rows, nrows, nu, params, policy, state, ctr):
        u = cuda.blockIdx.x * threads + cuda.threadIdx.x
        if u >= nu:
            return
        slot = (p_i64(ctr, 1)[0] - 1) % RING
        out = p_f64(rows, R_FIELDS * RING * nrows)
        prm = p_f64(params, PARAMS_LEN)
        g = nu + u
        wn = out[(R_NORM * RING + slot) * nrows + u]
        eps = prm[P_AGC_EPS]
        w = wn if (wn > eps or wn != wn) else eps  # max(||W||, eps); a NaN stays NaN (as the host)
        f = int(out[(R_FLAGS * RING + slot) * nrows + u]) | int(out[(R_FLAGS * RING + slot) * nrows + g])
        action, scale = decide(out[(R_NORM * RING + slot) * nrows + g], out[(R_BIG * RING + slot) * nrows + g],
                               out[(R_ROOT * RING + slot) * nrows + g], f, prm[P_ROW_MAX] * w, policy, 0.0)
        if policy == _ERROR_POLICY and p_f64(state, STATE_LEN * RING)[slot * STATE_LEN + S_FLAGS] != 0.0:
            action = A_NONE
            scale = 1.0
        out[(R_ACTION * RING + slot) * nrows + u] = A_NONE
        out[(R_ACTION * RING + slot) * nrows + g] = action
        out[(R_SCALE * RING + slot) * nrows + g] = scale
        out[(R_FLAGS * RING + slot) * nrows + g] = f

    return agc


def _make_scale_rows(threads: int):
    scale_chunk = _scale_chunk(threads)
    p_i64, p_f64 = _pointers()["i64"], _pointers()[F64]

    def scale_rows(table, nchunks, rows, nrows, ctr, ring):
        c = cuda.blockIdx.x
        tb = p_i64(table, nchunks * ROW)
        r = tb[c * ROW + 3]
        slot = (p_i64(ctr, 1)[0] - 1) % ring
        out = p_f64(rows, R_FIELDS * ring * nrows)
        action = int(out[(R_ACTION * ring + slot) * nrows + r])
        if action == A_NONE:  # this row is not written
            return
        scale_chunk(tb, c, cuda.threadIdx.x, action, out[(R_SCALE * ring + slot) * nrows + r])

    return scale_rows


_FACTORIES = {"partials": _make_partials, "finalize": _make_finalize, "scale": _make_scale,
              "clamp": _make_clamp, "rownorms": _make_rownorms, "scale_rows": _make_scale_rows,
              "agc": _make_agc}
KERNELS = tuple(_FACTORIES)


def py_kernel(name: str):
    """The Python source function of kernel ``name`` (built once per geometry)."""
    key = ("py", name, THREADS, UNROLL)
    if key not in _kernels:
        _numba_cuda()
        _kernels[key] = _FACTORIES[name](THREADS)
    return _kernels[key]


def signature(name: str):
    from numba import types

    return tuple(getattr(types, t) for t in SIGNATURES[name])


def _target_cc(cc):
    """numba-cuda asks the driver for the current device's compute capability
    when it compiles a device function called from a kernel: answer with the
    target ``cc`` (there may be no driver at all here)."""
    import contextlib

    import numba.cuda.dispatcher as dispatcher

    @contextlib.contextmanager
    def patched():
        class _Target:
            compute_capability = cc
            id = 0

        saved = dispatcher.get_current_device
        dispatcher.get_current_device = lambda: _Target
        try:
            yield
        finally:
            dispatcher.get_current_device = saved

    return patched()


def compile_ptx(name: str, cc: tuple[int, int]) -> str:
    """PTX of kernel ``name`` for compute capability ``cc``; needs no GPU."""
    if simulator():
        raise RuntimeError("compile_ptx cannot run under NUMBA_ENABLE_CUDASIM")
    _numba_cuda()
    with _target_cc(cc):
        ptx, _ = cuda.compile_ptx(py_kernel(name), signature(name), cc=cc)
    return ptx


def compile_all_ptx(cc: tuple[int, int]) -> dict[str, str]:
    """PTX for every kernel (each handles every dtype), without a GPU."""
    return {name: compile_ptx(name, cc) for name in KERNELS}


def entry_name(ptx: str) -> str:
    m = re.search(r"\.entry\s+([\w$]+)", ptx)
    if m is None:
        raise ValueError("PTX without an .entry")
    return m.group(1)


#: Where cubins are cached: one file per kernel, geometry and compute
#: capability, named by a hash of this source file and numba-cuda's version,
#: so that a new process pays no JIT.  FUSEDCLIP_CACHE_DIR overrides it.
CACHE_DIR = Path(os.environ.get("FUSEDCLIP_CACHE_DIR")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fusedclip")


def _source_hash() -> str:
    if "hash" not in _kernels:
        import numba_cuda

        h = hashlib.sha256(Path(__file__).read_bytes())
        h.update(getattr(numba_cuda, "__version__", "?").encode())
        _kernels["hash"] = h.hexdigest()[:16]
    return _kernels["hash"]


def link_cubin(ptx: str, cc: tuple[int, int], verbose: bool = False) -> tuple[bytes, str]:
    """PTX -> cubin as the runtime loads it, needing no GPU: cuda.core's
    ``Linker`` with the target architecture only -- nvJitLink where it is
    installed (the ``cuda`` extra brings it, through numba-cuda), else the
    driver's linker.  (``Program(ptx, code_type="ptx").compile("cubin")``,
    which this replaced, makes the same Linker call: with cuda-core 1.2.2 the
    bytes are identical.)
    Returns (cubin, info log).  ``verbose``: the log holds ptxas' -v lines
    (registers, spills, stack); that cubin's code is the same, only the note
    recording the options differs (``tools/ptx_report.py`` checks the
    registers against the non-verbose cubin's own record)."""
    Linker, LinkerOptions, ObjectCode = core("Linker"), core("LinkerOptions"), core("ObjectCode")
    arch = f"sm_{cc[0]}{cc[1]}"
    opts = LinkerOptions(arch=arch, verbose=True) if verbose else LinkerOptions(arch=arch)
    linker = Linker(ObjectCode.from_ptx(ptx.encode()), options=opts)  # bytes: a str is a path
    try:
        data = bytes(linker.link("cubin").code)
        return data, (linker.get_info_log() or "") if verbose else ""
    finally:
        linker.close()


def cubin_resources(data: bytes, entry: str) -> dict:
    """What a cubin itself records for kernel ``entry`` (no GPU, no log):
    ``registers`` per thread (EIATTR_REGCOUNT) and ``stack_bytes``, the
    per-thread frame that spills would live in (EIATTR_FRAME_SIZE), read from
    the ELF's ``.nv.info`` section."""
    import struct

    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def cstr(off):
        return data[off:data.index(b"\0", off)].decode()

    sec = {cstr(hdrs[shstrndx][4] + h[0]): data[h[4]:h[4] + h[5]] for h in hdrs}
    strtab, symtab = sec[".strtab"], sec[".symtab"]
    names = [strtab[st:strtab.index(b"\0", st)].decode()
             for st, in (struct.unpack_from("<I", symtab, k) for k in range(0, len(symtab), 24))]
    sym = names.index(entry)
    out, info, i = {}, sec[".nv.info"], 0
    while i + 4 <= len(info):
        fmt, attr = info[i], info[i + 1]
        if fmt == 0x04:  # EIFMT_SVAL: u16 size, then the value
            size, = struct.unpack_from("<H", info, i + 2)
            if attr in (0x2F, 0x11) and size == 8:
                s, v = struct.unpack_from("<II", info, i + 4)
                if s == sym:
                    out["registers" if attr == 0x2F else "stack_bytes"] = v
            i += 4 + size
        else:  # EIFMT_HVAL: a u16 value; EIFMT_NVAL: none
            i += 4 if fmt == 0x03 else 2
    return out


def cubin(name: str, cc: tuple[int, int]) -> tuple[bytes, str]:
    """(cubin bytes, entry name) of kernel ``name`` for ``cc``, from the disk
    cache or compiled now (numba -> PTX, ``link_cubin`` -> cubin)."""
    tag = f"{name}-t{THREADS}-u{UNROLL}-sm{cc[0]}{cc[1]}-{_source_hash()}"
    path, ename = CACHE_DIR / f"{tag}.cubin", CACHE_DIR / f"{tag}.entry"
    try:
        return path.read_bytes(), ename.read_text()
    except OSError:
        pass
    ptx = compile_ptx(name, cc)
    data, entry = link_cubin(ptx, cc)[0], entry_name(ptx)
    try:  # best effort: an unwritable cache only costs the next process a compile
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        ename.write_text(entry)
    except OSError:
        pass
    return data, entry


def sim_kernel(name: str):
    """The simulator's kernel object for ``name``."""
    key = ("sim", name, THREADS)
    if key not in _kernels:
        _kernels[key] = _numba_cuda().jit(py_kernel(name))
    return _kernels[key]
