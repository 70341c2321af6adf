/*
 * fusedclip CPU kernels: the inner loops, one definition per operation.
 *
 * Every loop is written once, in a macro parameterised by the element type and
 * its load/store conversions, and instantiated for float64, float32, bfloat16
 * and float16 (both as raw uint16 bits).  The hot loops carry
 * `target_clones`, so the portable build still runs AVX-512 (x86-64-v4) or
 * AVX2+F16C (x86-64-v3) code where the CPU has it; GCC picks the clone once,
 * at load time, through an ifunc.
 *
 * Arithmetic contract (docs/DESIGN.md, "Accuracy"):
 *   - reductions accumulate in float64 whatever the storage type;
 *   - a chunk whose float64 accumulator overflows (or whose float64 squares
 *     underflow) while every value is finite is recomputed relative to its
 *     max m, and its partial is kept as  s * m^p  with s = sum (|x|/m)^p;
 *     general p is always computed that way;
 *   - scaling returns x*s rounded once, to nearest even, to the storage
 *     type: the exact product's correct rounding, for every x and s (the
 *     fast products below, checked lane by lane; the few lanes the check
 *     cannot prove go through fc_scale_exact_*).
 *
 * Nothing here allocates, locks or touches Python: every function is safe to
 * call from many OpenMP threads at once on disjoint chunks.
 */
#ifndef FUSEDCLIP_SIMD_H
#define FUSEDCLIP_SIMD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* ------------------------------------------------------------------ codes */
enum { FC_F64 = 0, FC_F32 = 1, FC_BF16 = 2, FC_F16 = 3, FC_NDTYPES = 4 };
enum { FC_NORM_P = 0, FC_NORM_1 = 1, FC_NORM_2 = 2, FC_NORM_INF = 3 };
enum { FC_HAS_NAN = 1, FC_HAS_INF = 2 };

/* One row of the chunk table: a contiguous run of at most FC_CHUNK elements
 * of one buffer.  `buf` is the buffer's row in the caller's table. */
typedef struct {
    char   *ptr;
    int64_t n;
    int32_t dtype;
    int32_t buf;
} fc_chunk;

/* One chunk's partial result.  The chunk's contribution to sum |x|^p is
 * s * m^p: m = 1 for the plain fast paths; for a scaled chunk m is its max
 * |x| and s = sum (|x|/m)^p, in [1, n], which neither overflows nor
 * underflows for any p.  For the inf-norm, s is the max |x|.
 * flags: FC_HAS_NAN / FC_HAS_INF. */
typedef struct {
    double  s;
    double  m;
    int32_t flags;
    int32_t pad;
} fc_partial;

#define FC_CHUNK ((int64_t)32768)

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__)) \
    && !defined(FUSEDCLIP_NO_CLONES)
#  define FC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#  define FC_SIMD_DISPATCH "target_clones(x86-64-v4, x86-64-v3, default)"
#else
#  define FC_CLONES
#  define FC_SIMD_DISPATCH "none (compiler default ISA)"
#endif

#define FC_PRAGMA(x) _Pragma(#x)

/* ------------------------------------------------------ element conversions */
static inline float fc_bf16_load(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint16_t fc_bf16_store(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)          /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);              /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* IEEE half <-> float by bit manipulation: branch-free, so the loops
 * vectorise on every ISA (GCC 12 does not vectorise _Float16 conversions). */
static inline float fc_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t fc_f32_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

static inline float fc_f16_load(uint16_t h) {
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13;           /* exponent+mantissa, float position */
    uint32_t u = fc_f32_bits(fc_f32_from_bits(em) * 0x1p112f);  /* rebias; exact for subnormals too */
    u = em >= (0x7c00u << 13) ? (em | 0x7f800000u) : u;     /* inf, NaN */
    return fc_f32_from_bits(u | ((uint32_t)(h & 0x8000u) << 16));
}
static inline uint16_t fc_f16_store(float f) {           /* round to nearest even */
    uint32_t u = fc_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    u &= 0x7fffffffu;
    /* >= 65520 rounds to inf; NaN stays a quiet NaN */
    uint32_t big = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    /* below 2^-14 the result is subnormal: adding 0.5 aligns the mantissa */
    uint32_t sub = fc_f32_bits(fc_f32_from_bits(u) + 0.5f) - 0x3f000000u;
    /* normal: rebias the exponent, round the 13 dropped bits to nearest even */
    uint32_t nrm = (u + 0xc8000fffu + ((u >> 13) & 1u)) >> 13;
    uint32_t r = u >= 0x477ff000u ? big : u < 0x38800000u ? sub : nrm;
    return (uint16_t)(r | sign);
}

#define FC_LD_F64(v)  (v)
#define FC_LD_F32(v)  ((double)(v))
#define FC_LD_BF16(v) ((double)fc_bf16_load(v))
#define FC_LD_F16(v)  ((double)fc_f16_load(v))

/* The scale kernel's compute type (CT) and store conversions. */
#define FC_ST_F64(v)  (v)
#define FC_ST_F32(v)  ((float)(v))
#define FC_ST_BF16(v) fc_bf16_store(v)
#define FC_ST_F16(v)  fc_f16_store(v)

/* ------------------------------------------------ correctly rounded scaling
 *
 * x*s rounded once to x's type.  The exact product of a p-bit x and a 53-bit
 * s needs up to p + 53 bits, so a product rounded to float64 (or float32)
 * and then to the type can land on a midpoint of the type that the exact
 * product is not on, and round the wrong way (a double rounding).  The
 * exact path rounds to odd instead at each intermediate step (truncate, and
 * set the last bit when inexact): a value rounded to odd with at least two
 * bits more than the target rounds to the target correctly (Boldo &
 * Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms
 * using rounding to odd", IEEE TC 2008).  The error of the float64 product
 * comes from an FMA. */
static inline uint64_t fc_f64_bits(double d) { uint64_t u; memcpy(&u, &d, sizeof u); return u; }
static inline double fc_f64_from_bits(uint64_t u) { double d; memcpy(&d, &u, sizeof d); return d; }
/* x*s rounded to odd at float64 precision (NaN and inf as the product) */
static inline double fc_mul_rto(double x, double s) {
    const double p = x * s, e = __builtin_fma(x, s, -p);
    int64_t b = (int64_t)fc_f64_bits(p);
    const int64_t inexact = -(int64_t)(e != 0.0 && e == e);
    const int64_t even = (b & 1) - 1;                         /* -1 if the last bit is 0 */
    const int64_t away = ((b ^ (int64_t)fc_f64_bits(e)) >> 63) | 1;  /* +1: e has p's sign */
    b += away & inexact & even;                               /* to the odd neighbour, toward x*s */
    return fc_f64_from_bits((uint64_t)b);
}
/* a float64 rounded to odd at float32 precision (beyond FLT_MAX: FLT_MAX);
 * branch-free, so that the loops running it vectorise */
static inline float fc_f32_rto(double d) {
    const float f = (float)d;
    const uint32_t b = fc_f32_bits(f);
    const double back = (double)f;
    const uint32_t inexact = (uint32_t)-(int32_t)(back != d && d == d);
    const uint32_t even = (b & 1u) - 1u;                           /* all ones if even */
    const uint32_t down = (uint32_t)-(int32_t)(fabs(back) > fabs(d));  /* toward d: -1, else +1 */
    return fc_f32_from_bits(b + ((down | 1u) & inexact & even));
}
static inline float fc_scale_exact_f32(float x, double s) { return (float)fc_mul_rto(x, s); }
static inline uint16_t fc_scale_exact_bf16(uint16_t h, double s) {
    return fc_bf16_store(fc_f32_rto(fc_mul_rto(fc_bf16_load(h), s)));
}
static inline uint16_t fc_scale_exact_f16(uint16_t h, double s) {
    return fc_f16_store(fc_f32_rto(fc_mul_rto(fc_f16_load(h), s)));
}
/* The fast products and what proves them: a lane is proven where its fast
 * product lies farther from every midpoint of the target type than the
 * exact product can lie from it; the midpoints are bit patterns, so this is
 * an integer test on the fast product's bits.
 *   float32 data: q = x*s in float64, within half a float64 ulp of the
 *   exact product; a float32 midpoint is a float64 whose 29 low mantissa
 *   bits are 1 << 28.  Proven: q's low 29 bits more than 2 from that, q a
 *   normal float32 in magnitude (below, fewer bits are kept: not proven).
 *   16-bit data: q = x*(float)s in float32; with s a normal float32 the
 *   exact product lies within 2 float32 ulps of q (s's rounding and q's,
 *   2^-24 each).  A bfloat16 midpoint is a float32 whose 16 low bits are
 *   0x8000, in every binade and below; a float16 midpoint, for normal
 *   float16 results, one whose 13 low bits are 0x1000, and for subnormal
 *   ones (q below 2^-14) one whose k = 126 - exponent low bits are 1 << (k-1).
 *   Proven: q's low bits more than 3 from the midpoint pattern.
 * NaN and inf are never proven (the exact path handles them). */
