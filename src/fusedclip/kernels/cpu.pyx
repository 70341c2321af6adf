# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fusedclip CPU kernels: the chunk table, OpenMP over chunks, nogil.

Layering (see docs/DESIGN.md):

* ``simd.h``   -- the inner loops, one per operation, instantiated per dtype.
* this module  -- the chunk table (``Table``), the table loop over its chunks
  (``tableloop.h``), and
  ``describe``, the fast per-buffer attribute read that lets the Python front
  end validate 10,000 buffers without a Python-level loop.
* ``fusedclip._buffers`` -- validation, dedupe, overlap and staging policy.

Determinism: every buffer is cut into the same fixed chunks whatever the
thread count, each chunk writes its own partial, and ``fc_combine`` adds the
partials in chunk order.  The norm is therefore bitwise identical for any
number of threads.
"""
from libc.stdint cimport int64_t, int32_t, int8_t, uint64_t, uintptr_t, INT64_MIN
from libc.string cimport memset, memcpy
from libc.stdlib cimport malloc, free
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast_ITEMS
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
cimport numpy as cnp
cimport openmp

import operator
import os

import numpy as np

from . import dtypes as _dtypes

cnp.import_array()

cdef extern from *:
    """
    #include "simd.h"
    #include "tableloop.h"
    #ifndef FC_BUILD_FLAGS
    #define FC_BUILD_FLAGS "unknown"
    #endif
    static const char *fc_build_flags = FC_BUILD_FLAGS;
    static const char *fc_cpu_level(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
        if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2, FMA, F16C)";
        return "default (baseline x86-64)";
    #else
        return "default";
    #endif
    }
    /* Bandwidth floor: the plainest full read and read-write of n 8-byte words.
     * `mask` is a run-time value (0) so the compiler can neither drop the loads
     * nor the stores. */
    FC_CLONES static uint64_t fc_floor_read(const uint64_t *x, int64_t n) {
        uint64_t acc = 0;
        FC_PRAGMA(omp simd reduction(^ : acc))
        for (int64_t i = 0; i < n; i++) acc ^= x[i];
        return acc;
    }
    FC_CLONES static void fc_floor_rw(uint64_t *x, int64_t n, uint64_t mask) {
        FC_PRAGMA(omp simd)
        for (int64_t i = 0; i < n; i++) x[i] ^= mask;
    }
    /* over blocks of FC_CHUNK words, threaded by the kernels' own table loop */
    static uint64_t fc_floor_read_all(const uint64_t *x, int64_t n, int nt, int par) {
        const int64_t nblk = (n + FC_CHUNK - 1) / FC_CHUNK;
        uint64_t acc = 0;
        FC_FOR_CHUNKS(nblk, nt, par, {
            const int64_t o = i * FC_CHUNK;
            const uint64_t a = fc_floor_read(x + o, n - o < FC_CHUNK ? n - o : FC_CHUNK);
            __atomic_fetch_xor(&acc, a, __ATOMIC_RELAXED);
        });
        return acc;
    }
    static void fc_floor_rw_all(uint64_t *x, int64_t n, uint64_t mask, int nt, int par) {
        const int64_t nblk = (n + FC_CHUNK - 1) / FC_CHUNK;
        FC_FOR_CHUNKS(nblk, nt, par, {
            const int64_t o = i * FC_CHUNK;
            fc_floor_rw(x + o, n - o < FC_CHUNK ? n - o : FC_CHUNK, mask);
        });
    }
    """
    const char *fc_build_flags
    const char *fc_f16_path
    const char *fc_ssq_path
    const char *fc_scale_path
    const char *fc_cpu_level() nogil
    uint64_t fc_floor_read(const uint64_t *x, int64_t n) noexcept nogil
    void fc_prefetch_obj "__builtin_prefetch" (const void *p) noexcept nogil
    void fc_table_reduce(const fc_chunk *c, int64_t n, int kind, double p, fc_partial *part,
                         int nthreads, int parallel) noexcept nogil
    void fc_table_write(const fc_chunk *c, int64_t n, int op, double v, int nthreads,
                        int parallel) noexcept nogil
    void fc_table_scale_rows(const fc_chunk *c, int64_t n, const int8_t *actions,
                             const double *scales, int nthreads, int parallel) noexcept nogil
    void fc_floor_rw(uint64_t *x, int64_t n, uint64_t mask) noexcept nogil
    uint64_t fc_floor_read_all(const uint64_t *x, int64_t n, int nt, int par) noexcept nogil
    void fc_floor_rw_all(uint64_t *x, int64_t n, uint64_t mask, int nt, int par) noexcept nogil
    ctypedef void (*fc_ssq_fn)(const void *, int64_t, double *, double *) noexcept nogil
    ctypedef double (*fc_ssqw_fn)(const void *, int64_t) noexcept nogil
    fc_ssq_fn fc_ssq_f32_impl
    fc_ssqw_fn fc_ssqw_bf16_impl, fc_ssqw_f16_impl
    void fc_ssq_f32(const void *p, int64_t n, double *ss, double *mx) noexcept nogil
    double fc_ssqw_bf16_lanes(const void *p, int64_t n) noexcept nogil
    double fc_ssqw_f16_lanes(const void *p, int64_t n) noexcept nogil


#: Elements per chunk (the unit of work and of the partials).
CHUNK = FC_CHUNK
#: Below this many elements in a call, the work runs on the calling thread:
#: forking the OpenMP team costs more than it saves.
PARALLEL_MIN = 1 << 17
NORM_P, NORM_1, NORM_2, NORM_INF = FC_NORM_P, FC_NORM_1, FC_NORM_2, FC_NORM_INF
#: dtype codes (simd.h's FC_F64 .. FC_F16): the one source for every engine.
F64, F32, BF16, F16 = FC_F64, FC_F32, FC_BF16, FC_F16
HAS_NAN, HAS_INF = FC_HAS_NAN, FC_HAS_INF

CHUNK_DTYPE = np.dtype([("ptr", np.uintp), ("n", np.int64), ("dtype", np.int32), ("buf", np.int32)])
PARTIAL_DTYPE = np.dtype([("s", np.float64), ("m", np.float64), ("flags", np.int32), ("pad", np.int32)])
assert CHUNK_DTYPE.itemsize == sizeof(fc_chunk)
assert PARTIAL_DTYPE.itemsize == sizeof(fc_partial)

#: dtype code -> numpy dtype (kernels/dtypes.py's table, whose codes are
#: simd.h's FC_F64 .. FC_F16 and whose item sizes are FC_OPS's: checked here)
DTYPES = _dtypes.NUMPY
assert (_dtypes.F64, _dtypes.F32, _dtypes.BF16, _dtypes.F16, _dtypes.NDTYPES) == (
    FC_F64, FC_F32, FC_BF16, FC_F16, FC_NDTYPES)
assert all(fc_itemsize(c) == _dtypes.ITEMSIZE[c] for c in range(FC_NDTYPES))
#: code -> numpy's type number (bfloat16's is ml_dtypes' registered one): describe() reads it
cdef int _TYPE_NUM[FC_NDTYPES]
for _c in range(FC_NDTYPES):
    _TYPE_NUM[_c] = DTYPES[_c].num
del _c

# describe() fields and flag bits
cdef enum:
    _PTR = 0
    _SIZE = 1
    _CODE = 2
    _FLAGS = 3
    _LO = 4
    _HI = 5
    _NOT_ARRAY = -1
    _BAD_DTYPE = -2
    _WRITEABLE = 1
    _CONTIGUOUS = 2
    _ALIGNED = 4
    _NATIVE = 8
    _S_NOT_ARRAY = 0
    _S_BAD_DTYPE = 1
    _S_NON_NATIVE = 2
    _S_READ_ONLY = 3
    _S_STAGE = 4
    _S_EMPTY = 5
    _S_UNORDERED = 6
    _S_COUNT = 7
F_PTR, F_SIZE, F_CODE, F_FLAGS, F_LO, F_HI = _PTR, _SIZE, _CODE, _FLAGS, _LO, _HI
S_NOT_ARRAY, S_BAD_DTYPE, S_NON_NATIVE, S_READ_ONLY = _S_NOT_ARRAY, _S_BAD_DTYPE, _S_NON_NATIVE, _S_READ_ONLY
S_STAGE, S_EMPTY, S_UNORDERED = _S_STAGE, _S_EMPTY, _S_UNORDERED
CODE_NOT_ARRAY, CODE_BAD_DTYPE = _NOT_ARRAY, _BAD_DTYPE
WRITEABLE, CONTIGUOUS, ALIGNED, NATIVE = _WRITEABLE, _CONTIGUOUS, _ALIGNED, _NATIVE


#: The most threads any call accepts (``num_threads`` above it is a
#: ValueError).  libgomp aborts the process, or segfaults, when it cannot
#: create the threads asked for (20,000 here; a value near 2**31 asks for
#: hundreds of GB of stacks), so the bound is checked before OpenMP sees the
#: number.  1024 is above the logical-CPU count of any single machine this
#: runs on, and safe to create on any Linux host; the work is split into at
#: most one thread per chunk anyway (see ``Table``).
MAX_THREADS = 1024
cdef int _MAX_THREADS = MAX_THREADS

# Set in a child process created by fork(): libgomp's thread pool does not
# survive a fork (the child would wait forever for the parent's workers on
# its first parallel region), so a forked child runs every call on its
# calling thread, as torch does.  The results are bitwise the same.
cdef bint _forked = False


def _after_fork_in_child():
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def forked():
    """True in a process forked from the one that imported this module: calls
    then run on one thread (libgomp is not fork-safe)."""
    return bool(_forked)


cdef inline int _nthreads(object nthreads) except -1:
    """The thread count for a call: None -> the OpenMP default; 1 after a fork."""
    cdef object n
    if nthreads is None:
        return 1 if _forked else openmp.omp_get_max_threads()
    if isinstance(nthreads, (bool, np.bool_)):
        raise TypeError(f"num_threads must be an int or None, got {type(nthreads).__name__}")
    try:
        n = operator.index(nthreads)
    except TypeError:
        raise TypeError(f"num_threads must be an int or None, got {type(nthreads).__name__}") from None
    if n < 1 or n > MAX_THREADS:
        raise ValueError(f"num_threads must be between 1 and {MAX_THREADS} "
                         f"or None, got {nthreads}")
    return 1 if _forked else <int>n


def max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS and threadpoolctl)."""
    return openmp.omp_get_max_threads()


