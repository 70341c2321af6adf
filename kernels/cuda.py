"""fusedclip GPU kernels (Numba CUDA): one chunk table, K buffers per launch.

Nothing here is compiled, and numba is not even imported, until the first
kernel is asked for: ``import fusedclip`` works on machines without CUDA.

Design (docs/GPU.md has the traffic model and the ptxas figures):

* **Chunk table.** Every buffer is cut into chunks of ``CHUNK`` elements; a
  table row is ``(slot, start, length)`` in int64, so offsets past 2**31 are
  plain arithmetic.  Buffers of one dtype go ``K`` at a time into a launch,
  as a ``UniTuple`` of K 1-D arrays (Apex's multi_tensor_apply idea); one
  block reduces one chunk.  A call makes one partials launch and one scale
  launch per K buffers, plus one finalize launch.
* **partials** -- each block reduces its chunk in float64 (sum of squares,
  sum of |x|, or max |x|; general p as a second pass relative to the chunk's
  max), with inf/NaN flags, and writes one partial ``(s, m, flags)``
  meaning s * m^p.  A float64 chunk whose sum overflows (or whose squares
  underflow) while every value is finite is recomputed by the same block as
  sum((|x|/m)^p), as the CPU kernels do, so finite inputs always give a
  finite, correct norm, for any p.
* **finalize** -- one block combines all partials in a fixed order (strided
  per thread, then a fixed tree), adds the CPU buffers' norm when the list is
  mixed, and writes norm, scale and the action to a device ``state`` vector.
  Deterministic for a given table and block size.
* **scale** -- reads the action and scale from ``state`` and returns at once
  when there is nothing to do: no host sync inside a clip, and no write when
  nothing is clipped.
* **clamp** -- element-wise clipping.

float16 and bfloat16 travel as uint16 and are converted by bit manipulation
(the same algorithms as kernels/simd.h), computing in float32; numba's float16
operators pull in shims that standalone ptxas cannot resolve.

Device helpers are ``inline="always"`` device functions.  Bit casts go
through a one-element local array viewed as the other type: the simulator
runs that as numpy, and NVVM turns it into a register move (ptxas reports no
stack frame).
"""
from __future__ import annotations

import math
import os

import numpy as np

#: Buffers per launch (the UniTuple's length).
K = 16
#: Threads per block; a power of two.
THREADS = 256
#: Elements per chunk (one block's work in the partials and scale kernels).
CHUNK = 1 << 16

# dtype codes, as in kernels/simd.h
F64, F32, BF16, F16 = 0, 1, 2, 3
DTYPE_NAMES = {F64: "float64", F32: "float32", BF16: "bfloat16", F16: "float16"}
# norm kinds, as in kernels/simd.h
NORM_P, NORM_1, NORM_2, NORM_INF = 0, 1, 2, 3
# non-finite policies
POLICY_CODES = {"error": 0, "skip": 1, "zero": 2, "random": 3, "propagate": 4}
# state vector
S_NORM, S_SCALE, S_ACTION, S_CLIPPED, S_FINITE, S_FLAGS, S_THRESHOLD = range(7)
STATE_LEN = 8
A_NONE, A_SCALE, A_ZERO = 0, 1, 2

#: Kernel launches made so far (the tests count them).
launches = 0

#: numba.cuda, imported on first use.  A module global on purpose: the
#: simulator swaps module globals that are numba.cuda for its fake module.
cuda = None


def _numba_cuda():
    global cuda
    if cuda is None:
        from numba import cuda as _cuda

        cuda = _cuda
    return cuda

_kernels: dict = {}


def simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def configure(threads: int | None = None, chunk: int | None = None, k: int | None = None) -> None:
    """Change the launch geometry (the simulator tests use small blocks)."""
    global THREADS, CHUNK, K
    if threads is not None:
        if threads < 2 or threads & (threads - 1):
            raise ValueError("threads must be a power of two >= 2")
        THREADS = threads
    if chunk is not None:
        CHUNK = int(chunk)
    if k is not None:
        K = int(k)
    _kernels.clear()