static inline int fc_scale_f32_fast_ok(double s) {  /* s for which the 16-bit fast products are checked */
    /* s - (float)s a normal float32 or 0, and no overflow; positive, so that
     * the product's sign is x's (the fast products copy it: -0 stays -0) */
    return s >= 0x1p-100 && s <= 1.0;
}
static inline int fc_scale_trivial(double s) {     /* 0, inf, NaN: every product exact */
    return s == 0.0 || s != s || fabs(s) == INFINITY;
}

/* ------------------------------------------------------------- the loops */

/* Reductions keep FC_LANES independent float64 accumulators: element i goes
 * to lane i % FC_LANES within each full block, the tail to lanes 0.., and the
 * lanes are added in a fixed tree order.  Several accumulator chains hide the
 * add latency (one chain made short buffers latency-bound), and because the
 * lanes are explicit, every SIMD level (AVX-512, AVX2, scalar) computes the
 * same bits.  STMT sees the element index I and its lane J. */
#define FC_LANES 32
/* Software prefetch FC_PF_DIST bytes ahead of the loops' streams, to L2: the
 * hardware prefetchers alone left the kernels 25-50 % below the plain read
 * and read-write rates on DRAM-resident buffers (16-bit types: 2x).  The
 * loops prefetch only inside their chunk (past its end lies another
 * buffer, or memory nobody reads); the table loops fetch the head of the
 * next chunk (fc_prefetch_chunks), so one thread's stream runs on across
 * chunks and buffers.  FC_FOR_BLOCKS is the loop over blocks of FC_LANES
 * elements that does it. */
#ifndef FC_PF_DIST
#define FC_PF_DIST 16384
#endif
#ifndef FC_PF_LOC
#define FC_PF_LOC 2
#endif
/* Where a thread's stream goes after the chunk being processed: set by the
 * table loops (fc_prefetch_chunks) to the next chunk's first byte.  Only
 * prefetched, never loaded: a stale value (a kernel called outside a table
 * loop) costs a useless prefetch, nothing more. */
static const char fc_pf_nowhere[64];
static __thread const char *fc_pf_next = fc_pf_nowhere;
#define FC_PF_LINES(a, bytes, rw)                                                   \
    do {                                                                            \
        for (int pf_ = 0; pf_ < (int)(bytes); pf_ += 64)                            \
            __builtin_prefetch((const char *)(a) + pf_, rw, FC_PF_LOC);             \
    } while (0)
/* A software prefetch into a 4 KB page the TLB does not hold is dropped
 * (buffers of small arrays live on 4 KB pages; a large numpy array gets
 * transparent huge pages): one real load per page, a page ahead of the
 * prefetches, walks the page table in time (about 10 % on 4 KB pages).
 * It reads a byte of the buffer itself, never past it. */
#ifndef FC_NO_TOUCH  /* (benchmarks: build with -DFC_NO_TOUCH to compare) */
#define FC_PF_TOUCH(a) ((void)*(volatile const char *)(a))
#else
#define FC_PF_TOUCH(a) ((void)0)
#endif
/* for (b = 0; b < nb; b += FC_LANES) BODY, prefetching FC_PF_DIST bytes
 * ahead: inside x[0, n) while that lies ahead, then at the next chunk.  Two
 * loops, so that the common one carries no address select. */
#define FC_FOR_STEPS(x, n, nb, b, rw, STEP, ...)                                           \
    do {                                                                            \
        const int64_t sz_ = (int64_t)sizeof(*(x));                                  \
        const int64_t d_ = FC_PF_DIST / sz_, pg_ = 4096 / sz_;                      \
        const int64_t m_ = (nb) > d_ ? (nb) - d_ : 0;                               \
        const int64_t tl_ = (n) - d_ - pg_;     /* touches stay inside x[0, n) */   \
        const int bb_ = (STEP) * (int)sz_;                                            \
        int64_t b = 0;                                                              \
        for (; b < m_; b += (STEP)) {                                             \
            FC_PF_LINES((x) + b + d_, bb_, rw);                                     \
            if (!(b & (pg_ - 1)) && b < tl_) FC_PF_TOUCH((x) + b + d_ + pg_);      \
            __VA_ARGS__                                                             \
        }                                                                           \
        /* then into the next chunk: prefetches only (never a load there) */        \
        uintptr_t q_ = (uintptr_t)fc_pf_next + (uintptr_t)((b + d_ - (n)) * sz_);   \
        if ((n) * sz_ > FC_PF_DIST / 2) {                                           \
            for (; b < (nb); b += (STEP), q_ += (uintptr_t)bb_) {                 \
                FC_PF_LINES(q_, bb_, rw);                                           \
                __VA_ARGS__                                                         \
            }                                                                       \
        } else {  /* a small chunk: the table loop fetches its successors */        \
            for (; b < (nb); b += (STEP)) {                                       \
                __VA_ARGS__                                                         \
            }                                                                       \
        }                                                                           \
    } while (0)
#define FC_FOR_BLOCKS(x, n, nb, b, rw, ...) FC_FOR_STEPS(x, n, nb, b, rw, FC_LANES, __VA_ARGS__)
#define FC_LANE_LOOP(x, n, STMT)                                                    \
    do {                                                                            \
        const int64_t nb_ = (n) - (n) % FC_LANES;                                   \
        FC_FOR_BLOCKS(x, n, nb_, b_, 0, {                                           \
            FC_PRAGMA(omp simd)                                                     \
            for (int J = 0; J < FC_LANES; J++) { const int64_t I = b_ + J; STMT }   \
        });                                                                         \
        for (int64_t I = nb_; I < (n); I++) { const int J = (int)(I - nb_); STMT }  \
    } while (0)

#define FC_FOLD(a, w) FC_PRAGMA(omp simd) for (int j = 0; j < (w); j++) a[j] += a[j + (w)];
static inline double fc_lanes_sum(double *a) {
    FC_FOLD(a, 16) FC_FOLD(a, 8) FC_FOLD(a, 4) FC_FOLD(a, 2)
    return a[0] + a[1];
}
static inline double fc_lanes_max(double *a) {
    for (int w = FC_LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++) a[j] = a[j + w] > a[j] ? a[j + w] : a[j];
    return a[0];
}

/* r = y^e for a block, e >= 1, by repeated squaring (y is overwritten). */
#define FC_PBLK 256
static inline void fc_ipow_block(double *restrict y, double *restrict r, int64_t len, unsigned e) {
    FC_PRAGMA(omp simd)
    for (int64_t j = 0; j < len; j++) r[j] = 1.0;
    for (;;) {
        if (e & 1u) {
            FC_PRAGMA(omp simd)
            for (int64_t j = 0; j < len; j++) r[j] *= y[j];
        }
        e >>= 1;
        if (!e) break;
        FC_PRAGMA(omp simd)
        for (int64_t j = 0; j < len; j++) y[j] *= y[j];
    }
}

#define FC_DEFINE_LOOPS(SFX, T, CT, LD, ST, F64)                                     \
/* sum of squares, and for float64 the max |x| (NaN-blind; the sum carries NaN/inf), \
 * which tells whether squares underflowed.  Other types cannot under/overflow. */   \
FC_CLONES static void fc_ssq_##SFX(const void *p, int64_t n, double *ss, double *mx) \
{                                                                                    \
    const T *restrict x = (const T *)p;                                              \
    double s[FC_LANES] = {0.0}, m[FC_LANES] = {0.0};                                 \
    FC_LANE_LOOP(x, n, {                                                                \
        double v = LD(x[I]);                                                         \
        s[J] += v * v;                                                               \
        if (F64) m[J] = fabs(v) > m[J] ? fabs(v) : m[J];                             \
    });                                                                              \
    *ss = fc_lanes_sum(s); *mx = F64 ? fc_lanes_max(m) : 0.0;                        \
}                                                                                    \
/* sum of |x|. */                                                                    \
FC_CLONES static double fc_asum_##SFX(const void *p, int64_t n)                      \
{                                                                                    \
    const T *restrict x = (const T *)p;                                              \
    double s[FC_LANES] = {0.0};                                                      \
    FC_LANE_LOOP(x, n, { s[J] += fabs(LD(x[I])); });                                    \
    return fc_lanes_sum(s);                                                          \
}                                                                                    \
/* max |x| ignoring NaN, and z = sum(x*0), which is NaN iff a value is inf/NaN. */   \
FC_CLONES static void fc_amax_##SFX(const void *p, int64_t n, double *mx, double *z) \
{                                                                                    \
    const T *restrict x = (const T *)p;                                              \
    double m[FC_LANES] = {0.0}, zz[FC_LANES] = {0.0};                                \
    FC_LANE_LOOP(x, n, {                                                                \
        double v = LD(x[I]);                                                         \
        m[J] = fabs(v) > m[J] ? fabs(v) : m[J];                                      \
        zz[J] += v * 0.0;                                                            \
    });                                                                              \
    *mx = fc_lanes_max(m); *z = fc_lanes_sum(zz);                                    \
}                                                                                    \
/* sum of (|x| / m)^p, m the max |x|: the general-p and the rescue path.     \
 * Blocks of FC_PBLK values are divided by m into an L1 buffer; an integer p  \
 * (up to 1024) is raised by repeated squaring, vectorised across the block;  \
 * other p go through pow(). */                                                      \