def info():
    """Build and run-time facts for ``fusedclip info``."""
    return {
        "simd_dispatch": FC_SIMD_DISPATCH.decode(),
        "simd_selected": fc_cpu_level().decode(),
        "float16_conversion": fc_f16_path.decode(),
        "l2_float32_bfloat16": fc_ssq_path.decode(),
        "scale": fc_scale_path.decode(),
        "build_flags": fc_build_flags.decode(),
        "openmp_max_threads": openmp.omp_get_max_threads(),
        "chunk_elements": FC_CHUNK,
        "parallel_min_elements": PARALLEL_MIN,
    }


# ------------------------------------------------------------ nogil table ops
cdef inline int _team_size(int nthreads, Py_ssize_t nchunks, bint *parallel) noexcept nogil:
    """Threads for a loop over nchunks: never more than the chunks or
    MAX_THREADS, and one (serial) in a forked child."""
    if nthreads <= 0:
        nthreads = openmp.omp_get_max_threads()
    if nthreads > nchunks:
        nthreads = <int>nchunks
    if nthreads > _MAX_THREADS:
        nthreads = _MAX_THREADS
    if nthreads <= 1 or _forked:
        nthreads = 1
        parallel[0] = False
    return nthreads


cdef void table_reduce(const fc_chunk *chunks, Py_ssize_t n, int kind, double p,
                       fc_partial *partials, int nthreads, bint parallel) noexcept nogil:
    """One partial per chunk (the fused pass); the combine is the caller's.
    The loop is tableloop.h's: static ranges, and idle threads steal."""
    nthreads = _team_size(nthreads, n, &parallel)
    fc_table_reduce(chunks, n, kind, p, partials, nthreads, parallel)


