# cython: language_level=3
"""fusedclip's C-level API: clipping over raw pointers, from nogil code.

    from fusedclip cimport capi as fc

    cdef double norm
    cdef int flags, rc
    with nogil:
        rc = fc.fc_global_norm(ptrs, sizes, dtypes, nbuf, 2.0, 0, &norm, &flags, NULL)

Every function is ``noexcept nogil``, returns FC_OK (0) or a negative status
(FC_E*) and writes its results through pointers; on an error
status nothing was read or written.  They run the same kernels, chunk table
and combine as the Python API, so a global norm is bitwise the one
``fusedclip.global_norm`` returns for the same contiguous buffers, for any
thread count: float64 accumulation, overflow- and underflow-safe, inf/NaN
reported in flags.

A buffer is ``(pointer, element count, dtype code)``: contiguous, aligned to
its element size, native byte order.  bfloat16 and float16 are passed as
their raw uint16 bits.  Buffers must not overlap (the same buffer listed
twice counts twice); a count of 0 may come with any pointer.
``nthreads <= 0`` uses OpenMP's default team size; a forked child runs on
one thread (libgomp is not fork-safe), with the same bits.

No header and no include directory is needed to cimport this module: the
functions are reached through the ``fusedclip.capi`` extension module, which
the cimporting module imports when it is imported.  ``fusedclip.get_include()``
is only for ``fusedclip.kernels.cpu``'s lower-level chunk-table API.
See docs/EMBEDDING.md.
"""
from libc.stdint cimport int64_t, int32_t, uint16_t

cdef enum:
    FC_CAPI_VERSION = 2   # 2: fc_clamp, fc_clip_grad_norm_eps

# dtype codes: the same as fusedclip.kernels.cpu.F64 .. F16 (simd.h's FC_F64 ..)
cdef enum:
    FC_DTYPE_F64 = 0
    FC_DTYPE_F32 = 1
    FC_DTYPE_BF16 = 2
    FC_DTYPE_F16 = 3

# non-finite flags, OR-ed (fusedclip.kernels.cpu.HAS_NAN, HAS_INF)
cdef enum:
    FC_FLAG_NAN = 1
    FC_FLAG_INF = 2

# status codes: on any error status nothing was read or written
cdef enum:
    FC_OK = 0
    FC_ENOMEM = -1      # the chunk table could not be allocated
    FC_ECOUNT = -2      # a negative element count, or nbuf < 0 or >= 2**31
    FC_EDTYPE = -3      # a dtype code other than FC_DTYPE_*
    FC_ENULL = -4       # a NULL pointer (a table, or a buffer with elements)
    FC_EALIGN = -5      # a buffer not aligned to its element size
    FC_ENORMTYPE = -6   # norm_type not > 0 (NaN included); INFINITY is the max-norm
    FC_EMAXNORM = -7    # max_norm not > 0 (NaN included); eps or clip_value out of range

# The message for a status code (a static string).
cdef const char *fc_status_message(int status) noexcept nogil

# Sum of squares of one buffer, accumulated in float64: *out = sum x_i^2.
# Non-finite data: *out is NaN (a NaN seen) or inf, and *flags says which.
# Finite data whose sum of squares exceeds float64 give inf with *flags == 0.
# flags may be NULL.
cdef int fc_sumsq(const void *data, int64_t n, int dtype, int nthreads,
                  double *out, int *flags) noexcept nogil
cdef int fc_sumsq_f64(const double *x, int64_t n, int nthreads,
                      double *out, int *flags) noexcept nogil
cdef int fc_sumsq_f32(const float *x, int64_t n, int nthreads,
                      double *out, int *flags) noexcept nogil
cdef int fc_sumsq_bf16(const uint16_t *x, int64_t n, int nthreads,
                       double *out, int *flags) noexcept nogil
cdef int fc_sumsq_f16(const uint16_t *x, int64_t n, int nthreads,
                      double *out, int *flags) noexcept nogil

# The global p-norm of nbuf buffers (norm_type: any p > 0, or INFINITY).
# *norm: NaN if a NaN was seen, inf if an inf (and no NaN); *flags the OR of
# FC_FLAG_*; buf_flags, if not NULL, gets each buffer's own flags (nbuf
# entries).  The pointers are only read.
cdef int fc_global_norm(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                        int64_t nbuf, double norm_type, int nthreads,
                        double *norm, int *flags, int32_t *buf_flags) noexcept nogil

# x *= s in place for every buffer (float64/float32 multiplied in float64,
# the 16-bit types in float32, rounded once).
cdef int fc_scale(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                  int64_t nbuf, double s, int nthreads) noexcept nogil

# x = min(max(x, -v), v) in place for every buffer (NaN stays NaN, +-inf
# becomes +-v rounded to the buffer's dtype); v >= 0 (else FC_EMAXNORM).
cdef int fc_clamp(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                  int64_t nbuf, double v, int nthreads) noexcept nogil

# x = 0 in place for every buffer.
cdef int fc_zero(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                 int64_t nbuf, int nthreads) noexcept nogil

# clip_grad_norm_ in one call: the norm, then, if the data are finite and
# norm > max_norm, every buffer scaled by max_norm / norm (computed
# overflow-safely where finite data have a norm beyond float64).  *scale is
# the factor applied (1.0: nothing written).  Non-finite data: nothing
# written, *scale = 1.0 and *flags set; the caller applies its own policy
# (fc_zero, or skip).  max_norm: > 0, INFINITY meaning never clip.  norm,
# scale, flags and buf_flags may be NULL.
cdef int fc_clip_grad_norm(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                           int64_t nbuf, double max_norm, double norm_type, int nthreads,
                           double *norm, double *scale, int *flags,
                           int32_t *buf_flags) noexcept nogil

# fc_clip_grad_norm with an eps in the rule, as torch's clip_grad_norm_ has
# (1e-6): clip when norm + eps > max_norm, by max_norm / (norm + eps).
# eps: finite and >= 0 (else FC_EMAXNORM); fc_clip_grad_norm is eps = 0.
cdef int fc_clip_grad_norm_eps(void **ptrs, const int64_t *sizes, const int32_t *dtypes,
                               int64_t nbuf, double max_norm, double eps, double norm_type,
                               int nthreads, double *norm, double *scale, int *flags,
                               int32_t *buf_flags) noexcept nogil