FC_CLONES static double fc_psum_##SFX(const void *p, int64_t n, double pw, double m) \
{                                                                                    \
    const T *restrict x = (const T *)p;                                              \
    const unsigned ipw = pw == floor(pw) && pw >= 1.0 && pw <= 1024.0 ? (unsigned)pw : 0; \
    double y[FC_PBLK], r[FC_PBLK], s = 0.0;                                          \
    for (int64_t b = 0; b < n; b += FC_PBLK) {                                       \
        const int64_t len = n - b < FC_PBLK ? n - b : FC_PBLK;                       \
        FC_PRAGMA(omp simd)                                                          \
        for (int64_t j = 0; j < len; j++) y[j] = fabs(LD(x[b + j])) / m;             \
        if (ipw) fc_ipow_block(y, r, len, ipw);                                      \
        else for (int64_t j = 0; j < len; j++) r[j] = pow(y[j], pw);                 \
        for (int64_t j = 0; j < len; j++) s += r[j];                                 \
    }                                                                                \
    return s;                                                                        \
}                                                                                    \
/* flags (FC_HAS_NAN / FC_HAS_INF) and the max |x| over the finite values. */        \
static int fc_classify_##SFX(const void *p, int64_t n, double *finite_max)          \
{                                                                                    \
    const T *x = (const T *)p;                                                       \
    int flags = 0;                                                                   \
    double m = 0.0;                                                                  \
    for (int64_t i = 0; i < n; i++) {                                                \
        double v = LD(x[i]);                                                         \
        if (isnan(v)) flags |= FC_HAS_NAN;                                           \
        else if (isinf(v)) flags |= FC_HAS_INF;                                      \
        else if (fabs(v) > m) m = fabs(v);                                           \
    }                                                                                \
    *finite_max = m;                                                                 \
    return flags;                                                                    \
}                                                                                    \
/* x = clamp(x, -c, c); NaN stays NaN, +-inf becomes +-c. */                         \
FC_CLONES static void fc_clamp_##SFX(void *p, int64_t n, double c)                   \
{                                                                                    \
    T *restrict x = (T *)p;                                                          \
    const CT hi = (CT)c, lo = -(CT)c;                                                \
    FC_PRAGMA(omp simd)                                                              \
    for (int64_t i = 0; i < n; i++) {                                                \
        CT v = (CT)LD(x[i]);                                                         \
        v = v > hi ? hi : v;                                                         \
        v = v < lo ? lo : v;                                                         \
        x[i] = ST(v);                                                                \
    }                                                                                \
}

FC_DEFINE_LOOPS(f64, double, double, FC_LD_F64, FC_ST_F64, 1)
FC_DEFINE_LOOPS(f32, float, double, FC_LD_F32, FC_ST_F32, 0)
FC_DEFINE_LOOPS(bf16, uint16_t, float, FC_LD_BF16, FC_ST_BF16, 0)
FC_DEFINE_LOOPS(f16, uint16_t, float, FC_LD_F16, FC_ST_F16, 0)

/* x *= s, correctly rounded (see "correctly rounded scaling" above), one
 * pass: each lane's fast product q = PROD(v) is stored as OUT(q), and
 * UNPROVEN(q, v) says whether it may differ from the correct rounding.  The
 * lanes go in spans of FC_SCALE_SPAN (the inputs kept on the stack), with one
 * reduction of the checks per span; a span with an unproven lane checks its
 * groups of FC_SCALE_GROUP again and rewrites those with one from EXACT(v),
 * vectorised.  (A reduction per group of 32 cost as much as the products.)
 * Groups of 32: a scale with many hard lanes (bfloat16 at s = 0.99: 1.6 %
 * of the lanes) rewrites a fraction of the groups, not of the spans. */
#define FC_SCALE_GROUP 32
#define FC_SCALE_SPAN 256
#define FC_SCALE_LOOP(T, x, n, PROD, OUT, UNPROVEN, EXACT)                             \
    do {                                                                               \
        const int64_t nb_ = (n) - (n) % FC_SCALE_SPAN;                                 \
        FC_FOR_STEPS(x, n, nb_, b_, 1, FC_SCALE_SPAN, {                                \
            T o_[FC_SCALE_SPAN];                                                       \
            __typeof__(UNPROVEN(PROD(x[0]), x[0])) any_ = 0;                           \
            FC_PRAGMA(omp simd reduction(|:any_))                                      \
            for (int j = 0; j < FC_SCALE_SPAN; j++) {                                  \
                const T v_ = x[b_ + j];                                                \
                const __typeof__(PROD(v_)) q_ = PROD(v_);                              \
                o_[j] = v_;                                                            \
                any_ |= UNPROVEN(q_, v_);                                              \
                x[b_ + j] = OUT(q_);                                                   \
            }                                                                          \
            if (any_) {                                                                \
                for (int g_ = 0; g_ < FC_SCALE_SPAN; g_ += FC_SCALE_GROUP) {           \
                    __typeof__(any_) a_ = 0;                                           \
                    FC_PRAGMA(omp simd reduction(|:a_))                                \
                    for (int j = g_; j < g_ + FC_SCALE_GROUP; j++)                     \
                        a_ |= UNPROVEN(PROD(o_[j]), o_[j]);                            \
                    if (a_) {                                                          \
                        FC_PRAGMA(omp simd)                                            \
                        for (int j = g_; j < g_ + FC_SCALE_GROUP; j++)                 \
                            x[b_ + j] = EXACT(o_[j]);                                  \
                    }                                                                  \
                }                                                                      \
            }                                                                          \
        });                                                                            \
        for (int64_t i_ = nb_; i_ < (n); i_++) x[i_] = EXACT(x[i_]);                   \
    } while (0)

/* The AVX-512 scale loops (below, set at load time where the CPU has them):
 * the same products and checks, 32 lanes at a time, with the check on mask
 * registers and a branch per 32 lanes; GCC's vectorisation of the generic
 * loops used 256-bit vectors and ~3 instructions per element. */
typedef void (*fc_scale32_fn)(float *, int64_t, double);
typedef void (*fc_scale16_fn)(uint16_t *, int64_t, float, float, double);
static fc_scale32_fn fc_scale_f32_fast = 0;
static fc_scale16_fn fc_scale_bf16_fast = 0, fc_scale_f16_fast = 0;

/* float64: the product, rounded once */
FC_CLONES static void fc_scale_f64(void *p, int64_t n, double s) {
    double *restrict x = (double *)p;
    const int64_t nb = n - n % FC_LANES;
    FC_FOR_BLOCKS(x, n, nb, b, 1, {
        FC_PRAGMA(omp simd)
        for (int64_t i = b; i < b + FC_LANES; i++) x[i] *= s;
    });
    for (int64_t i = nb; i < n; i++) x[i] *= s;
}
/* float32: the float64 product q, within half a float64 ulp of the exact
 * one, so on the same side of every float32 midpoint unless q is one: q is
 * unproven where it is exactly a midpoint of normal float32s (its 29 low
 * bits are 1 << 28), and where the result y = (float)q is below 2^-125 (the
 * subnormal range's midpoints are other bits; 0 from x = 0 is exact).  With
 * |s| <= 1 nothing overflows (larger scales take the exact path). */
#define FC_PROD_F32(v) ((double)(v) * s)
#define FC_OUT_F32(q) ((float)(q))
#define FC_UNPROVEN_F32(q, v)                                                          \
    ((int32_t)((fc_f64_bits(q) & 0x1fffffffull) == 0x10000000ull)                      \
     | (int32_t)(((fc_f32_bits((float)(q)) & 0x7f800000u) <= 0x00800000u) & ((v) != 0.0f)))
#define FC_EXACT_F32(v) fc_scale_exact_f32((v), s)
FC_CLONES static void fc_scale_f32(void *p, int64_t n, double s) {
    float *restrict x = (float *)p;
    if (fc_scale_trivial(s)) {
        FC_PRAGMA(omp simd)
        for (int64_t i = 0; i < n; i++) x[i] = (float)((double)x[i] * s);
        return;
    }
    if (!(fabs(s) <= 1.0)) {  /* a scale up may overflow: all exact */
        for (int64_t i = 0; i < n; i++) x[i] = fc_scale_exact_f32(x[i], s);
        return;
    }
    if (fc_scale_f32_fast) { fc_scale_f32_fast(x, n, s); return; }
    FC_SCALE_LOOP(float, x, n, FC_PROD_F32, FC_OUT_F32, FC_UNPROVEN_F32, FC_EXACT_F32);
}
/* bfloat16: q = x*c + x*d in float32 with one rounding (an FMA), c = s
 * rounded to float32 and d = s - c rounded to float32: within 1 float32 ulp
 * of the exact product (2^-47 relative, s >= 2^-100), so unproven only within
 * 1 ulp of a bfloat16 midpoint (16 low bits 0x8000), or not finite (x*d
 * of an inf x can be NaN) */