cdef double table_norm(const fc_chunk *chunks, Py_ssize_t n, int kind, double p,
                       fc_partial *partials, int nthreads, bint parallel,
                       int *flags) noexcept nogil:
    table_reduce(chunks, n, kind, p, partials, nthreads, parallel)
    return fc_combine(partials, n, kind, p, flags)


#: per-row actions of ``Table.scale_rows`` (the codes of _policy.A_NONE,
#: A_SCALE, A_ZERO), and the write loop's operations: tableloop.h's codes
cdef extern from "tableloop.h":
    enum:
        FC_OP_SCALE
        FC_OP_CLAMP
        FC_OP_ZERO
        FC_ROW_NONE
        FC_ROW_SCALE
        FC_ROW_ZERO
ROW_NONE, ROW_SCALE, ROW_ZERO = FC_ROW_NONE, FC_ROW_SCALE, FC_ROW_ZERO


cdef void _table_write(const fc_chunk *chunks, Py_ssize_t n, int op, double v,
                       int nthreads, bint parallel) noexcept nogil:
    nthreads = _team_size(nthreads, n, &parallel)
    fc_table_write(chunks, n, op, v, nthreads, parallel)


cdef void table_scale(const fc_chunk *chunks, Py_ssize_t n, double s,
                      int nthreads, bint parallel) noexcept nogil:
    _table_write(chunks, n, FC_OP_SCALE, s, nthreads, parallel)


cdef void table_clamp(const fc_chunk *chunks, Py_ssize_t n, double v,
                      int nthreads, bint parallel) noexcept nogil:
    _table_write(chunks, n, FC_OP_CLAMP, v, nthreads, parallel)


cdef void table_zero(const fc_chunk *chunks, Py_ssize_t n,
                     int nthreads, bint parallel) noexcept nogil:
    _table_write(chunks, n, FC_OP_ZERO, 0.0, nthreads, parallel)


# ------------------------------------------------------------ describe
cdef inline void _describe_one(object o, int64_t *f) noexcept:
    """describe()'s record of one object into f[0:6] (F_* order)."""
    cdef cnp.ndarray a
    cdef int tn, nd, fl, code, flg, j
    cdef int64_t lo, hi, ext, size
    cdef cnp.npy_intp *shape
    cdef cnp.npy_intp *strides
    if not cnp.PyArray_Check(o):
        f[_PTR] = 0; f[_SIZE] = 0; f[_CODE] = _NOT_ARRAY
        f[_FLAGS] = 0; f[_LO] = 0; f[_HI] = 0
        return
    a = <cnp.ndarray>o
    tn = cnp.PyArray_TYPE(a)
    code = _BAD_DTYPE
    for j in range(FC_NDTYPES):  # the dtype table's order
        if tn == _TYPE_NUM[j]:
            code = j
            break
    fl = cnp.PyArray_FLAGS(a)
    flg = 0
    if fl & cnp.NPY_ARRAY_WRITEABLE:
        flg |= _WRITEABLE
    if fl & (cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_F_CONTIGUOUS):
        flg |= _CONTIGUOUS
    if fl & cnp.NPY_ARRAY_ALIGNED:
        flg |= _ALIGNED
    if cnp.PyArray_ISNOTSWAPPED(a):
        flg |= _NATIVE
    size = cnp.PyArray_SIZE(a)
    lo = <int64_t><uintptr_t>cnp.PyArray_DATA(a)
    hi = lo
    if size > 0:
        nd = cnp.PyArray_NDIM(a)
        shape = cnp.PyArray_DIMS(a)
        strides = cnp.PyArray_STRIDES(a)
        for j in range(nd):
            ext = (shape[j] - 1) * strides[j]
            if ext < 0:
                lo += ext
            else:
                hi += ext
        hi += cnp.PyArray_ITEMSIZE(a)
    f[_PTR] = <int64_t><uintptr_t>cnp.PyArray_DATA(a)
    f[_SIZE] = size
    f[_CODE] = code
    f[_FLAGS] = flg
    f[_LO] = lo
    f[_HI] = hi