# --------------------------------------------------------------------------- device code
def _device_helpers():
    """The per-dtype load / scale / clamp device functions, built on first use."""
    from numba import float32, float64, int64, uint16, uint32

    _numba_cuda()

    # Bit arithmetic is done in int64: numba types uint32 op int64 as float64.
    @cuda.jit(device=True, inline="always")
    def as_f32(u):
        a = cuda.local.array(1, uint32)
        a[0] = u
        return a.view(np.float32)[0]

    @cuda.jit(device=True, inline="always")
    def as_u32(f):
        a = cuda.local.array(1, float32)
        a[0] = f
        return int64(a.view(np.uint32)[0])

    @cuda.jit(device=True, inline="always")
    def ld_bf16(h):
        return as_f32(int64(h) << 16)

    @cuda.jit(device=True, inline="always")
    def st_bf16(f):
        u = as_u32(f)
        if (u & 0x7FFFFFFF) > 0x7F800000:  # NaN stays a quiet NaN
            return uint16((u >> 16) | 0x40)
        return uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)

    @cuda.jit(device=True, inline="always")
    def ld_f16(h):
        em = (int64(h) & 0x7FFF) << 13
        f = as_f32(em) * float32(5.192296858534828e33)  # 2**112: rebias, exact for subnormals
        if em >= (0x7C00 << 13):
            f = as_f32(em | 0x7F800000)  # inf, NaN
        if int64(h) & 0x8000:
            f = -f
        return f

    @cuda.jit(device=True, inline="always")
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
    @cuda.jit(device=True, inline="always")
    def load_f64(v):
        return v

    @cuda.jit(device=True, inline="always")
    def load_f32(v):
        return float64(v)

    @cuda.jit(device=True, inline="always")
    def load_bf16(v):
        return float64(ld_bf16(v))

    @cuda.jit(device=True, inline="always")
    def load_f16(v):
        return float64(ld_f16(v))

    # scale: storage * s, rounded once to storage (float64 math for
    # float64/float32 data, float32 math for the 16-bit types, as on the CPU)
    @cuda.jit(device=True, inline="always")
    def mul_f64(v, s):
        return v * s

    @cuda.jit(device=True, inline="always")
    def mul_f32(v, s):
        return float32(float64(v) * s)

    @cuda.jit(device=True, inline="always")
    def mul_bf16(v, s):
        return st_bf16(ld_bf16(v) * float32(s))

    @cuda.jit(device=True, inline="always")
    def mul_f16(v, s):
        return st_f16(ld_f16(v) * float32(s))

    # clamp to [-c, c]; NaN stays NaN
    @cuda.jit(device=True, inline="always")
    def clamp_f64(v, c):
        return c if v > c else (-c if v < -c else v)

    @cuda.jit(device=True, inline="always")
    def clamp_f32(v, c):
        w = float64(v)
        return float32(c if w > c else (-c if w < -c else w))

    @cuda.jit(device=True, inline="always")
    def clamp_bf16(v, c):
        w = ld_bf16(v)
        cc = float32(c)
        return st_bf16(cc if w > cc else (-cc if w < -cc else w))

    @cuda.jit(device=True, inline="always")
    def clamp_f16(v, c):
        w = ld_f16(v)
        cc = float32(c)
        return st_f16(cc if w > cc else (-cc if w < -cc else w))

    # one element into the partials: flags for inf/NaN, else max |x| and the sum
    @cuda.jit(device=True, inline="always")
    def accum(v, kind, s, m, f):
        a = abs(v)
        if v != v:
            f |= 1
        elif a == math.inf:
            f |= 2
        else:
            if a > m:
                m = a
            if kind == 2:
                s += v * v
            elif kind == 1:
                s += a
        return s, m, f

    return {
        "accum": accum,
        F64: (load_f64, mul_f64, clamp_f64),
        F32: (load_f32, mul_f32, clamp_f32),
        BF16: (load_bf16, mul_bf16, clamp_bf16),
        F16: (load_f16, mul_f16, clamp_f16),
    }