static inline int32_t fc_unproven_bf16(float q) {
    const uint32_t w = fc_f32_bits(q);
    return (int32_t)((w & 0xffffu) - 0x7fffu <= 2u) | (int32_t)((w & 0x7fffffffu) >= 0x7f800000u);
}
#define FC_UNPROVEN_BF16(q, v) fc_unproven_bf16(q)
/* the sign is x's: for x = -0 and d < 0, -0*c + +0 would be +0 (s > 0 here) */
#define FC_PROD_BF16(v) __builtin_copysignf(__builtin_fmaf(fc_bf16_load(v), c, fc_bf16_load(v) * d), \
                                            fc_bf16_load(v))
#define FC_OUT_BF16(q) fc_bf16_store(q)
#define FC_EXACT_BF16(v) fc_scale_exact_bf16((v), s)
FC_CLONES static void fc_scale_bf16(void *p, int64_t n, double s) {
    uint16_t *restrict x = (uint16_t *)p;
    const float c = (float)s, d = (float)(s - (double)c);
    if (fc_scale_trivial(s)) {
        FC_PRAGMA(omp simd)
        for (int64_t i = 0; i < n; i++) x[i] = fc_bf16_store(fc_bf16_load(x[i]) * c);
        return;
    }
    if (!fc_scale_f32_fast_ok(s)) {  /* s below float32's normal range, or above 1: all exact */
        for (int64_t i = 0; i < n; i++) x[i] = fc_scale_exact_bf16(x[i], s);
        return;
    }
    if (fc_scale_bf16_fast) { fc_scale_bf16_fast(x, n, c, d, s); return; }
    FC_SCALE_LOOP(uint16_t, x, n, FC_PROD_BF16, FC_OUT_BF16, FC_UNPROVEN_BF16, FC_EXACT_BF16);
}

/* --------------------------------------------- float16 through a float block */
/* GCC 12 cannot vectorise _Float16 conversions, and the bit-manipulation ones
 * above cost about ten instructions per vector, which made float16 loops
 * compute-bound.  So float16 data is converted a block at a time into an
 * L1-resident float buffer, by the F16C/AVX-512 instructions where the CPU
 * has them (fc_h2f / fc_f2h, chosen once at load time), and the float32 loops
 * run on that buffer.  The results are the same bits either way: both
 * conversions are exact (half -> float) or correctly rounded to nearest even
 * (float -> half). */
#define FC_HBLK 1024

static void fc_h2f_soft(const uint16_t *h, float *f, int64_t n) {
    FC_PRAGMA(omp simd)
    for (int64_t i = 0; i < n; i++) f[i] = fc_f16_load(h[i]);
}
static void fc_f2h_soft(const float *f, uint16_t *h, int64_t n) {
    FC_PRAGMA(omp simd)
    for (int64_t i = 0; i < n; i++) h[i] = fc_f16_store(f[i]);
}
static void (*fc_h2f)(const uint16_t *, float *, int64_t) = fc_h2f_soft;
static void (*fc_f2h)(const float *, uint16_t *, int64_t) = fc_f2h_soft;
static const char *fc_f16_path = "bit manipulation";

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(FUSEDCLIP_NO_CLONES)
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void fc_h2f_f16c(const uint16_t *h, float *f, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) f[i] = fc_f16_load(h[i]);
}
__attribute__((target("avx,f16c"))) static void fc_f2h_f16c(const float *f, uint16_t *h, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = fc_f16_store(f[i]);
}
__attribute__((target("avx512f"))) static void fc_h2f_avx512(const uint16_t *h, float *f, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; i++) f[i] = fc_f16_load(h[i]);
}
__attribute__((target("avx512f"))) static void fc_f2h_avx512(const float *f, uint16_t *h, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(h + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = fc_f16_store(f[i]);
}
__attribute__((constructor)) static void fc_pick_f16(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        fc_h2f = fc_h2f_avx512; fc_f2h = fc_f2h_avx512; fc_f16_path = "AVX-512 (vcvtph2ps/vcvtps2ph)";
    } else if (__builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c")) {
        fc_h2f = fc_h2f_f16c; fc_f2h = fc_f2h_f16c; fc_f16_path = "F16C (vcvtph2ps/vcvtps2ph)";
    }
}
#endif

FC_CLONES static void fc_scalef(float *x, int64_t n, float c) {
    FC_PRAGMA(omp simd)
    for (int64_t i = 0; i < n; i++) x[i] *= c;
}

/* Run BODY on each block of x converted to float in `buf` (length `len`). */
#define FC_F16_BLOCKS(p, n, ...)                                                    \
    do {                                                                            \
        float buf[FC_HBLK];                                                         \
        for (int64_t b_ = 0; b_ < (n); b_ += FC_HBLK) {                             \
            const int64_t len = (n) - b_ < FC_HBLK ? (n) - b_ : FC_HBLK;            \
            uint16_t *blk = (uint16_t *)(p) + b_;                                   \
            fc_h2f(blk, buf, len);                                                  \
            __VA_ARGS__                                                             \
        }                                                                           \
    } while (0)

/* ---------------------------------- 16-bit sums of squares from the bits
 *
 * Widening every 16-bit value to float64 (two conversions, one of them on
 * the shuffle port) made the bfloat16 and float16 norms compute-bound at
 * about half the memory rate.  Their float64 lane values are instead built
 * from the bits with one shift and one ternary-logic operation:
 *
 *   w = bits( (|x| as float32 bits) << 29  |  1 << 61 )
 *
 * places x's 8 exponent bits in the low 8 bits of float64's exponent field,
 * its mantissa under float64's, and sets the field's 512 bit.  For every
 * normal x, w = |x| * 2^-384 exactly, so w*w = x^2 * 2^-768 is exact (8- or
 * 11-bit significands) and normal, and the lanes accumulate exactly what
 * widening accumulates, scaled by a power of two: the same bits.  (A
 * bfloat16 holds float32's top 16 bits, so its lane value is the same
 * transform of (bits << 16).)  Where the float32 exponent is 0 (zero, and
 * bfloat16 subnormals) w is 2^-511 * (1.m) instead of the value: each such
 * element adds a term below 2^-1020 (x^2 units: below 2^-252), and
 *   - a chunk of zeros sums to exactly n * 2^-1022: its result is 0;
 *   - a bfloat16 chunk whose sum is below n * 2^-970 (all |x| below about
 *     2^-100) is recomputed by widening, so the error stays below 2^-50
 *     relative; float16 values reach float32 through an exact conversion
 *     and are never below 2^-24, so their zeros' terms are below 2^-190
 *     relative to any nonzero chunk;
 *   - an inf or NaN gives w*w >= 2^-512 (x^2 >= 2^256, more than any finite
 *     bfloat16 or float16 square): a sum >= 2^256 is reported as inf, and
 *     fc_reduce_chunk classifies the chunk as for every other type.
 *
 * Lanes: a 32-element block is read as 8 words of 64 bits.  bfloat16: the
 * element at 16-bit position k of word q goes to lane 8k + q.  float16
 * (through float32, two per word): element 16h + 2q + e goes to lane
 * 8(2h + e) + q.  The tail goes to lanes 0.., and fc_lanes_sum folds them.
 * The AVX-512 loops below and the portable loops compute the same bits. */
#define FC_W_BIAS  0x2000000000000000ull                 /* exponent field +512 */
#define FC_W_MASK  0x0fffffffe0000000ull                 /* |float32 bits| << 29 */
#define FC_WB_MASK 0x0fffe00000000000ull                 /* |bfloat16 bits| << 45 */
static inline double fc_w_of_f32bits(uint32_t u) {
    const uint64_t b = ((uint64_t)(u & 0x7fffffffu) << 29) | FC_W_BIAS;
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}
/* The sum of squares from a lanes' sum sw over n elements (see above). */
static inline double fc_w_finish(double sw, int64_t n) {
    if (sw == (double)n * 0x1p-1022) return 0.0;         /* all zeros */
    const double ss = sw * 0x1p768;
    return ss >= 0x1p256 ? INFINITY : ss;                 /* maybe inf/NaN */
}

/* The portable lane loops (any ISA; the target clones vectorise them). */
FC_CLONES static double fc_ssqw_bf16_lanes(const void *p, int64_t n) {
    const uint16_t *restrict x = (const uint16_t *)p;
    double s[FC_LANES] = {0.0};
    const int64_t nb = n - n % FC_LANES;
    FC_FOR_BLOCKS(x, n, nb, b, 0, {
        uint64_t wd[8];
        memcpy(wd, x + b, sizeof wd);
        for (int k = 0; k < 4; k++) {
            FC_PRAGMA(omp simd)
            for (int q = 0; q < 8; q++) {
                const double w = fc_w_of_f32bits((uint32_t)((wd[q] >> (16 * k)) & 0xffffu) << 16);
                s[8 * k + q] += w * w;
            }
        }
    });
    for (int64_t I = nb; I < n; I++) {
        const double w = fc_w_of_f32bits((uint32_t)x[I] << 16);
        s[I - nb] += w * w;
    }
    return fc_lanes_sum(s);
}
/* float16 through float32 blocks (f holds `len` converted values of the
 * chunk's block starting at element `off`, a multiple of FC_LANES). */