cdef inline void _prefetch_objs(PyObject **items, Py_ssize_t i, Py_ssize_t n) noexcept:
    # the loops over the objects are bound by cache misses on them and on their shapes
    if i + 8 < n:
        fc_prefetch_obj(items[i + 8])
    if i + 4 < n and cnp.PyArray_Check(<object>items[i + 4]):
        fc_prefetch_obj(cnp.PyArray_DIMS(<cnp.ndarray>items[i + 4]))


def describe(list objs):
    """Read what validation needs from each object, at C speed.

    Returns ``(d, first)``.  ``d`` is an int64 array of shape (6, len(objs))
    indexed by the F_* fields: data pointer, element count, dtype code (0..3,
    CODE_NOT_ARRAY for anything that is not an ndarray, CODE_BAD_DTYPE for an
    unsupported dtype), flag bits, and the byte extent [lo, hi) that the
    array's elements span.  ``first`` gives, per S_* condition, the first
    index where it holds (-1: nowhere), so that the clean case needs no
    further pass over ``d``.
    """
    cdef Py_ssize_t n = len(objs), i
    cdef cnp.ndarray out = np.empty((6, n), dtype=np.int64)
    cdef int64_t[:, ::1] d = out
    cdef cnp.ndarray first_arr = np.full(_S_COUNT, -1, dtype=np.int64)
    cdef int64_t[::1] first = first_arr
    cdef int64_t reach = INT64_MIN
    cdef int64_t f[6]
    cdef int flg, k
    cdef PyObject **items = PySequence_Fast_ITEMS(objs)
    for i in range(n):
        _prefetch_objs(items, i, n)
        _describe_one(<object>items[i], f)
        for k in range(6):
            d[k, i] = f[k]
        if f[_CODE] == _NOT_ARRAY:
            if first[_S_NOT_ARRAY] < 0:
                first[_S_NOT_ARRAY] = i
            continue
        flg = <int>f[_FLAGS]
        if f[_CODE] == _BAD_DTYPE and first[_S_BAD_DTYPE] < 0:
            first[_S_BAD_DTYPE] = i
        if not (flg & _NATIVE) and first[_S_NON_NATIVE] < 0:
            first[_S_NON_NATIVE] = i
        if not (flg & _WRITEABLE) and first[_S_READ_ONLY] < 0:
            first[_S_READ_ONLY] = i
        if (flg & (_CONTIGUOUS | _ALIGNED)) != (_CONTIGUOUS | _ALIGNED) and first[_S_STAGE] < 0:
            first[_S_STAGE] = i
        if f[_SIZE] == 0:
            if first[_S_EMPTY] < 0:
                first[_S_EMPTY] = i
        else:
            # buffers in increasing, disjoint address order cannot overlap
            if f[_LO] < reach and first[_S_UNORDERED] < 0:
                first[_S_UNORDERED] = i
            reach = f[_HI] if f[_HI] > reach else reach
    return out, first_arr


def bind(list objs, const int64_t[:, :] d, bint hold, rows=None):
    """The plan cache's hit test and the references a plan keeps, in one C
    pass over the objects (each pass over 10,000 array objects costs
    0.05-0.2 ms in cache misses, so a hit makes one, not three).

    Returns None where ``describe(objs)`` would differ from ``d`` (stopping
    at the first difference); else ``(arrays, owners, snap)``: ``arrays`` a
    new list of the objects at ``rows`` (increasing indices; None: all of
    them), and with ``hold`` what ``owners(arrays)`` returns (``owners`` is
    ``arrays`` itself when every array owns its memory, the usual case),
    without it None and None.
    """
    cdef Py_ssize_t n = len(objs), m = n, i, j = 0, k
    cdef int64_t f[6]
    cdef PyObject **items = PySequence_Fast_ITEMS(objs)
    cdef object w
    cdef list arrays, owners, foreign = []
    cdef cnp.ndarray snap = None
    cdef int64_t[:, ::1] S
    cdef const int64_t[::1] R
    cdef bint sel = rows is not None
    if d.shape[0] != 6 or d.shape[1] != n:
        return None
    if sel:
        R = np.ascontiguousarray(rows, dtype=np.int64)
        m = R.shape[0]
    if hold:
        snap = np.empty((2, m), dtype=np.int64)
        S = snap
    arrays = PyList_New(m)  # NULL items until set: a list dropped half-filled is fine
    for i in range(n):
        _prefetch_objs(items, i, n)
        _describe_one(<object>items[i], f)
        for k in range(6):
            if f[k] != d[k, i]:
                return None
        if sel and (j >= m or R[j] != i):
            continue  # compared, not kept (an empty array, a duplicate)
        Py_INCREF(<object>items[i])
        PyList_SET_ITEM(arrays, j, <object>items[i])
        if hold:
            w = <object>items[i]
            if f[_CODE] == _NOT_ARRAY or cnp.PyArray_BASE(<cnp.ndarray>items[i]) != NULL:
                w = _owner(w)  # a view: the owner at the end of its bases (None: no array)
            if <PyObject *>w == items[i]:
                S[0, j] = f[_PTR]  # its own memory: its own record
                S[1, j] = f[_SIZE]
            else:
                foreign.append((j, w))
                if w is not None:
                    S[0, j] = <int64_t><uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>w)
                    S[1, j] = cnp.PyArray_SIZE(<cnp.ndarray>w)
        j += 1
    if j != m:
        raise ValueError("bind: rows must be increasing indices into objs")
    if not hold:
        return arrays, None, None
    owners = arrays
    if foreign:
        owners = list(arrays)
        for j, w in foreign:
            owners[j] = w
    return arrays, owners, snap


