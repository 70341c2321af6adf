# cython: language_level=3, boundscheck=False, wraparound=False
"""A third-party extension that clips through fusedclip's C-level API.

It stands for a framework that holds its tensors as raw pointers: the GIL is
held only to collect (pointer, count, dtype) from the Python objects; every
fusedclip call runs inside ``with nogil:``.  tests/test_capi.py builds it at
test time against the installed fusedclip.
"""
from libc.stdint cimport int64_t, int32_t, uint16_t, uintptr_t

cimport fusedclip.capi as fc                                   # the C-level API
from fusedclip.kernels.cpu cimport fc_chunk, fc_partial, table_norm, FC_NORM_2  # the chunk-table API

import numpy as np

DTYPE_CODES = {"float64": fc.FC_DTYPE_F64, "float32": fc.FC_DTYPE_F32,
               "bfloat16": fc.FC_DTYPE_BF16, "float16": fc.FC_DTYPE_F16}
STATUS = {"OK": fc.FC_OK, "ENOMEM": fc.FC_ENOMEM, "ECOUNT": fc.FC_ECOUNT,
          "EDTYPE": fc.FC_EDTYPE, "ENULL": fc.FC_ENULL, "EALIGN": fc.FC_EALIGN,
          "ENORMTYPE": fc.FC_ENORMTYPE, "EMAXNORM": fc.FC_EMAXNORM}
FLAG_NAN, FLAG_INF = fc.FC_FLAG_NAN, fc.FC_FLAG_INF
VERSION = fc.FC_CAPI_VERSION


cdef class PointerTable:
    """(pointer, count, dtype) rows, as a framework would hold them."""
    cdef uintptr_t[::1] ptrs
    cdef int64_t[::1] sizes
    cdef int32_t[::1] dtypes
    cdef int32_t[::1] buf_flags
    cdef int64_t n
    cdef object keep

    def __init__(self, arrays, ptrs=None, sizes=None, dtypes=None, nbuf=None):
        """From contiguous numpy arrays, or from explicit rows and count (error tests)."""
        self.keep = arrays
        self.ptrs = np.asarray(ptrs if ptrs is not None else [a.ctypes.data for a in arrays],
                               dtype=np.uintp).copy() if (ptrs is not None or arrays) else np.zeros(1, np.uintp)
        n = len(ptrs) if ptrs is not None else len(arrays)
        self.sizes = np.asarray(sizes if sizes is not None else [a.size for a in arrays],
                                dtype=np.int64).reshape(-1).copy() if n else np.zeros(1, np.int64)
        self.dtypes = np.asarray(dtypes if dtypes is not None else [DTYPE_CODES[a.dtype.name] for a in arrays],
                                 dtype=np.int32).reshape(-1).copy() if n else np.zeros(1, np.int32)
        self.buf_flags = np.full(max(n, 1), -1, np.int32)
        self.n = n if nbuf is None else nbuf

    def global_norm(self, double norm_type, int nthreads=0):
        """(status, norm, flags, per-buffer flags)."""
        cdef double norm = -1.0
        cdef int flags = -1, rc
        with nogil:
            rc = fc.fc_global_norm(<void **>&self.ptrs[0], &self.sizes[0], &self.dtypes[0],
                                   self.n, norm_type, nthreads, &norm, &flags, &self.buf_flags[0])
        return rc, norm, flags, list(self.buf_flags[:self.n])

    def scale(self, double s, int nthreads=0):
        cdef int rc
        with nogil:
            rc = fc.fc_scale(<void **>&self.ptrs[0], &self.sizes[0], &self.dtypes[0],
                             self.n, s, nthreads)
        return rc

    def zero(self, int nthreads=0):
        cdef int rc
        with nogil:
            rc = fc.fc_zero(<void **>&self.ptrs[0], &self.sizes[0], &self.dtypes[0],
                            self.n, nthreads)
        return rc

    def clip(self, double max_norm, double norm_type=2.0, int nthreads=0):
        """(status, norm, scale, flags): fc_clip_grad_norm."""
        cdef double norm = -1.0, s = -1.0
        cdef int flags = -1, rc
        with nogil:
            rc = fc.fc_clip_grad_norm(<void **>&self.ptrs[0], &self.sizes[0], &self.dtypes[0],
                                      self.n, max_norm, norm_type, nthreads,
                                      &norm, &s, &flags, NULL)
        return rc, norm, s, flags


    def clamp(self, double v, int nthreads=0):
        cdef int rc
        with nogil:
            rc = fc.fc_clamp(<void **>&self.ptrs[0], &self.sizes[0], &self.dtypes[0],
                             self.n, v, nthreads)
        return rc

    def clip_eps(self, double max_norm, double eps, double norm_type=2.0, int nthreads=0):
        """(status, norm, scale, flags): fc_clip_grad_norm_eps."""
        cdef double norm = -1.0, s = -1.0
        cdef int flags = -1, rc
        with nogil:
            rc = fc.fc_clip_grad_norm_eps(<void **>&self.ptrs[0], &self.sizes[0], &self.dtypes[0],
                                          self.n, max_norm, eps, norm_type, nthreads,
                                          &norm, &s, &flags, NULL)
        return rc, norm, s, flags


def sumsq(a, int nthreads=0):
    """(status, sum of squares, flags) of one contiguous array, through the
    typed entry point of its dtype."""
    cdef uintptr_t p = a.ctypes.data
    cdef int64_t n = a.size
    cdef double out = -1.0
    cdef int flags = -1, rc
    cdef int code = DTYPE_CODES[a.dtype.name]
    with nogil:
        if code == fc.FC_DTYPE_F64:
            rc = fc.fc_sumsq_f64(<const double *>p, n, nthreads, &out, &flags)
        elif code == fc.FC_DTYPE_F32:
            rc = fc.fc_sumsq_f32(<const float *>p, n, nthreads, &out, &flags)
        elif code == fc.FC_DTYPE_BF16:
            rc = fc.fc_sumsq_bf16(<const uint16_t *>p, n, nthreads, &out, &flags)
        else:
            rc = fc.fc_sumsq_f16(<const uint16_t *>p, n, nthreads, &out, &flags)
    return rc, out, flags


def sumsq_raw(uintptr_t p, int64_t n, int dtype):
    """fc_sumsq with any arguments (error tests)."""
    cdef double out = -1.0
    cdef int flags = -1, rc
    with nogil:
        rc = fc.fc_sumsq(<const void *>p, n, dtype, 0, &out, &flags)
    return rc, out, flags


def status_message(int rc):
    return fc.fc_status_message(rc).decode()


def chunk_table_l2(a):
    """The lower-level API: one chunk per 32,768 elements of a contiguous
    float32 array, built here, reduced by fusedclip's table_norm."""
    cdef float[::1] x = a
    cdef Py_ssize_t n = x.shape[0], nch = (n + 32767) // 32768, i
    chunks = np.zeros(max(nch, 1) * sizeof(fc_chunk), np.uint8)
    partials = np.zeros(max(nch, 1) * sizeof(fc_partial), np.uint8)
    cdef unsigned char[::1] cb = chunks, pb = partials
    cdef fc_chunk *c = <fc_chunk *>&cb[0]
    cdef fc_partial *part = <fc_partial *>&pb[0]
    cdef int flags = 0
    cdef double r
    for i in range(nch):
        c[i].ptr = <char *>&x[i * 32768]
        c[i].n = min(32768, n - i * 32768)
        c[i].dtype = fc.FC_DTYPE_F32
        c[i].buf = 0
    with nogil:
        r = table_norm(c, nch, FC_NORM_2, 2.0, part, 0, True, &flags)
    return r, flags