FC_CLONES static void fc_ssqw_f32bits_acc(const float *f, int64_t len, int64_t off, int64_t n, double *s) {
    const int64_t nb = n - n % FC_LANES;
    const int64_t full = off + len <= nb ? len : nb - off;
    for (int64_t b = 0; b < full; b += FC_LANES)
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 2; e++) {
                FC_PRAGMA(omp simd)
                for (int q = 0; q < 8; q++) {
                    const double w = fc_w_of_f32bits(fc_f32_bits(f[b + 16 * h + 2 * q + e]));
                    s[8 * (2 * h + e) + q] += w * w;
                }
            }
    for (int64_t I = full > 0 ? full : 0; I < len; I++) {
        const double w = fc_w_of_f32bits(fc_f32_bits(f[I]));
        s[off + I - nb] += w * w;
    }
}
static double fc_ssqw_f16_lanes(const void *p, int64_t n) {
    double s[FC_LANES] = {0.0};
    FC_F16_BLOCKS(p, n, { fc_ssqw_f32bits_acc(buf, len, b_, n, s); });
    return fc_lanes_sum(s);
}

typedef void (*fc_ssq_fn)(const void *, int64_t, double *, double *);
typedef double (*fc_ssqw_fn)(const void *, int64_t);
static fc_ssq_fn fc_ssq_f32_impl = fc_ssq_f32;
static fc_ssqw_fn fc_ssqw_bf16_impl = fc_ssqw_bf16_lanes, fc_ssqw_f16_impl = fc_ssqw_f16_lanes;
static const char *fc_ssq_path = "lane loops (target clones)";
static const char *fc_scale_path = "checked lane loops (target clones)";

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(FUSEDCLIP_NO_CLONES)
#if FC_LANES != 32
#error "the AVX-512 loops assume 32 lanes"
#endif
#define FC_V4 __attribute__((target("arch=x86-64-v4")))
/* the 4 accumulators of the AVX-512 sums, as FC_LANE_LOOP's 32 lanes */
#define FC_W_STORE_LANES(s, a0, a1, a2, a3) do {                                    \
        _mm512_storeu_pd(s, a0); _mm512_storeu_pd(s + 8, a1);                        \
        _mm512_storeu_pd(s + 16, a2); _mm512_storeu_pd(s + 24, a3); } while (0)
/* float32: GCC's code for the lane loop loads 64 bytes and extracts the
 * upper half before converting (an extra shuffle per 16 elements);
 * converting straight from 32-byte loads is faster.  Same lanes, FMAs and
 * fold as FC_LANE_LOOP, so the same bits. */
FC_V4 static void fc_ssq_f32_v4(const void *p, int64_t n, double *ss, double *mx) {
    const float *restrict x = (const float *)p;
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t nb = n - n % FC_LANES;
    FC_FOR_BLOCKS(x, n, nb, b, 0, {
                const __m512d v0 = _mm512_cvtps_pd(_mm256_loadu_ps(x + b));
        const __m512d v1 = _mm512_cvtps_pd(_mm256_loadu_ps(x + b + 8));
        const __m512d v2 = _mm512_cvtps_pd(_mm256_loadu_ps(x + b + 16));
        const __m512d v3 = _mm512_cvtps_pd(_mm256_loadu_ps(x + b + 24));
        a0 = _mm512_fmadd_pd(v0, v0, a0); a1 = _mm512_fmadd_pd(v1, v1, a1);
        a2 = _mm512_fmadd_pd(v2, v2, a2); a3 = _mm512_fmadd_pd(v3, v3, a3);
    });
    double s[FC_LANES];
    FC_W_STORE_LANES(s, a0, a1, a2, a3);
    for (int64_t I = nb; I < n; I++) { const double v = x[I]; s[I - nb] = __builtin_fma(v, v, s[I - nb]); }
    *ss = fc_lanes_sum(s); *mx = 0.0;
}
/* (t & mask) | FC_W_BIAS in one vpternlogq, as float64 */
#define FC_W_V4(t) _mm512_castsi512_pd(_mm512_ternarylogic_epi64((t), mask, bias, 0xea))
/* The 16-bit sums of squares: LOAD4 gives block b's 4 vectors of 64-bit
 * words, each holding a value's |float32 bits| at bit 29 (and others, which
 * MASK drops); TAILW is one tail element's lane value. */
#define FC_SSQW_V4(SFX, MASK, LOAD4, TAILW)                                         \
FC_V4 static double fc_ssqw_##SFX##_v4(const void *p, int64_t n) {                  \
    const uint16_t *restrict x = (const uint16_t *)p;                                \
    const __m512i mask = _mm512_set1_epi64((long long)(MASK));                       \
    const __m512i bias = _mm512_set1_epi64((long long)FC_W_BIAS);                    \
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;                     \
    const int64_t nb = n - n % FC_LANES;                                             \
    FC_FOR_BLOCKS(x, n, nb, b, 0, {                                                  \
        __m512i t0, t1, t2, t3;                                                      \
        LOAD4(x + b, t0, t1, t2, t3);                                                \
        const __m512d w0 = FC_W_V4(t0), w1 = FC_W_V4(t1);                            \
        const __m512d w2 = FC_W_V4(t2), w3 = FC_W_V4(t3);                            \
        a0 = _mm512_fmadd_pd(w0, w0, a0); a1 = _mm512_fmadd_pd(w1, w1, a1);          \
        a2 = _mm512_fmadd_pd(w2, w2, a2); a3 = _mm512_fmadd_pd(w3, w3, a3);          \
    });                                                                              \
    double s[FC_LANES];                                                              \
    FC_W_STORE_LANES(s, a0, a1, a2, a3);                                             \
    for (int64_t I = nb; I < n; I++) { const double w = TAILW(x[I]); s[I - nb] += w * w; } \
    return fc_lanes_sum(s);                                                          \
}
/* bfloat16: 4 per word; position k's 16 bits shifted to bit 45 (= float32
 * bits << 29).  One load, not one per shift (GCC folds it into each shift:
 * a split line each when unaligned), hence the empty asm. */
#define FC_LOAD4_BF16(q, t0, t1, t2, t3) do {                                       \
        __m512i v_ = _mm512_loadu_si512((const void *)(q));                          \
        __asm__("" : "+v"(v_));                                                      \
        t0 = _mm512_slli_epi64(v_, 45); t1 = _mm512_slli_epi64(v_, 29);              \
        t2 = _mm512_slli_epi64(v_, 13); t3 = _mm512_srli_epi64(v_, 3); } while (0)
/* float16: converted exactly to float32, 2 per word */
#define FC_LOAD4_F16(q, t0, t1, t2, t3) do {                                        \
        const __m512i f0_ = _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(q)))); \
        const __m512i f1_ = _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((q) + 16)))); \
        t0 = _mm512_slli_epi64(f0_, 29); t1 = _mm512_srli_epi64(f0_, 3);             \
        t2 = _mm512_slli_epi64(f1_, 29); t3 = _mm512_srli_epi64(f1_, 3); } while (0)
#define FC_TAILW_BF16(h) fc_w_of_f32bits((uint32_t)(h) << 16)
#define FC_TAILW_F16(h) fc_w_of_f32bits(fc_f32_bits(_cvtsh_ss(h)))
FC_SSQW_V4(bf16, FC_WB_MASK, FC_LOAD4_BF16, FC_TAILW_BF16)
FC_SSQW_V4(f16, FC_W_MASK, FC_LOAD4_F16, FC_TAILW_F16)
/* The AVX-512 scale loops: the fast products and their proofs on mask
 * registers, 32 lanes at a time; 32 lanes with an unproven one (rare) are
 * done on the exact path from the inputs, still in memory (nothing is
 * stored before the check).  bfloat16 and float16 use cheaper proofs than
 * the generic loops (below); float32 the same one, its tiny test moved to
 * the input. */
/* bfloat16, 32 lanes in 17 instructions: the words unpacked under zeros are
 * the float32 values (in an order within 128-bit lanes that the final
 * permute undoes); q = x*c, one product (8 x 24 bits, rounded once) is within
 * 1.5 float32 ulps of x*s (|s - c| <= 2^-24 c), so it is proven outside
 * +-2 ulps of a bfloat16 midpoint (the x*c + x*d of the generic loop needs
 * +-1, at one FMA and a sign fix more per 16 lanes); there, q + 0x8000's
 * high half is the correctly rounded value (no tie), and its low half is in
 * [0xfffe, 0x0002] exactly where q is not proven.  A zero keeps its sign
 * (c > 0); an inf/NaN x (its exponent all ones) is not proven. */