def first_last(list objs):
    """(data pointer of the first object, of the last) where both are
    ndarrays, else None: the plan cache's key, read without a pass."""
    cdef Py_ssize_t n = len(objs)
    if n == 0 or not cnp.PyArray_Check(objs[0]) or not cnp.PyArray_Check(objs[n - 1]):
        return None
    return (<int64_t><uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>objs[0]),
            <int64_t><uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>objs[n - 1]))


def overlap_suspects(cnp.ndarray d):
    """Sort the non-empty buffers by start address and find the positions
    whose extent begins before an earlier one ends.  Returns (order, suspects):
    ``order[pos]`` is a buffer index; each suspect position overlaps the
    extent of at least one earlier position."""
    live = np.flatnonzero(d[_SIZE] > 0)
    cdef cnp.ndarray order = live[np.argsort(d[_LO, live], kind="stable")]
    cdef const int64_t[::1] o = order
    cdef const int64_t[:, ::1] dd = d
    cdef Py_ssize_t k, m = order.shape[0], ns = 0
    cdef cnp.ndarray sus = np.empty(m, dtype=np.int64)
    cdef int64_t[::1] S = sus
    cdef int64_t reach = INT64_MIN
    for k in range(m):
        if dd[_LO, o[k]] < reach:
            S[ns] = k
            ns += 1
        if dd[_HI, o[k]] > reach:
            reach = dd[_HI, o[k]]
    return order, sus[:ns]


# ------------------------------------------------------------ resize check
cdef inline object _owner(object o):
    """The array owning o's memory: o itself, or the end of its ``.base``
    chain through ndarrays (and through a non-array base that holds one in
    its own ``.base``, as ``as_strided``'s does); None for a non-array."""
    cdef PyObject *b
    cdef object bb
    if not cnp.PyArray_Check(o):
        return None
    while True:
        b = <PyObject *>cnp.PyArray_BASE(<cnp.ndarray>o)
        if b == NULL:
            return o
        if cnp.PyArray_Check(<object>b):
            o = <object>b
            continue
        bb = getattr(<object>b, "base", None)  # rare: e.g. as_strided's DummyArray
        if cnp.PyArray_Check(bb):
            o = bb
            continue
        return o


def owners(list arrays):
    """The array owning each array's memory (``_owner``), and its data
    pointer and size now.

    Returns ``(owners, snap)``; ``moved(owners, snap)`` later finds an owner
    whose memory was reallocated (``ndarray.resize``), which leaves every
    view of it pointing at freed memory.  Non-arrays get None and are never
    reported.
    """
    cdef Py_ssize_t n = len(arrays), i
    cdef cnp.ndarray snap = np.zeros((2, n), dtype=np.int64)
    cdef int64_t[:, ::1] S = snap
    cdef list out = [None] * n
    cdef object o
    for i in range(n):
        o = _owner(arrays[i])
        if o is None:
            continue
        out[i] = o
        S[0, i] = <int64_t><uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>o)
        S[1, i] = cnp.PyArray_SIZE(<cnp.ndarray>o)
    return out, snap


cdef extern from *:
    """
    /* First i whose array's data pointer or size differs from the snapshot, or
     * -1; None entries are skipped.  Bound by cache misses on the array objects
     * and their shape arrays: prefetch both ahead, as describe() does. */
    static Py_ssize_t fc_moved(PyObject **items, Py_ssize_t n,
                               const int64_t *ptr, const int64_t *size) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i + 16 < n) __builtin_prefetch(items[i + 16]);
            if (i + 8 < n && items[i + 8] != Py_None)
                __builtin_prefetch(PyArray_DIMS((PyArrayObject *)items[i + 8]));
            PyObject *o = items[i];
            if (o == Py_None) continue;
            PyArrayObject *a = (PyArrayObject *)o;
            if ((int64_t)(uintptr_t)PyArray_DATA(a) != ptr[i]) return i;
            /* PyArray_SIZE is a call through numpy's API table: inline it */
            const npy_intp *dims = PyArray_DIMS(a);
            int64_t sz = 1;
            for (int d = 0, nd = PyArray_NDIM(a); d < nd; d++) sz *= dims[d];
            if (sz != size[i]) return i;
        }
        return -1;
    }
    """
    Py_ssize_t fc_moved(PyObject **items, Py_ssize_t n, const int64_t *ptr,
                        const int64_t *size) noexcept


