/*
 * fusedclip CPU: the one parallel loop over a chunk table.
 *
 * Each thread owns a contiguous range of the chunks (a static split) and
 * takes them from its front; a thread whose range is empty steals a quarter
 * of what is left from the back of the fullest other range, until nothing
 * is left anywhere.  So:
 *   - when the threads run alike, every thread reads its own contiguous
 *     range, as a static schedule does (its prefetch stream never breaks, and
 *     a write pass after a reduction finds its range in its own cache);
 *   - when one runs late or slowly (a worker waking from sleep after the
 *     caller's single-threaded work, another process on its core: common on
 *     shared machines), the others take over its work, as a dynamic schedule
 *     does.  A static split made such calls 3.5x slower; a dynamic one cost
 *     the locality (8 % on 10,000 buffers of 1 KB).
 * Which thread computes a chunk never changes a result: each chunk writes
 * its own partial (or its own elements), and partials are combined in chunk
 * order.
 *
 * A range is one 64-bit word, front in the high half and back in the low
 * half, updated by compare-and-swap: the owner advances the front, thieves
 * lower the back, and neither can pass the other.
 */
#ifndef FUSEDCLIP_TABLELOOP_H
#define FUSEDCLIP_TABLELOOP_H

#include <stdint.h>
#include <stdlib.h>
#include "simd.h"
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

typedef struct {
    uint64_t word;          /* front << 32 | back */
    char     pad[56];       /* one range per cache line */
} fc_range;