def _helpers():
    if "helpers" not in _kernels:
        _kernels["helpers"] = _device_helpers()
    return _kernels["helpers"]


def _make_partials(code: int, threads: int):
    from numba import float64, int32

    load = _helpers()[code][0]
    accum = _helpers()["accum"]
    TINY = 2.0**-400  # float64 squares below 2**-1022 would lose precision

    @cuda.jit
    def partials(bufs, table, base, kind, p, out_s, out_m, out_f):
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        slot = table[c, 0]
        start = table[c, 1]
        stop = start + table[c, 2]
        x = bufs[slot]
        sh_s = cuda.shared.array(threads, float64)
        sh_m = cuda.shared.array(threads, float64)
        sh_f = cuda.shared.array(threads, int32)
        s = 0.0
        m = 0.0
        f = 0
        # int64 indices (start and stop come from the int64 table); four loads
        # in flight per thread, so that enough bytes are in flight to cover
        # the memory latency (docs/GPU.md)
        i = start + tid
        while i + 3 * threads < stop:
            v0 = load(x[i])
            v1 = load(x[i + threads])
            v2 = load(x[i + 2 * threads])
            v3 = load(x[i + 3 * threads])
            s, m, f = accum(v0, kind, s, m, f)
            s, m, f = accum(v1, kind, s, m, f)
            s, m, f = accum(v2, kind, s, m, f)
            s, m, f = accum(v3, kind, s, m, f)
            i += 4 * threads
        while i < stop:
            s, m, f = accum(load(x[i]), kind, s, m, f)
            i += threads
        sh_s[tid] = s
        sh_m[tid] = m
        sh_f[tid] = f
        cuda.syncthreads()
        step = threads // 2
        while step > 0:  # fixed tree: deterministic
            if tid < step:
                sh_s[tid] += sh_s[tid + step]
                if sh_m[tid + step] > sh_m[tid]:
                    sh_m[tid] = sh_m[tid + step]
                sh_f[tid] |= sh_f[tid + step]
            cuda.syncthreads()
            step //= 2
        s = sh_s[0]
        m = sh_m[0]
        f = sh_f[0]
        scale = 1.0
        # block-uniform: recompute the chunk relative to its max m (general p
        # always; the fast paths when float64 left its range with every value
        # finite); the partial is then s * m^p with s = sum (|x|/m)^p
        if f == 0 and m > 0.0 and (kind == 0 or (kind == 2 and (s == math.inf or m < TINY))
                                   or (kind == 1 and s == math.inf)):
            scale = m
            pw = p if kind == 0 else (2.0 if kind == 2 else 1.0)
            t = 0.0
            i = start + tid
            while i < stop:
                y = abs(load(x[i])) / scale
                if pw == 2.0:
                    t += y * y
                elif pw == 1.0:
                    t += y
                else:
                    t += math.pow(y, pw)
                i += threads
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
        if kind == 3:
            s = m
        elif scale == 1.0 and s > 0.0 and f == 0:
            # a plain L1/L2 partial becomes (1, its chunk's norm): the finalize
            # then combines every partial relative to the largest, so a total
            # beyond float64's range cannot overflow (issue 7)
            scale = math.sqrt(s) if kind == 2 else s
            s = 1.0
        if tid == 0:
            out_s[base + c] = 0.0 if f else s
            out_m[base + c] = 1.0 if f else scale
            out_f[base + c] = f

    return partials