def moved(list owners, const int64_t[:, ::1] snap):
    """The first index whose owner's data pointer or size differs from ``snap``
    (see ``owners``), or -1.  One C loop: no Python work per buffer."""
    cdef Py_ssize_t n = len(owners)
    if snap.shape[0] != 2 or snap.shape[1] != n:
        raise ValueError("owners and snap do not match")
    if n == 0:
        return -1
    return fc_moved(PySequence_Fast_ITEMS(owners), n, &snap[0, 0], &snap[1, 0])


# ------------------------------------------------------------ the table
cdef extern from *:
    """
    static int fc_cmp_extent(const void *a, const void *b) {
        const int64_t x = ((const int64_t *)a)[0], y = ((const int64_t *)b)[0];
        return (x > y) - (x < y);
    }
    /* Are the m byte extents [e[2i], e[2i+1]) pairwise disjoint?  One pass
     * when they come in increasing or decreasing order (the usual cases);
     * else they are sorted by start (e is reordered) and swept. */
    static int fc_disjoint(int64_t *e, int64_t m) {
        int64_t i;
        int up = 1, down = 1;
        for (i = 1; i < m && (up || down); i++) {
            up = up && e[2 * i] >= e[2 * i - 1];
            down = down && e[2 * i + 1] <= e[2 * i - 2];
        }
        if (up || down) return 1;
        if (m <= 64) {  /* a model's list: an insertion sort, no calls (qsort's cost ~1 us cold) */
            for (i = 1; i < m; i++) {
                const int64_t lo = e[2 * i], hi = e[2 * i + 1];
                int64_t j = i - 1;
                for (; j >= 0 && e[2 * j] > lo; j--) {
                    e[2 * j + 2] = e[2 * j];
                    e[2 * j + 3] = e[2 * j + 1];
                }
                e[2 * j + 2] = lo;
                e[2 * j + 3] = hi;
            }
        } else {
            qsort(e, (size_t)m, 2 * sizeof(int64_t), fc_cmp_extent);
        }
        for (i = 1; i < m; i++)
            if (e[2 * i] < e[2 * i - 1]) return 0;
        return 1;
    }
    """
    int fc_disjoint(int64_t *e, int64_t m) noexcept nogil


cdef bint extents_disjoint(int64_t *e, Py_ssize_t m) noexcept nogil:
    """Are the m byte extents [e[2i], e[2i+1]) pairwise disjoint?  (e may be
    reordered.)  One pass for increasing or decreasing order, else a sort."""
    return m < 2 or fc_disjoint(e, m)


def disjoint(extents):
    """``extents_disjoint`` over an (m, 2) array of [lo, hi) (for the tests)."""
    cdef cnp.ndarray e = np.array(extents, dtype=np.int64, order="C").reshape(-1, 2)
    return bool(extents_disjoint(<int64_t *>cnp.PyArray_DATA(e), e.shape[0]))


cdef int64_t _rows_chunks(const int64_t[::1] P, const int64_t[::1] S, const int64_t[::1] C,
                         int64_t chunk) except -1:
    """Check a table's rows (pointer, size, dtype code) and count their chunks
    of ``chunk`` elements: the one check of cpu.Table and chunk_rows."""
    cdef Py_ssize_t rows = P.shape[0], r
    cdef int64_t count = 0
    if S.shape[0] != rows or C.shape[0] != rows:
        raise ValueError("ptrs, sizes and codes must have the same length")
    if rows >= 2**31:
        raise ValueError("too many buffers for one table (2**31 at most)")
    for r in range(rows):
        if S[r] < 0 or (S[r] > 0 and not (0 <= C[r] < FC_NDTYPES)):
            raise ValueError(f"row {r}: bad size or dtype code")
        count += fc_row_chunks_of(S[r], chunk)
    return count


def chunk_rows(ptrs, sizes, codes, int64_t chunk):
    """The CUDA engine's chunk table: rows (pointer, size, dtype code) cut
    into chunks of at most ``chunk`` elements by ``fc_cut_row_by``, the
    builder of every CPU table, as ``(nchunks, 4)`` int64 rows (address,
    length, dtype code, row).  Rows with no elements get no chunk."""
    cdef const int64_t[::1] P = np.ascontiguousarray(ptrs, dtype=np.int64)
    cdef const int64_t[::1] S = np.ascontiguousarray(sizes, dtype=np.int64)
    cdef const int64_t[::1] C = np.ascontiguousarray(codes, dtype=np.int64)
    cdef Py_ssize_t rows = P.shape[0], r
    cdef int64_t count, k = 0
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    count = _rows_chunks(P, S, C, chunk)
    cdef cnp.ndarray cuts = np.empty(count, dtype=CHUNK_DTYPE)
    cdef fc_chunk *c = <fc_chunk *>cnp.PyArray_DATA(cuts)
    with nogil:
        for r in range(rows):
            if S[r] > 0:
                k += fc_cut_row_by(c + k, <char *><uintptr_t>P[r], S[r], <int>C[r], <int32_t>r, chunk)
    out = np.empty((count, 4), np.int64)
    out[:, 0] = cuts["ptr"]
    out[:, 1] = cuts["n"]
    out[:, 2] = cuts["dtype"]
    out[:, 3] = cuts["buf"]
    return out