/* The owner's claim: up to k chunks from the front. */
static inline int fc_take_front(fc_range *r, int64_t k, int64_t *lo, int64_t *hi) {
    uint64_t w = __atomic_load_n(&r->word, __ATOMIC_ACQUIRE);
    for (;;) {
        const uint64_t f = w >> 32, b = w & 0xffffffffu;
        if (f >= b) return 0;
        const uint64_t nf = f + (uint64_t)k < b ? f + (uint64_t)k : b;
        if (__atomic_compare_exchange_n(&r->word, &w, nf << 32 | b, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *lo = (int64_t)f; *hi = (int64_t)nf;
            return 1;
        }
    }
}

/* A thief's claim: a quarter of what is left (at least one chunk) from the back. */
static inline int fc_take_back(fc_range *r, int64_t *lo, int64_t *hi) {
    uint64_t w = __atomic_load_n(&r->word, __ATOMIC_ACQUIRE);
    for (;;) {
        const uint64_t f = w >> 32, b = w & 0xffffffffu;
        if (f >= b) return 0;
        const uint64_t nb = b - (b - f + 3) / 4;
        if (__atomic_compare_exchange_n(&r->word, &w, f << 32 | nb, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *lo = (int64_t)nb; *hi = (int64_t)b;
            return 1;
        }
    }
}

static inline int64_t fc_range_left(const fc_range *r) {
    const uint64_t w = __atomic_load_n(&r->word, __ATOMIC_ACQUIRE);
    const uint64_t f = w >> 32, b = w & 0xffffffffu;
    return f < b ? (int64_t)(b - f) : 0;
}

/* for (i = 0; i < n; i++) BODY, on `nthreads` threads when `par_`
 * (otherwise, or when the ranges cannot be allocated, on the calling thread,
 * in order).  n < 2^32.  BODY sees the chunk index i (int64_t).  (No macro
 * parameter may be named `parallel`: it would replace the word in the
 * pragma, which GCC then ignores, silently running one thread.) */
#define FC_FOR_CHUNKS(n, nthreads, par_, ...)                                       \
    do {                                                                            \
        const int64_t n_ = (n);                                                     \
        int nt_ = (par_) ? (nthreads) : 1;                                          \
        fc_range *rg_ = nt_ > 1 ? (fc_range *)aligned_alloc(64, sizeof(fc_range) * (size_t)nt_) : NULL; \
        if (!rg_) {                                                                 \
            for (int64_t i = 0; i < n_; i++) { __VA_ARGS__ }                        \
        } else {                                                                    \
            /* the ranges are set before the team starts: no barrier, so a late  \
             * thread delays nobody (its range is stolen meanwhile), and a team  \
             * smaller than asked for leaves ranges that are stolen whole */      \
            for (int u_ = 0; u_ < nt_; u_++) {                                      \
                const uint64_t f_ = (uint64_t)(n_ * u_ / nt_), b_ = (uint64_t)(n_ * (u_ + 1) / nt_); \
                __atomic_store_n(&rg_[u_].word, f_ << 32 | b_, __ATOMIC_RELAXED);   \
            }                                                                       \
            const int64_t k_ = n_ / nt_ / 32 > 1 ? n_ / nt_ / 32 : 1;               \
            FC_PRAGMA(omp parallel num_threads(nt_))                                \
            {                                                                       \
                const int t_ = omp_get_thread_num();                                \
                int64_t lo_, hi_;                                                   \
                while (t_ < nt_ && fc_take_front(&rg_[t_], k_, &lo_, &hi_))         \
                    for (int64_t i = lo_; i < hi_; i++) { __VA_ARGS__ }             \
                for (;;) {                                                          \
                    int v_ = -1;                                                    \
                    int64_t most_ = 0;                                              \
                    for (int u_ = 0; u_ < nt_; u_++) {                              \
                        const int64_t l_ = fc_range_left(&rg_[u_]);                 \
                        if (l_ > most_) { most_ = l_; v_ = u_; }                    \
                    }                                                               \
                    if (v_ < 0) break;                                              \
                    if (fc_take_back(&rg_[v_], &lo_, &hi_))                         \
                        for (int64_t i = lo_; i < hi_; i++) { __VA_ARGS__ }         \
                }                                                                   \
            }                                                                       \
            free(rg_);                                                              \
        }                                                                           \
    } while (0)

/* The three table loops (kernels/cpu.pyx calls them with the team size and
 * the serial/parallel decision already made). */
static void fc_table_reduce(const fc_chunk *c, int64_t n, int kind, double p, fc_partial *part,
                            int nthreads, int parallel) {
    FC_FOR_CHUNKS(n, nthreads, parallel, {
        fc_prefetch_chunks(c, i, n, 4);
        fc_reduce_chunk(&c[i], kind, p, &part[i]);
    });
}

enum { FC_OP_SCALE = 0, FC_OP_CLAMP = 1, FC_OP_ZERO = 2 };
/* Table.scale_rows's per-row actions (_policy's A_NONE, A_SCALE, A_ZERO) */
enum { FC_ROW_NONE = 0, FC_ROW_SCALE = 1, FC_ROW_ZERO = 2 };
static void fc_table_write(const fc_chunk *c, int64_t n, int op, double v, int nthreads, int parallel) {
    FC_FOR_CHUNKS(n, nthreads, parallel, {
        fc_prefetch_chunks(c, i, n, 4);
        if (op == FC_OP_SCALE) fc_scale_chunk(&c[i], v);
        else if (op == FC_OP_CLAMP) fc_clamp_chunk(&c[i], v);
        else fc_zero_chunk(&c[i]);
    });
}

/* Per-row writes: row r's chunks are scaled by scales[r] (FC_ROW_SCALE),
 * zeroed (FC_ROW_ZERO) or not touched at all (FC_ROW_NONE). */
static void fc_table_scale_rows(const fc_chunk *c, int64_t n, const int8_t *actions, const double *scales,
                                int nthreads, int parallel) {
    FC_FOR_CHUNKS(n, nthreads, parallel, {
        fc_prefetch_chunks(c, i, n, 4);
        const int a = actions[c[i].buf];
        if (a == FC_ROW_SCALE) fc_scale_chunk(&c[i], scales[c[i].buf]);
        else if (a == FC_ROW_ZERO) fc_zero_chunk(&c[i]);
    });
}

#endif /* FUSEDCLIP_TABLELOOP_H */