FC_V4 static void fc_scale_bf16_v4(uint16_t *restrict x, int64_t n, float cf, float df, double s) {
    (void)df;
    const __m512 c = _mm512_set1_ps(cf);
    const __m512i zero = _mm512_setzero_si512(), half = _mm512_set1_epi32(0x8000);
    const __m512i two = _mm512_set1_epi16(2), four = _mm512_set1_epi16(4);
    const __m512i expo = _mm512_set1_epi16(0x7f80);
    uint16_t ih[32], il[32];
    for (int i = 0; i < 32; i++) {  /* output i = 8k + r: from lo's dword 4k + r, or hi's 4k + r - 4 */
        const int k = i / 8, r = i % 8, word = r < 4 ? 2 * (4 * k + r) : 32 + 2 * (4 * k + r - 4);
        il[i] = (uint16_t)word;
        ih[i] = (uint16_t)(word + 1);
    }
    const __m512i idx_hi = _mm512_loadu_si512(ih), idx_lo = _mm512_loadu_si512(il);
    const int64_t nb = n - n % 32;
    FC_FOR_STEPS(x, n, nb, b, 1, 32, {
        const __m512i v = _mm512_loadu_si512((const void *)(x + b));
        const __m512i w0 = _mm512_add_epi32(_mm512_castps_si512(
            _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, v)), c)), half);
        const __m512i w1 = _mm512_add_epi32(_mm512_castps_si512(
            _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, v)), c)), half);
        const __m512i lows = _mm512_permutex2var_epi16(w0, idx_lo, w1);
        const __mmask32 k = _mm512_cmple_epu16_mask(_mm512_add_epi16(lows, two), four)
                          | _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, expo), expo);
        if (__builtin_expect(k != 0, 0)) {
            for (int j = 0; j < 32; j++) x[b + j] = fc_scale_exact_bf16(x[b + j], s);
        } else {
            _mm512_storeu_si512((void *)(x + b), _mm512_permutex2var_epi16(w0, idx_hi, w1));
        }
    });
    for (int64_t i = nb; i < n; i++) x[i] = fc_scale_exact_bf16(x[i], s);
}
/* float16: q = x*c, within 1.5 float32 ulps of x*s (as for bfloat16); it
 * is proven where q's neighbours 4 ulps away on either side, qa and qb,
 * round to the same float16 (rounding is monotonic, so all between does,
 * x*s included).  Below float32's normal range the ulps are coarser than
 * 2^-21 |q|, but everything there rounds to a zero of x's sign.  inf and
 * NaN stay what they are.  Three conversions and three products per 16
 * lanes, against the exponent-dependent window of fc_unproven_f16; a group
 * with an unproven lane (~5 % for an arbitrary s, 80 % at s = 0.7) runs the
 * exact path vectorised (fc_v4_scale_rto). */
#define FC_F16_RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
/* fc_f32_rto(fc_mul_rto(x, s)) on 8 lanes: x*s rounded to odd at float64,
 * then at float32 precision (the exact path, vectorised: a float16 group
 * with an unproven lane costs ~30 instructions per 8 lanes, not a scalar
 * loop; decimal scales such as 0.7 put many products on float16 midpoints) */
FC_V4 static inline __m256 fc_v4_scale_rto(__m256 x8, __m512d sv) {
    const __m512i one = _mm512_set1_epi64(1);
    const __m512d xd = _mm512_cvtps_pd(x8), p = _mm512_mul_pd(xd, sv);
    const __m512d e = _mm512_fmsub_pd(xd, sv, p);                   /* the product's exact error */
    __m512i b = _mm512_castpd_si512(p);
    const __mmask8 odd1 = _mm512_cmp_pd_mask(e, _mm512_setzero_pd(), _CMP_NEQ_OQ)
                        & _mm512_testn_epi64_mask(b, one);          /* inexact, last bit even */
    const __mmask8 apart = _mm512_movepi64_mask(_mm512_xor_si512(b, _mm512_castpd_si512(e)));
    b = _mm512_mask_add_epi64(b, odd1 & (__mmask8)~apart, b, one);  /* toward x*s */
    b = _mm512_mask_sub_epi64(b, odd1 & apart, b, one);
    const __m512d d = _mm512_castsi512_pd(b);
    const __m256 f = _mm512_cvtpd_ps(d);
    const __m512d back = _mm512_cvtps_pd(f);
    const __m256i one32 = _mm256_set1_epi32(1);
    __m256i fb = _mm256_castps_si256(f);
    const __mmask8 odd2 = _mm512_cmp_pd_mask(back, d, _CMP_NEQ_OQ) & _mm256_testn_epi32_mask(fb, one32);
    const __mmask8 down = _mm512_cmp_pd_mask(_mm512_abs_pd(back), _mm512_abs_pd(d), _CMP_GT_OQ);
    fb = _mm256_mask_add_epi32(fb, odd2 & (__mmask8)~down, fb, one32);
    fb = _mm256_mask_sub_epi32(fb, odd2 & down, fb, one32);
    return _mm256_castsi256_ps(fb);
}
FC_V4 static void fc_scale_f16_v4(uint16_t *restrict x, int64_t n, float cf, float df, double s) {
    (void)df;
    const __m512d sv = _mm512_set1_pd(s);
    const __m512 c = _mm512_set1_ps(cf), up = _mm512_set1_ps(1.0f + 0x1p-21f),
                 down = _mm512_set1_ps(1.0f - 0x1p-21f);
    const int64_t nb = n - n % 32;
    FC_FOR_STEPS(x, n, nb, b, 1, 32, {
        const __m512 q0 = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + b))), c);
        const __m512 q1 = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + b + 16))), c);
        const __m256i r0 = _mm512_cvtps_ph(q0, FC_F16_RNE), r1 = _mm512_cvtps_ph(q1, FC_F16_RNE);
        const __mmask16 k =
            _mm256_cmpneq_epi16_mask(_mm512_cvtps_ph(_mm512_mul_ps(q0, up), FC_F16_RNE),
                                     _mm512_cvtps_ph(_mm512_mul_ps(q0, down), FC_F16_RNE))
          | _mm256_cmpneq_epi16_mask(_mm512_cvtps_ph(_mm512_mul_ps(q1, up), FC_F16_RNE),
                                     _mm512_cvtps_ph(_mm512_mul_ps(q1, down), FC_F16_RNE));
        if (__builtin_expect(k != 0, 0)) {
            for (int j = 0; j < 32; j += 8) {
                const __m256 f = fc_v4_scale_rto(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + b + j))), sv);
                _mm_storeu_si128((__m128i *)(x + b + j), _mm256_cvtps_ph(f, FC_F16_RNE));
            }
        } else {
            _mm256_storeu_si256((__m256i *)(x + b), r0);
            _mm256_storeu_si256((__m256i *)(x + b + 16), r1);
        }
    });
    for (int64_t i = nb; i < n; i++) x[i] = fc_scale_exact_f16(x[i], s);
}
#undef FC_F16_RNE
#define FC_MID_(q) _mm512_cmpeq_epi64_mask(_mm512_and_si512(_mm512_castpd_si512(q), m29), h29)
FC_V4 static void fc_scale_f32_v4(float *restrict x, int64_t n, double s) {
    const __m512d sv = _mm512_set1_pd(s);
    const __m512i m29 = _mm512_set1_epi64(0x1fffffff), h29 = _mm512_set1_epi64(0x10000000);
    const double t = 0x1p-125 / fabs(s) * (1.0 + 0x1p-20);
    const float tf = t < 3e38 ? (float)t * (1.0f + 0x1p-20f) : INFINITY;  /* rounded up */
    const __m512i tb = _mm512_set1_epi32((int)(fc_f32_bits(tf) - 1u)), one = _mm512_set1_epi32(1);
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    const int64_t nb = n - n % 32;
    FC_FOR_STEPS(x, n, nb, b, 1, 32, {
        const __m512 v0 = _mm512_loadu_ps(x + b), v1 = _mm512_loadu_ps(x + b + 16);
        __mmask16 kt = _mm512_cmplt_epu32_mask(_mm512_sub_epi32(_mm512_and_si512(
                           _mm512_castps_si512(v0), absm), one), tb)
                     | _mm512_cmplt_epu32_mask(_mm512_sub_epi32(_mm512_and_si512(
                           _mm512_castps_si512(v1), absm), one), tb);
        const __m512d q0 = _mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v0)), sv);
        const __m512d q1 = _mm512_mul_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v0, 1)), sv);
        const __m512d q2 = _mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v1)), sv);
        const __m512d q3 = _mm512_mul_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v1, 1)), sv);
        const __mmask8 km = FC_MID_(q0) | FC_MID_(q1) | FC_MID_(q2) | FC_MID_(q3);
        if (__builtin_expect((kt | km) != 0, 0)) {
            for (int j = 0; j < 32; j++) x[b + j] = fc_scale_exact_f32(x[b + j], s);
        } else {
            _mm256_storeu_ps(x + b, _mm512_cvtpd_ps(q0));
            _mm256_storeu_ps(x + b + 8, _mm512_cvtpd_ps(q1));
            _mm256_storeu_ps(x + b + 16, _mm512_cvtpd_ps(q2));
            _mm256_storeu_ps(x + b + 24, _mm512_cvtpd_ps(q3));
        }
    });
    for (int64_t i = nb; i < n; i++) x[i] = fc_scale_exact_f32(x[i], s);
}
#undef FC_MID_
__attribute__((constructor)) static void fc_pick_ssq(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) {  /* the clone the ifunc resolver picks too */
        fc_ssq_f32_impl = fc_ssq_f32_v4;
        fc_ssqw_bf16_impl = fc_ssqw_bf16_v4;
        fc_ssqw_f16_impl = fc_ssqw_f16_v4;
        if (!getenv("FUSEDCLIP_GENERIC_SCALE")) {  /* (tests: the generic loops on this CPU too) */
            fc_scale_f32_fast = fc_scale_f32_v4;
            fc_scale_bf16_fast = fc_scale_bf16_v4;
            fc_scale_f16_fast = fc_scale_f16_v4;
            fc_scale_path = "AVX-512 intrinsics";
        }
        fc_ssq_path = "AVX-512 intrinsics";
    }
}
#endif
static void fc_ssq_f32_pick(const void *p, int64_t n, double *ss, double *mx) { fc_ssq_f32_impl(p, n, ss, mx); }
/* bfloat16: a chunk of tiny values (see above) is summed by widening */
static void fc_ssq_bf16_pick(const void *p, int64_t n, double *ss, double *mx) {
    const double sw = fc_ssqw_bf16_impl(p, n);
    if (sw < (double)n * 0x1p-970 && sw != (double)n * 0x1p-1022) fc_ssq_bf16(p, n, ss, mx);
    else { *ss = fc_w_finish(sw, n); *mx = 0.0; }
}
static void fc_ssq_f16_pick(const void *p, int64_t n, double *ss, double *mx) {
    *ss = fc_w_finish(fc_ssqw_f16_impl(p, n), n); *mx = 0.0;
}