cdef class Table:
    """A chunk table over contiguous buffers, with its partials.

    ``ptrs``, ``sizes`` and ``codes`` describe one contiguous buffer per row
    (pointer, element count, dtype code).  The caller keeps the memory alive
    for the table's lifetime.  Rows with zero elements get no chunk.
    """
    cdef readonly object chunks
    cdef readonly object partials
    cdef readonly object row_start
    cdef readonly Py_ssize_t nchunks
    cdef readonly Py_ssize_t nrows
    cdef readonly int64_t nelem
    cdef fc_chunk *_c
    cdef fc_partial *_p
    cdef int64_t *_rs

    def __init__(self, ptrs, sizes, codes):
        cdef const int64_t[::1] P = np.ascontiguousarray(ptrs, dtype=np.int64)
        cdef const int64_t[::1] S = np.ascontiguousarray(sizes, dtype=np.int64)
        cdef const int64_t[::1] C = np.ascontiguousarray(codes, dtype=np.int64)
        cdef Py_ssize_t rows = P.shape[0], r, k = 0
        cdef int64_t total = 0, count = _rows_chunks(P, S, C, FC_CHUNK)
        for r in range(rows):
            total += S[r]
        self.chunks = np.zeros(count, dtype=CHUNK_DTYPE)
        self.partials = np.zeros(count, dtype=PARTIAL_DTYPE)
        self._c = <fc_chunk *>cnp.PyArray_DATA(self.chunks)
        self._p = <fc_partial *>cnp.PyArray_DATA(self.partials)
        self.nchunks = count
        self.nrows = rows
        self.nelem = total
        # row r's chunks are [row_start[r], row_start[r + 1]): rows are in order
        self.row_start = np.zeros(rows + 1, dtype=np.int64)
        self._rs = <int64_t *>cnp.PyArray_DATA(self.row_start)
        for r in range(rows):
            if S[r] > 0:
                k += fc_cut_row(self._c + k, <char *><uintptr_t>P[r], S[r], <int>C[r], <int32_t>r)
            self._rs[r + 1] = k

    def fresh(self):
        """A table over the same chunks with partials of its own: what a
        cached plan hands each call, so that concurrent calls over the same
        memory never share the partials the kernels write."""
        cdef Table t = Table.__new__(Table)
        t.chunks = self.chunks
        t.row_start = self.row_start
        t.partials = np.empty(self.nchunks, dtype=PARTIAL_DTYPE)  # every reduction writes all
        t._c = self._c
        t._rs = self._rs
        t._p = <fc_partial *>cnp.PyArray_DATA(t.partials)
        t.nchunks, t.nrows, t.nelem = self.nchunks, self.nrows, self.nelem
        return t

    cdef inline bint _parallel(self, int nt):
        return nt > 1 and self.nelem >= PARALLEL_MIN and self.nchunks > 1

    def norm(self, int kind, double p=2.0, nthreads=None):
        """Global norm of the table: returns (norm, flags)."""
        cdef int nt = _nthreads(nthreads), flags = 0
        cdef bint par = self._parallel(nt)
        cdef double r
        with nogil:
            r = table_norm(self._c, self.nchunks, kind, p, self._p, nt, par, &flags)
        return r, flags

    def clip_scale(self, int kind, double p, double max_norm):
        """max_norm / norm from the last ``norm`` call's partials.  Equal to
        ``max_norm / norm`` where the norm is finite; also right where finite
        data have a norm beyond float64's range (``norm`` returned inf with no
        flags), which a plain division would turn into 0."""
        return fc_clip_scale(self._p, self.nchunks, kind, p, max_norm)

    def row_norms(self, int kind, double p=2.0, nthreads=None, max_norm=None):
        """Each row's own norm from one fused pass (the reduction ``norm``
        makes, kept per row): returns ``(norms, flags)``, float64 and int32
        per row (0.0 for an empty row; NaN or inf where flagged), or, given
        ``max_norm``, ``(norms, flags, scales)`` with each finite row's clip
        scale ``max_norm / norm`` where its norm exceeds ``max_norm`` (right
        also where the norm is beyond float64, as ``clip_scale``), else 1.0."""
        cdef int nt = _nthreads(nthreads), f
        cdef bint par = self._parallel(nt)
        cdef Py_ssize_t r, rows = self.nrows
        cdef cnp.ndarray norms_a = np.zeros(rows, dtype=np.float64)
        cdef cnp.ndarray flags_a = np.zeros(rows, dtype=np.int32)
        cdef cnp.ndarray scales_a = np.ones(rows, dtype=np.float64)
        cdef double *N = <double *>cnp.PyArray_DATA(norms_a)
        cdef int32_t *F = <int32_t *>cnp.PyArray_DATA(flags_a)
        cdef double *Sc = <double *>cnp.PyArray_DATA(scales_a)
        cdef bint want = max_norm is not None
        cdef double v = float(max_norm) if want else 0.0
        cdef int64_t lo, cnt
        with nogil:
            table_reduce(self._c, self.nchunks, kind, p, self._p, nt, par)
            for r in range(rows):
                lo = self._rs[r]
                cnt = self._rs[r + 1] - lo
                if cnt == 0:
                    continue
                N[r] = fc_combine(self._p + lo, cnt, kind, p, &f)
                F[r] = f
                if want and f == 0 and N[r] > v:
                    Sc[r] = fc_clip_scale(self._p + lo, cnt, kind, p, v)
        if want:
            return norms_a, flags_a, scales_a
        return norms_a, flags_a

    def row_scale(self, Py_ssize_t r, int kind, double p, double max_norm):
        """``max_norm / norm`` of row r from the last ``row_norms`` call's
        partials, right also where the row's norm is beyond float64."""
        if not 0 <= r < self.nrows:
            raise IndexError(f"row {r} out of range ({self.nrows} rows)")
        cdef int64_t lo = self._rs[r]
        return fc_clip_scale(self._p + lo, self._rs[r + 1] - lo, kind, p, max_norm)

    def scale_rows(self, actions, scales, nthreads=None):
        """Per-row writes in one pass: row r is left alone (ROW_NONE), scaled
        by ``scales[r]`` (ROW_SCALE) or zeroed (ROW_ZERO).  A row left alone
        is not touched at all."""
        cdef const int8_t[::1] A = np.ascontiguousarray(actions, dtype=np.int8)
        cdef const double[::1] V = np.ascontiguousarray(scales, dtype=np.float64)
        if A.shape[0] != self.nrows or V.shape[0] != self.nrows:
            raise ValueError(f"actions and scales need one entry per row ({self.nrows})")
        cdef int nt = _nthreads(nthreads)
        cdef bint par = self._parallel(nt)
        cdef Py_ssize_t n = self.nchunks
        if n == 0:
            return
        with nogil:
            nt = _team_size(nt, n, &par)
            fc_table_scale_rows(self._c, n, &A[0], &V[0], nt, par)

    def flagged_rows(self):
        """Rows whose chunks held inf or NaN in the last ``norm`` call."""
        flags = self.partials["flags"]
        return np.unique(self.chunks["buf"][flags != 0])

    def scale(self, double s, nthreads=None):
        cdef int nt = _nthreads(nthreads)
        cdef bint par = self._parallel(nt)
        with nogil:
            table_scale(self._c, self.nchunks, s, nt, par)

    def clamp(self, double v, nthreads=None):
        cdef int nt = _nthreads(nthreads)
        cdef bint par = self._parallel(nt)
        with nogil:
            table_clamp(self._c, self.nchunks, v, nt, par)

    def zero(self, nthreads=None):
        cdef int nt = _nthreads(nthreads)
        cdef bint par = self._parallel(nt)
        with nogil:
            table_zero(self._c, self.nchunks, nt, par)