def _make_finalize(threads: int):
    from numba import float64, int32

    _numba_cuda()
    INT_MIN = -(2**31)

    @cuda.jit
    def finalize(out_s, out_m, out_f, n, cpu_norm, cpu_flags, kind, p, max_norm, policy, state):
        # partial i contributes out_s[i] * out_m[i]^p; the CPU buffers of a
        # mixed list come in as one more partial, s = 1 and m = their norm
        tid = cuda.threadIdx.x
        sh_a = cuda.shared.array(threads, float64)
        sh_f = cuda.shared.array(threads, int32)
        f = 0
        big = 0.0
        i = tid
        while i < n:
            f |= out_f[i]
            if out_s[i] > 0.0 and out_m[i] > big:
                big = out_m[i]
            i += threads
        cpu = cpu_norm > 0.0 and cpu_norm < math.inf
        if tid == 0:
            f |= cpu_flags
            if cpu and cpu_norm > big:
                big = cpu_norm
        sh_a[tid] = big
        sh_f[tid] = f
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if tid < step:
                if sh_a[tid + step] > sh_a[tid]:
                    sh_a[tid] = sh_a[tid + step]
                sh_f[tid] |= sh_f[tid + step]
            cuda.syncthreads()
            step //= 2
        big = sh_a[0]
        f = sh_f[0]
        cuda.syncthreads()  # every thread has read sh_a[0]
        pw = p if kind == 0 else (2.0 if kind == 2 else 1.0)
        # each thread adds its partials in order, then a fixed tree
        a = 0.0
        i = tid
        while i < n:
            if kind == 3:
                if out_s[i] > a:
                    a = out_s[i]
            elif out_s[i] > 0.0:
                r = out_m[i] / big
                if pw == 2.0:
                    a += out_s[i] * (r * r)
                elif pw == 1.0:
                    a += out_s[i] * r
                else:
                    a += out_s[i] * math.pow(r, pw)
            i += threads
        if tid == 0 and cpu:
            if kind == 3:
                if cpu_norm > a:
                    a = cpu_norm
            else:
                a += math.pow(cpu_norm / big, pw)
        sh_a[tid] = a
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if tid < step:
                if kind == 3:
                    if sh_a[tid + step] > sh_a[tid]:
                        sh_a[tid] = sh_a[tid + step]
                else:
                    sh_a[tid] += sh_a[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            total = sh_a[0]
            if kind == 3:
                norm = total
            elif big == 0.0:
                norm = 0.0
            elif pw == 2.0:
                norm = big * math.sqrt(total)
            elif pw == 1.0:
                norm = big * total
            else:
                norm = big * math.pow(total, 1.0 / pw)
            if f & 1:
                norm = math.nan
            elif f & 2:
                norm = math.inf
            action = 0
            scale = 1.0
            clipped = 0.0
            if f == 0:
                if norm > max_norm:
                    action = 1
                    if kind == 3 or norm < math.inf:
                        scale = max_norm / norm
                    else:  # finite data whose norm is beyond float64: norm = big * root
                        root = math.sqrt(total) if pw == 2.0 else (
                            total if pw == 1.0 else math.pow(total, 1.0 / pw))
                        scale = (max_norm / big) / root
                    clipped = 1.0
            elif policy == 2:  # zero
                action = 2
                scale = 0.0
                clipped = 1.0
            elif policy == 4:  # propagate: 0 for an inf norm, NaN for a NaN norm
                action = 1
                scale = max_norm / norm
                clipped = 1.0
            state[0] = norm
            state[1] = scale
            state[2] = action
            state[3] = clipped
            state[4] = 1.0 if f == 0 else 0.0
            state[5] = f
            state[6] = max_norm

    return finalize


def _make_scale(code: int, threads: int):
    mul = _helpers()[code][1]

    @cuda.jit
    def scale(bufs, table, state):
        action = state[2]
        if action == 0:  # nothing to write: return before touching memory
            return
        c = cuda.blockIdx.x
        x = bufs[table[c, 0]]
        start = table[c, 1]
        stop = start + table[c, 2]
        s = state[1]
        i = start + cuda.threadIdx.x
        if action == 2:
            while i < stop:
                x[i] = 0
                i += threads
        else:
            while i + 3 * threads < stop:  # four loads in flight, as in partials
                v0 = x[i]
                v1 = x[i + threads]
                v2 = x[i + 2 * threads]
                v3 = x[i + 3 * threads]
                x[i] = mul(v0, s)
                x[i + threads] = mul(v1, s)
                x[i + 2 * threads] = mul(v2, s)
                x[i + 3 * threads] = mul(v3, s)
                i += 4 * threads
            while i < stop:
                x[i] = mul(x[i], s)
                i += threads

    return scale


def _make_clamp(code: int, threads: int):
    clamp = _helpers()[code][2]

    @cuda.jit
    def clamp_kernel(bufs, table, v):
        c = cuda.blockIdx.x
        x = bufs[table[c, 0]]
        start = table[c, 1]
        stop = start + table[c, 2]
        i = start + cuda.threadIdx.x
        while i < stop:
            x[i] = clamp(x[i], v)
            i += threads

    return clamp_kernel


_FACTORIES = {"partials": _make_partials, "scale": _make_scale, "clamp": _make_clamp}


def kernel(name: str, code: int | None = None):
    """The (lazily built, lazily compiled) kernel ``name`` for dtype ``code``."""
    key = (name, code, THREADS)
    if key not in _kernels:
        if name == "finalize":
            _kernels[key] = _make_finalize(THREADS)
        else:
            _kernels[key] = _FACTORIES[name](code, THREADS)
    return _kernels[key]


def launch(name: str, code: int | None, blocks: int, *args) -> None:
    """Launch a kernel (counted in ``launches``)."""
    global launches
    launches += 1
    kernel(name, code)[blocks, THREADS](*args)


# --------------------------------------------------------------------------- real compile
def signatures(code: int):
    """Argument types of every kernel for dtype ``code``, for compile_ptx."""
    from numba import types

    elem = {F64: types.float64, F32: types.float32, BF16: types.uint16, F16: types.uint16}[code]
    arr = types.Array(elem, 1, "C")
    bufs = types.UniTuple(arr, K)
    table = types.Array(types.int64, 2, "C")
    f64v = types.Array(types.float64, 1, "C")
    i32v = types.Array(types.int32, 1, "C")
    return {
        "partials": (bufs, table, types.int64, types.int64, types.float64, f64v, f64v, i32v),
        "scale": (bufs, table, f64v),
        "clamp": (bufs, table, types.float64),
    }


def finalize_signature():
    from numba import types

    f64v = types.Array(types.float64, 1, "C")
    i32v = types.Array(types.int32, 1, "C")
    return (f64v, f64v, i32v, types.int64, types.float64, types.int64, types.int64, types.float64,
            types.float64, types.int64, f64v)


def compile_all_ptx(cc: tuple[int, int]) -> dict[str, str]:
    """PTX for every kernel specialisation, without a GPU.

    numba-cuda asks the driver for the current device's compute capability
    when it compiles a device function called from a kernel; there is no
    driver here, so the question is answered with the target ``cc``.  The
    compilation itself is numba's own.  Must not run under the simulator.
    """
    if simulator():
        raise RuntimeError("compile_all_ptx cannot run under NUMBA_ENABLE_CUDASIM")
    import numba.cuda.dispatcher as dispatcher

    _numba_cuda()

    class _Target:
        compute_capability = cc
        id = 0

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Target
    try:
        out = {}
        for code, dname in DTYPE_NAMES.items():
            for name, sig in signatures(code).items():
                ptx, _ = cuda.compile_ptx(kernel(name, code).py_func, sig, cc=cc)
                out[f"{name}_{dname}"] = ptx
        ptx, _ = cuda.compile_ptx(kernel("finalize").py_func, finalize_signature(), cc=cc)
        out["finalize"] = ptx
        return out
    finally:
        dispatcher.get_current_device = saved
