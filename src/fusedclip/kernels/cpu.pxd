# cython: language_level=3
"""The cimport API of fusedclip's CPU kernels.

Frameworks that hold raw pointers (their own tensor tables) can call the
kernels without Python objects, from nogil code:

    from fusedclip.kernels.cpu cimport fc_chunk, fc_partial, table_norm, table_scale

Build a `fc_chunk` table (contiguous runs of at most FC_CHUNK elements, one
buffer each), then `table_norm` gives the global norm, bitwise identical for
any thread count, and `table_scale` rescales in place.  `partials` must hold
one `fc_partial` per chunk.
"""
from libc.stdint cimport int64_t, int32_t

cdef extern from "simd.h" nogil:
    ctypedef struct fc_chunk:
        char *ptr
        int64_t n
        int32_t dtype
        int32_t buf
    ctypedef struct fc_partial:
        double s
        double m
        int32_t flags
        int32_t pad
    enum:
        FC_F64, FC_F32, FC_BF16, FC_F16, FC_NDTYPES
        FC_NORM_P, FC_NORM_1, FC_NORM_2, FC_NORM_INF
        FC_HAS_NAN, FC_HAS_INF
    int64_t FC_CHUNK
    int64_t fc_row_chunks(int64_t size)
    int64_t fc_row_chunks_of(int64_t size, int64_t chunk)
    int64_t fc_cut_row_by(fc_chunk *out, char *ptr, int64_t size, int code, int32_t row, int64_t chunk)
    int64_t fc_cut_row(fc_chunk *out, char *ptr, int64_t size, int code, int32_t row)
    int fc_itemsize(int code)
    const char *FC_SIMD_DISPATCH
    void fc_reduce_chunk(const fc_chunk *c, int kind, double p, fc_partial *out)
    double fc_combine(const fc_partial *part, int64_t n, int kind, double p, int *flags)
    double fc_clip_scale(const fc_partial *part, int64_t n, int kind, double p, double v)
    void fc_scale_chunk(const fc_chunk *c, double s)
    void fc_clamp_chunk(const fc_chunk *c, double v)
    void fc_zero_chunk(const fc_chunk *c)
    void fc_prefetch_chunk(const fc_chunk *c)

# nthreads <= 0 means the OpenMP default; parallel=False runs on the calling thread.
cdef double table_norm(const fc_chunk *chunks, Py_ssize_t n, int kind, double p,
                       fc_partial *partials, int nthreads, bint parallel,
                       int *flags) noexcept nogil
cdef void table_scale(const fc_chunk *chunks, Py_ssize_t n, double s,
                      int nthreads, bint parallel) noexcept nogil
cdef void table_clamp(const fc_chunk *chunks, Py_ssize_t n, double v,
                      int nthreads, bint parallel) noexcept nogil
cdef void table_zero(const fc_chunk *chunks, Py_ssize_t n,
                     int nthreads, bint parallel) noexcept nogil

# Are the m byte extents [e[2i], e[2i+1]) pairwise disjoint?  e may be
# reordered (sorted by start when they come in neither increasing nor
# decreasing order).
cdef bint extents_disjoint(int64_t *e, Py_ssize_t m) noexcept nogil