static double fc_asum_f16b(const void *p, int64_t n) {
    double s = 0.0;
    FC_F16_BLOCKS(p, n, { s += fc_asum_f32(buf, len); });
    return s;
}
static void fc_amax_f16b(const void *p, int64_t n, double *mx, double *z) {
    double m = 0.0, zz = 0.0, bm, bz;
    FC_F16_BLOCKS(p, n, { fc_amax_f32(buf, len, &bm, &bz); m = bm > m ? bm : m; zz += bz; });
    *mx = m; *z = zz;
}
/* float16: q = x*c + x*d in float32 as for bfloat16 (within 1 ulp of the
 * exact product), unproven within 1 ulp of a float16 midpoint: for a normal
 * float16 result its 13 low bits are 0x1000, for a subnormal one (q below
 * 2^-14) its k = 126 - exponent low bits are 1 << (k - 1); below 2^-24 (a
 * result of 0 or 2^-24) every nonzero q; and inf or NaN */
static inline int32_t fc_unproven_f16(float q) {
    const uint32_t w = fc_f32_bits(q) & 0x7fffffffu;
    const int32_t e = (int32_t)(w >> 23);                             /* biased exponent */
    const int32_t k = 126 - e < 13 ? 13 : (126 - e > 23 ? 23 : 126 - e);  /* bits dropped */
    const uint32_t mask = (1u << k) - 1u, half = (mask >> 1) + 1u;
    return (int32_t)((w & mask) - (half - 1u) <= 2u) | ((int32_t)(e < 103) & (int32_t)(w != 0u))
         | (int32_t)(w >= 0x7f800000u);
}
/* q = x*c + x*d over a block of floats; grp[k]: an unproven lane among the FC_SCALE_GROUP of
 * group k; returns whether there is one */
FC_CLONES static int32_t fc_scalef_checked(const float *restrict x, float *restrict q,
                                           int32_t *restrict grp, int64_t n, float c, float d) {
    int32_t any = 0;
    for (int64_t g = 0; g < n; g += FC_SCALE_GROUP) {
        const int64_t e = g + FC_SCALE_GROUP < n ? g + FC_SCALE_GROUP : n;
        int32_t a = 0;
        FC_PRAGMA(omp simd reduction(|:a))
        for (int64_t i = g; i < e; i++) {
            q[i] = __builtin_copysignf(__builtin_fmaf(x[i], c, x[i] * d), x[i]);  /* -0 stays -0 */
            a |= fc_unproven_f16(q[i]);
        }
        grp[g / FC_SCALE_GROUP] = a;
        any |= a;
    }
    return any;
}
/* q = x*s rounded to odd at float32 precision (exactly: the float64 product
 * rounded to odd first), over n floats: one rounding to float16 from there is
 * the correct one */
FC_CLONES static void fc_scalef_rto(const float *restrict x, float *restrict q, int64_t n, double s) {
    FC_PRAGMA(omp simd)
    for (int64_t i = 0; i < n; i++) q[i] = fc_f32_rto(fc_mul_rto((double)x[i], s));
}
static void fc_scale_f16b(void *p, int64_t n, double s) {
    uint16_t *x = (uint16_t *)p;
    if (fc_scale_trivial(s)) {
        FC_F16_BLOCKS(p, n, { fc_scalef(buf, len, (float)s); fc_f2h(buf, blk, len); });
        return;
    }
    if (!fc_scale_f32_fast_ok(s)) {  /* s below float32's normal range, or above 1: all exact */
        for (int64_t i = 0; i < n; i++) x[i] = fc_scale_exact_f16(x[i], s);
        return;
    }
    const float c = (float)s, d = (float)(s - (double)c);
    if (fc_scale_f16_fast) { fc_scale_f16_fast(x, n, c, d, s); return; }
    FC_F16_BLOCKS(p, n, {
        float q[FC_HBLK];
        int32_t grp[FC_HBLK / FC_SCALE_GROUP];
        if (fc_scalef_checked(buf, q, grp, len, c, d))  /* a group with an unproven lane: exactly */
            for (int64_t g = 0; g < len; g += FC_SCALE_GROUP)
                if (grp[g / FC_SCALE_GROUP])
                    fc_scalef_rto(buf + g, q + g, len - g < FC_SCALE_GROUP ? len - g : FC_SCALE_GROUP, s);
        fc_f2h(q, blk, len);
    });
}
static void fc_clamp_f16b(void *p, int64_t n, double c) {
    FC_F16_BLOCKS(p, n, { fc_clamp_f32(buf, len, c); fc_f2h(buf, blk, len); });
}

/* ------------------------------------------------------ per-dtype vtable */
typedef struct {
    void   (*ssq)(const void *, int64_t, double *, double *);
    double (*asum)(const void *, int64_t);
    void   (*amax)(const void *, int64_t, double *, double *);
    double (*psum)(const void *, int64_t, double, double);
    int    (*classify)(const void *, int64_t, double *);
    void   (*scale)(void *, int64_t, double);
    void   (*clamp)(void *, int64_t, double);
    int    itemsize;
    int    is_f64;          /* only float64 squares can leave float64's range */
} fc_ops;