# ------------------------------------------------------------ bandwidth floor
def _words(cnp.ndarray a):
    if not (cnp.PyArray_FLAGS(a) & cnp.NPY_ARRAY_C_CONTIGUOUS) or a.nbytes % 8:
        raise ValueError("floor kernels need a C-contiguous array of a multiple of 8 bytes")
    return <int64_t>(a.nbytes // 8)


def floor_read(cnp.ndarray a, nthreads=None):
    """One plain read pass over ``a`` (the memory-bandwidth floor), threaded
    by the kernels' own table loop (a late thread delays it no more than it
    delays the kernels)."""
    cdef int64_t n = _words(a)
    cdef int nt = _nthreads(nthreads)
    cdef uint64_t *x = <uint64_t *>cnp.PyArray_DATA(a)
    cdef uint64_t acc = 0
    cdef int64_t nblk = (n + FC_CHUNK - 1) // FC_CHUNK
    cdef bint par = True
    with nogil:
        nt = _team_size(nt, nblk, &par)
        acc = fc_floor_read_all(x, n, nt, par)
    return int(acc)


def floor_rw(cnp.ndarray a, nthreads=None):
    """One plain in-place read-modify-write pass over ``a`` (leaves it unchanged)."""
    cdef int64_t n = _words(a)
    cdef int nt = _nthreads(nthreads)
    cdef uint64_t *x = <uint64_t *>cnp.PyArray_DATA(a)
    cdef int64_t nblk = (n + FC_CHUNK - 1) // FC_CHUNK
    cdef uint64_t mask = 0
    cdef bint par = True
    with nogil:
        nt = _team_size(nt, nblk, &par)
        fc_floor_rw_all(x, n, mask, nt, par)


def _ssq_paths(cnp.ndarray a):
    """(picked, generic): the float64 lane sums of a contiguous float32,
    bfloat16 or float16 array by the loop the table uses (the AVX-512
    intrinsics where the CPU has them) and by the portable lane loop; the
    tests check they are the same bits.  For the 16-bit types these are the
    scaled sums of simd.h's bit transform (x^2 * 2^-768), before the
    chunk's checks."""
    cdef double s1, s2, m
    cdef int64_t n = a.size
    cdef const void *p = cnp.PyArray_DATA(a)
    if not a.flags.c_contiguous or a.dtype not in (DTYPES[FC_F32], DTYPES[FC_BF16], DTYPES[FC_F16]):
        raise ValueError("a contiguous float32, bfloat16 or float16 array")
    if a.dtype == DTYPES[FC_F32]:
        fc_ssq_f32_impl(p, n, &s1, &m)
        fc_ssq_f32(p, n, &s2, &m)
    elif a.dtype == DTYPES[FC_BF16]:
        s1 = fc_ssqw_bf16_impl(p, n)
        s2 = fc_ssqw_bf16_lanes(p, n)
    else:
        s1 = fc_ssqw_f16_impl(p, n)
        s2 = fc_ssqw_f16_lanes(p, n)
    return s1, s2
