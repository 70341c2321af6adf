# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""fusedclip's C-level API (see capi.pxd and docs/EMBEDDING.md).

This module only builds a chunk table from a pointer table and hands it to
the kernels of ``fusedclip.kernels.cpu``: ``table_norm`` / ``table_scale`` /
``table_zero`` run the prange over chunks, in ``cpu``'s own compiled code,
and ``fc_combine_rel`` / ``fc_clip_scale`` (simd.h) the combine.  No loop
over elements lives here, so results are the Python API's, bit for bit.
"""
from libc.stdint cimport int64_t, int32_t, uint16_t, uintptr_t
from libc.stdlib cimport malloc, free
from libc.math cimport INFINITY, NAN

from fusedclip.kernels.cpu cimport (
    fc_chunk, fc_partial, FC_NDTYPES, FC_HAS_NAN, FC_HAS_INF,
    FC_NORM_P, FC_NORM_1, FC_NORM_2, FC_NORM_INF, fc_clip_scale,
    fc_row_chunks, fc_cut_row, fc_itemsize,
    table_norm, table_scale, table_clamp, table_zero,
)
from fusedclip.kernels import cpu as _cpu

cdef extern from "simd.h" nogil:
    int fc_combine_rel(const fc_partial *part, int64_t n, int kind, double p,
                       double *big_out, double *t_out)

# One source for the constants: the kernels module's.
assert (FC_DTYPE_F64, FC_DTYPE_F32, FC_DTYPE_BF16, FC_DTYPE_F16) == (
    _cpu.F64, _cpu.F32, _cpu.BF16, _cpu.F16)
assert (FC_FLAG_NAN, FC_FLAG_INF) == (_cpu.HAS_NAN, _cpu.HAS_INF)
cdef int64_t _PARALLEL_MIN = _cpu.PARALLEL_MIN  # as Table: below it, the calling thread

VERSION = FC_CAPI_VERSION
#: name -> value of the status codes, for Python-side tests and messages
STATUS = {"FC_OK": FC_OK, "FC_ENOMEM": FC_ENOMEM, "FC_ECOUNT": FC_ECOUNT,
          "FC_EDTYPE": FC_EDTYPE, "FC_ENULL": FC_ENULL, "FC_EALIGN": FC_EALIGN,
          "FC_ENORMTYPE": FC_ENORMTYPE, "FC_EMAXNORM": FC_EMAXNORM}


cdef const char *fc_status_message(int status) noexcept nogil:
    if status == FC_OK:
        return b"ok"
    if status == FC_ENOMEM:
        return b"out of memory for the chunk table; nothing was read or written"
    if status == FC_ECOUNT:
        return b"a negative element count, or a buffer count outside [0, 2**31); nothing was read or written"
    if status == FC_EDTYPE:
        return b"a dtype code other than FC_DTYPE_F64/F32/BF16/F16; nothing was read or written"
    if status == FC_ENULL:
        return b"a NULL pointer (a table, an output, or a buffer with elements); nothing was read or written"
    if status == FC_EALIGN:
        return b"a buffer not aligned to its element size; nothing was read or written"
    if status == FC_ENORMTYPE:
        return b"norm_type must be > 0 or INFINITY; nothing was read or written"
    if status == FC_EMAXNORM:
        return b"max_norm must be > 0 (INFINITY: never clip); nothing was read or written"
    return b"unknown status"


def status_message(int status):
    """The text of a status code (for Python callers and tests)."""
    return fc_status_message(status).decode()


# ------------------------------------------------------------ the chunk table
cdef struct _Table:
    fc_chunk *c
    fc_partial *p
    Py_ssize_t n
    int64_t nelem


cdef int _build(void **ptrs, const int64_t *sizes, const int32_t *dtypes, int64_t nbuf,
                bint partials, _Table *t) noexcept nogil:
    """Validate every row, then cut the buffers into chunks by simd.h's
    ``fc_cut_row``, the builder ``cpu.Table`` uses."""
    cdef int64_t r, k = 0, size, count = 0, total = 0
    cdef int code
    t.c = NULL
    t.p = NULL
    t.n = 0
    t.nelem = 0
    if nbuf < 0 or nbuf >= (<int64_t>1 << 31):
        return FC_ECOUNT
    if nbuf > 0 and (ptrs == NULL or sizes == NULL or dtypes == NULL):
        return FC_ENULL
    for r in range(nbuf):
        size = sizes[r]
        if size < 0:
            return FC_ECOUNT
        if size == 0:
            continue
        code = dtypes[r]
        if code < 0 or code >= FC_NDTYPES:
            return FC_EDTYPE
        if ptrs[r] == NULL:
            return FC_ENULL
        if (<uintptr_t>ptrs[r]) % fc_itemsize(code):
            return FC_EALIGN
        count += fc_row_chunks(size)
        total += size
    if count == 0:
        return FC_OK
    t.c = <fc_chunk *>malloc(count * sizeof(fc_chunk))
    if partials:
        t.p = <fc_partial *>malloc(count * sizeof(fc_partial))
    if t.c == NULL or (partials and t.p == NULL):
        _free(t)
        return FC_ENOMEM
    for r in range(nbuf):
        if sizes[r] > 0:
            k += fc_cut_row(t.c + k, <char *>ptrs[r], sizes[r], dtypes[r], <int32_t>r)
    t.n = count
    t.nelem = total
    return FC_OK


cdef inline void _free(_Table *t) noexcept nogil:
    free(t.c)
    free(t.p)
    t.c = NULL
    t.p = NULL


cdef inline bint _parallel(const _Table *t) noexcept nogil:
    # table_norm & co. make it serial for one thread, or in a forked child
    return t.nelem >= _PARALLEL_MIN and t.n > 1


cdef int _kind(double norm_type, int *kind) noexcept nogil:
    if not norm_type > 0.0:
        return FC_ENORMTYPE
    if norm_type == INFINITY:
        kind[0] = FC_NORM_INF
    elif norm_type == 2.0:
        kind[0] = FC_NORM_2
    elif norm_type == 1.0:
        kind[0] = FC_NORM_1
    else:
        kind[0] = FC_NORM_P
    return FC_OK


cdef inline double _flagged(int flags) noexcept nogil:
    return NAN if flags & FC_HAS_NAN else INFINITY


cdef void _buf_flags(const _Table *t, int64_t nbuf, int32_t *out) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t r
    for r in range(nbuf):
        out[r] = 0
    for i in range(t.n):
        out[t.c[i].buf] |= t.p[i].flags


# ------------------------------------------------------------ the API
cdef int fc_sumsq(const void *data, int64_t n, int dtype, int nthreads,
                  double *out, int *flags) noexcept nogil:
    cdef void *ptr = <void *>data
    cdef int32_t code = dtype
    cdef _Table t
    cdef int rc, f = 0
    cdef double big, s
    if out == NULL:
        return FC_ENULL
    rc = _build(&ptr, &n, &code, 1, True, &t)
    if rc != FC_OK:
        return rc
    s = 0.0
    if t.n:
        table_norm(t.c, t.n, FC_NORM_2, 2.0, t.p, nthreads, _parallel(&t), &f)
        if f:
            s = _flagged(f)
        else:
            fc_combine_rel(t.p, t.n, FC_NORM_2, 2.0, &big, &s)
            s = big * (big * s)   # the plain sum when no chunk was scaled (big == 1)
    _free(&t)
    out[0] = s
    if flags != NULL:
        flags[0] = f
    return FC_OK


cdef int fc_sumsq_f64(const double *x, int64_t n, int nthreads,
                      double *out, int *flags) noexcept nogil:
    return fc_sumsq(x, n, FC_DTYPE_F64, nthreads, out, flags)


cdef int fc_sumsq_f32(const float *x, int64_t n, int nthreads,
                      double *out, int *flags) noexcept nogil:
    return fc_sumsq(x, n, FC_DTYPE_F32, nthreads, out, flags)


cdef int fc_sumsq_bf16(const uint16_t *x, int64_t n, int nthreads,
                       double *out, int *flags) noexcept nogil:
    return fc_sumsq(x, n, FC_DTYPE_BF16, nthreads, out, flags)


cdef int fc_sumsq_f16(const uint16_t *x, int64_t n, int nthreads,
                      double *out, int *flags) noexcept nogil:
    return fc_sumsq(x, n, FC_DTYPE_F16, nthreads, out, flags)


cdef int _norm(void **ptrs, const int64_t *sizes, const int32_t *dtypes, int64_t nbuf,
               double norm_type, double max_norm, double eps, bint clip, int nthreads,
               double *norm, double *scale, int *flags, int32_t *buf_flags) noexcept nogil:
    """The norm, and for ``clip`` the decision and the scale (the Python API's
    rule for finite data: _policy.decide with Table.clip_scale)."""
    cdef int kind = 0, rc, f = 0
    cdef _Table t
    cdef double r = 0.0, s = 1.0
    rc = _kind(norm_type, &kind)
    if rc != FC_OK:
        return rc
    if clip and not (max_norm > 0.0 and eps >= 0.0 and eps < INFINITY):
        return FC_EMAXNORM
    rc = _build(ptrs, sizes, dtypes, nbuf, True, &t)
    if rc != FC_OK:
        return rc
    if t.n:
        r = table_norm(t.c, t.n, kind, norm_type, t.p, nthreads, _parallel(&t), &f)
        if clip and not f and r + eps > max_norm:
            s = max_norm / (r + eps) if r + eps < INFINITY else fc_clip_scale(t.p, t.n, kind, norm_type, max_norm)
            table_scale(t.c, t.n, s, nthreads, _parallel(&t))
    if buf_flags != NULL:
        _buf_flags(&t, nbuf, buf_flags)
    _free(&t)
    if norm != NULL:
        norm[0] = r
    if scale != NULL:
        scale[0] = s
    if flags != NULL:
        flags[0] = f
    return FC_OK


cdef int fc_global_norm(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                        int64_t nbuf, double norm_type, int nthreads,
                        double *norm, int *flags, int32_t *buf_flags) noexcept nogil:
    if norm == NULL:
        return FC_ENULL
    return _norm(ptrs, sizes, dtypes, nbuf, norm_type, INFINITY, 0.0, False, nthreads,
                 norm, NULL, flags, buf_flags)


cdef int fc_clip_grad_norm(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                           int64_t nbuf, double max_norm, double norm_type, int nthreads,
                           double *norm, double *scale, int *flags,
                           int32_t *buf_flags) noexcept nogil:
    return _norm(ptrs, sizes, dtypes, nbuf, norm_type, max_norm, 0.0, True, nthreads,
                 norm, scale, flags, buf_flags)


cdef int fc_clip_grad_norm_eps(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                               int64_t nbuf, double max_norm, double eps, double norm_type,
                               int nthreads, double *norm, double *scale, int *flags,
                               int32_t *buf_flags) noexcept nogil:
    return _norm(ptrs, sizes, dtypes, nbuf, norm_type, max_norm, eps, True, nthreads,
                 norm, scale, flags, buf_flags)


cdef int fc_scale(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                  int64_t nbuf, double s, int nthreads) noexcept nogil:
    cdef _Table t
    cdef int rc = _build(ptrs, sizes, dtypes, nbuf, False, &t)
    if rc != FC_OK:
        return rc
    if t.n:
        table_scale(t.c, t.n, s, nthreads, _parallel(&t))
    _free(&t)
    return FC_OK


cdef int fc_clamp(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                  int64_t nbuf, double v, int nthreads) noexcept nogil:
    cdef _Table t
    cdef int rc
    if not v >= 0.0:
        return FC_EMAXNORM
    rc = _build(ptrs, sizes, dtypes, nbuf, False, &t)
    if rc != FC_OK:
        return rc
    if t.n:
        table_clamp(t.c, t.n, v, nthreads, _parallel(&t))
    _free(&t)
    return FC_OK


cdef int fc_zero(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                 int64_t nbuf, int nthreads) noexcept nogil:
    cdef _Table t
    cdef int rc = _build(ptrs, sizes, dtypes, nbuf, False, &t)
    if rc != FC_OK:
        return rc
    if t.n:
        table_zero(t.c, t.n, nthreads, _parallel(&t))
    _free(&t)
    return FC_OK