#define FC_OPS_ROW(SFX, T, F64) \
    { fc_ssq_##SFX, fc_asum_##SFX, fc_amax_##SFX, fc_psum_##SFX, fc_classify_##SFX, \
      fc_scale_##SFX, fc_clamp_##SFX, (int)sizeof(T), F64 }

static const fc_ops FC_OPS[FC_NDTYPES] = {
    FC_OPS_ROW(f64, double, 1),
    { fc_ssq_f32_pick, fc_asum_f32, fc_amax_f32, fc_psum_f32, fc_classify_f32,
      fc_scale_f32, fc_clamp_f32, 4, 0 },
    { fc_ssq_bf16_pick, fc_asum_bf16, fc_amax_bf16, fc_psum_bf16, fc_classify_bf16,
      fc_scale_bf16, fc_clamp_bf16, 2, 0 },
    { fc_ssq_f16_pick, fc_asum_f16b, fc_amax_f16b, fc_psum_f16, fc_classify_f16,
      fc_scale_f16b, fc_clamp_f16b, 2, 0 },   /* float16: blocks of float, see above */
};

/* ------------------------------------------------- the chunk table */

/* The one chunk-table builder (kernels.cpu.Table, the C API, and through
 * kernels.cpu.chunk_rows the CUDA engine's table): row `row`, `size`
 * elements of dtype `code` at `ptr`, cut into chunks of at most `chunk`
 * elements, in order, written to `out` (which holds
 * fc_row_chunks_of(size, chunk) entries; a row with no elements gets none).
 * Returns the number written.  The CPU tables use FC_CHUNK. */
static inline int64_t fc_row_chunks_of(int64_t size, int64_t chunk) { return (size + chunk - 1) / chunk; }

static inline int64_t fc_cut_row_by(fc_chunk *out, char *ptr, int64_t size, int code, int32_t row,
                                    int64_t chunk)
{
    const int64_t item = FC_OPS[code].itemsize;
    int64_t k = 0;
    for (int64_t off = 0; off < size; off += chunk, k++) {
        out[k].ptr = ptr + off * item;
        out[k].n = size - off < chunk ? size - off : chunk;
        out[k].dtype = (int32_t)code;
        out[k].buf = row;
    }
    return k;
}

static inline int64_t fc_row_chunks(int64_t size) { return fc_row_chunks_of(size, FC_CHUNK); }

static inline int64_t fc_cut_row(fc_chunk *out, char *ptr, int64_t size, int code, int32_t row)
{
    return fc_cut_row_by(out, ptr, size, code, row, FC_CHUNK);
}

static inline int fc_itemsize(int code) { return FC_OPS[code].itemsize; }

/* ------------------------------------------------- one chunk, one partial */

/* Reduce one chunk for norm `kind` (p is used by FC_NORM_P).  The common
 * case is a single vectorised pass; the scaled and classifying passes run
 * only on chunks whose fast result is not finite or has lost range. */
static inline void fc_reduce_chunk(const fc_chunk *c, int kind, double p, fc_partial *out)
{
    const fc_ops *op = &FC_OPS[c->dtype];
    double s = 0.0, m = 0.0, z = 0.0, fmax = 0.0, scale = 1.0;
    int flags = 0;

    switch (kind) {
    case FC_NORM_2:
        op->ssq(c->ptr, c->n, &s, &m);
        if (!isfinite(s)) {
            flags = op->classify(c->ptr, c->n, &fmax);
            if (!flags) { scale = fmax; s = op->psum(c->ptr, c->n, 2.0, scale); }
        } else if (op->is_f64 && m > 0.0 && m < 0x1p-400) {
            /* squares below 2^-1022 would lose precision: rescale */
            scale = m;
            s = op->psum(c->ptr, c->n, 2.0, scale);
        }
        break;
    case FC_NORM_1:
        s = op->asum(c->ptr, c->n);
        if (!isfinite(s)) {
            flags = op->classify(c->ptr, c->n, &fmax);
            if (!flags) { scale = fmax; s = op->psum(c->ptr, c->n, 1.0, scale); }
        }
        break;
    case FC_NORM_INF:
        op->amax(c->ptr, c->n, &s, &z);
        if (z != 0.0) flags = op->classify(c->ptr, c->n, &fmax);
        break;
    default: /* general p: relative to the max, so no p can overflow or underflow */
        op->amax(c->ptr, c->n, &m, &z);
        if (z != 0.0) {
            flags = op->classify(c->ptr, c->n, &fmax);
        } else if (m > 0.0) {
            scale = m;
            s = op->psum(c->ptr, c->n, p, scale);
        }
        break;
    }
    out->s = flags ? 0.0 : s;
    out->m = flags ? 1.0 : scale;
    out->flags = flags;
    out->pad = 0;
}

/* A partial as (s, m) with s in [1, n] or s == 0: the plain L1/L2 partials
 * (m == 1) become (1, s^(1/p)), the chunk's own norm, so that no partial's
 * value is held in s, where a sum of them can overflow. */
static inline void fc_rel_partial(const fc_partial *q, int kind, double *s, double *m) {
    if (q->m == 1.0 && q->s > 0.0 && (kind == FC_NORM_2 || kind == FC_NORM_1)) {
        *s = 1.0;
        *m = kind == FC_NORM_2 ? sqrt(q->s) : q->s;
    } else {
        *s = q->s;
        *m = q->m;
    }
}

/* Combine partials in chunk order (deterministic for any thread count) into
 * (big, t) with norm = big * t^(1/p) (t^(1/2) = sqrt(t); for the inf-norm
 * t = 1).  Returns the OR of the chunk flags; with flags set, big and t are
 * meaningless.
 *
 * The common case (L1/L2, no chunk scaled) is the plain sum, big = 1.
 * Otherwise, and whenever that sum overflows although every partial is
 * finite (finite values whose total leaves float64's range), the partials
 * are combined relative to big, the largest m: t = sum s (m/big)^p.  Every
 * ratio is <= 1 and the partial holding big adds s >= 1, so t lies in
 * [1, n]: the pair is finite for every finite input, even where the norm
 * itself is beyond float64 (then fc_combine returns inf, but a clip scale
 * computed as (v / big) / t^(1/p) is still right). */
static inline int fc_combine_rel(const fc_partial *part, int64_t n, int kind, double p,
                                 double *big_out, double *t_out)
{
    int f = 0, scaled = 0;
    for (int64_t i = 0; i < n; i++) {
        f |= part[i].flags;
        scaled |= part[i].s > 0.0 && part[i].m != 1.0;
    }
    *big_out = 1.0; *t_out = 0.0;
    if (f) return f;
    if (kind == FC_NORM_INF) {
        double m = 0.0;
        for (int64_t i = 0; i < n; i++) m = part[i].s > m ? part[i].s : m;
        *big_out = m; *t_out = m > 0.0 ? 1.0 : 0.0;
        return 0;
    }
    if (!scaled && kind != FC_NORM_P) {                 /* the common case */
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += part[i].s;
        *t_out = s;
        if (s < INFINITY) return 0;
        /* only the total overflowed: combine relative to the largest chunk */
    }
    const double pw = kind == FC_NORM_2 ? 2.0 : kind == FC_NORM_1 ? 1.0 : p;
    double big = 0.0, s, m;
    for (int64_t i = 0; i < n; i++) {
        fc_rel_partial(&part[i], kind, &s, &m);
        if (s > 0.0 && m > big) big = m;
    }
    double t = 0.0;
    if (big > 0.0) {
        for (int64_t i = 0; i < n; i++) {
            fc_rel_partial(&part[i], kind, &s, &m);
            if (s > 0.0) {
                const double r = m / big;
                t += s * (pw == 2.0 ? r * r : pw == 1.0 ? r : pow(r, pw));
            }
        }
    }
    *big_out = big > 0.0 ? big : 1.0; *t_out = t;
    return 0;
}

static inline double fc_root(double t, int kind, double p) {
    return kind == FC_NORM_2 ? sqrt(t) : (kind == FC_NORM_1 || kind == FC_NORM_INF) ? t : pow(t, 1.0 / p);
}

/* The norm from the partials; *flags gets the OR of the chunk flags.  A
 * non-finite input gives NaN if any NaN was seen, else inf.  A finite input
 * gives a finite, correct norm whenever the norm is within float64's range. */
static inline double fc_combine(const fc_partial *part, int64_t n, int kind, double p, int *flags)
{
    double big, t;
    const int f = fc_combine_rel(part, n, kind, p, &big, &t);
    *flags = f;
    if (f & FC_HAS_NAN) return NAN;
    if (f & FC_HAS_INF) return INFINITY;
    return big * fc_root(t, kind, p);
}

/* The clip scale v / norm, also where the norm overflowed (finite data whose
 * norm is beyond float64): (v / big) / t^(1/p), finite and > 0 then. */
static inline double fc_clip_scale(const fc_partial *part, int64_t n, int kind, double p, double v)
{
    double big, t;
    fc_combine_rel(part, n, kind, p, &big, &t);
    return (v / big) / fc_root(t, kind, p);
}

/* Prefetching across chunks, called by the table loops before chunk i:
 *  - small buffers live far apart, where the hardware prefetcher cannot
 *    follow: fetch the first lines of the chunk `ahead` rows ahead;
 *  - the loops' own prefetch runs on into the next chunk (fc_pf_next), so
 *    one thread's stream continues across chunks and buffers.  (Measured,
 *    and left out: prefetching small chunks further ahead, with write
 *    intent for the write loops, and walking the writes in reverse order;
 *    none was faster on 10,000 buffers of 1 KB.) */
static inline void fc_prefetch_chunks(const fc_chunk *c, int64_t i, int64_t n, int64_t ahead) {
    if (i + ahead < n) {
        const fc_chunk *a = &c[i + ahead];
        const int64_t bytes = a->n * FC_OPS[a->dtype].itemsize;
        const int64_t lim = bytes < 2048 ? bytes : 2048;
        for (int64_t b = 0; b < lim; b += 64) __builtin_prefetch(a->ptr + b, 0, 3);
    }
    fc_pf_next = i + 1 < n ? c[i + 1].ptr : c[i].ptr + c[i].n * FC_OPS[c[i].dtype].itemsize;
}

static inline void fc_scale_chunk(const fc_chunk *c, double s) { FC_OPS[c->dtype].scale(c->ptr, c->n, s); }
static inline void fc_clamp_chunk(const fc_chunk *c, double v) { FC_OPS[c->dtype].clamp(c->ptr, c->n, v); }
static inline void fc_zero_chunk(const fc_chunk *c) { memset(c->ptr, 0, (size_t)c->n * (size_t)FC_OPS[c->dtype].itemsize); }

#endif /* FUSEDCLIP_SIMD_H */
