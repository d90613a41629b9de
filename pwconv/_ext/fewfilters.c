/* Few-filter kernels.
 *
 * Channels-last input ("rows"): out[i, f] = sum_j x[i, j] * w[f, j]. A GEMM with few output
 * columns spends most of its time packing the input; these read each input row once,
 * straight from memory.
 * - Up to 4 filters, or up to 8 over 128+ channels ("dots"): vectorised dot products of a
 *   few rows at once with each filter, summed across lanes by folding the filters'
 *   accumulators into one vector; the rows are prefetched ahead.
 * - More filters, up to four vectors of them ("tiles"): the filters are transposed once per
 *   call into a small (C, K rounded up to whole vectors) table, and R rows are computed at
 *   once: for each channel j the R values x[i, j] are broadcast and multiplied into R x NV
 *   vector accumulators, NV vectors covering the K filters. No horizontal sums are needed.
 *
 * Channels-first input ("planes"): out[n, f, p] = sum_j w[f, j] * x[n, j, p]; see below.
 *
 * Each is compiled three times: AVX-512F (16 float32 a vector), AVX2+FMA (8) and plain C,
 * and the CPU picks at run time (use_instruction_set can pick a lower one). A row's or a
 * pixel's result does not depend on how the work is split into tiles, blocks or threads
 * (what is left over after the last whole tile runs the same sums in the same order).
 *
 * Optional: pwconv falls back to numpy/BLAS when this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PW_X86 1
#define PW_AVX2 __attribute__((target("avx2,fma")))
#define PW_AVX512 __attribute__((target("avx512f,fma")))
#else
#define PW_AVX2
#endif
#define PW_PLAIN

typedef float pw_vf __attribute__((vector_size(32), aligned(4)));
typedef double pw_vd __attribute__((vector_size(32), aligned(8)));
#ifdef PW_X86
typedef float pw_vf16 __attribute__((vector_size(64), aligned(4)));
typedef double pw_vd8 __attribute__((vector_size(64), aligned(8)));
#endif

/* Horizontal sums of 8 accumulators at once: pairs of vectors are folded into one, each
 * half of it the sum of one input's halves, until every filter has one lane (or VL / 8 lanes
 * are folded once more). PW_REDUCE_<type>(acc, out) stores the 8 totals. */
#if defined(__clang__)
#define PW_SHUFFLE(a, b, M, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#else
#define PW_SHUFFLE(a, b, M, ...) __builtin_shuffle((a), (b), (M){__VA_ARGS__})
#endif
typedef int pw_if8 __attribute__((vector_size(32)));
typedef long long pw_il4 __attribute__((vector_size(32)));
#ifdef PW_X86
typedef int pw_if16 __attribute__((vector_size(64)));
typedef long long pw_il8 __attribute__((vector_size(64)));
#endif
#define PW_FOLD_f32x8_4(a, b) (PW_SHUFFLE(a, b, pw_if8, 0, 1, 2, 3, 8, 9, 10, 11) + PW_SHUFFLE(a, b, pw_if8, 4, 5, 6, 7, 12, 13, 14, 15))
#define PW_FOLD_f32x8_2(a, b) (PW_SHUFFLE(a, b, pw_if8, 0, 1, 4, 5, 8, 9, 12, 13) + PW_SHUFFLE(a, b, pw_if8, 2, 3, 6, 7, 10, 11, 14, 15))
#define PW_FOLD_f32x8_1(a, b) (PW_SHUFFLE(a, b, pw_if8, 0, 2, 4, 6, 8, 10, 12, 14) + PW_SHUFFLE(a, b, pw_if8, 1, 3, 5, 7, 9, 11, 13, 15))
#define PW_REDUCE_f32x8(acc, out) \
    do { \
        __typeof__((acc)[0]) pw_r0_0 = PW_FOLD_f32x8_4((acc)[0], (acc)[1]); \
        __typeof__((acc)[0]) pw_r0_1 = PW_FOLD_f32x8_4((acc)[2], (acc)[3]); \
        __typeof__((acc)[0]) pw_r0_2 = PW_FOLD_f32x8_4((acc)[4], (acc)[5]); \
        __typeof__((acc)[0]) pw_r0_3 = PW_FOLD_f32x8_4((acc)[6], (acc)[7]); \
        __typeof__((acc)[0]) pw_r1_0 = PW_FOLD_f32x8_2(pw_r0_0, pw_r0_1); \
        __typeof__((acc)[0]) pw_r1_1 = PW_FOLD_f32x8_2(pw_r0_2, pw_r0_3); \
        __typeof__((acc)[0]) pw_r2_0 = PW_FOLD_f32x8_1(pw_r1_0, pw_r1_1); \
        for (int pw_f = 0; pw_f < 8; pw_f++) (out)[0 + pw_f] = pw_r2_0[pw_f]; \
    } while (0)
#define PW_FOLD_f64x4_2(a, b) (PW_SHUFFLE(a, b, pw_il4, 0, 1, 4, 5) + PW_SHUFFLE(a, b, pw_il4, 2, 3, 6, 7))
#define PW_FOLD_f64x4_1(a, b) (PW_SHUFFLE(a, b, pw_il4, 0, 2, 4, 6) + PW_SHUFFLE(a, b, pw_il4, 1, 3, 5, 7))
#define PW_REDUCE_f64x4(acc, out) \
    do { \
        __typeof__((acc)[0]) pw_r0_0 = PW_FOLD_f64x4_2((acc)[0], (acc)[1]); \
        __typeof__((acc)[0]) pw_r0_1 = PW_FOLD_f64x4_2((acc)[2], (acc)[3]); \
        __typeof__((acc)[0]) pw_r0_2 = PW_FOLD_f64x4_2((acc)[4], (acc)[5]); \
        __typeof__((acc)[0]) pw_r0_3 = PW_FOLD_f64x4_2((acc)[6], (acc)[7]); \
        __typeof__((acc)[0]) pw_r1_0 = PW_FOLD_f64x4_1(pw_r0_0, pw_r0_1); \
        __typeof__((acc)[0]) pw_r1_1 = PW_FOLD_f64x4_1(pw_r0_2, pw_r0_3); \
        for (int pw_f = 0; pw_f < 4; pw_f++) (out)[0 + pw_f] = pw_r1_0[pw_f]; \
        for (int pw_f = 0; pw_f < 4; pw_f++) (out)[4 + pw_f] = pw_r1_1[pw_f]; \
    } while (0)
#ifdef PW_X86
#define PW_FOLD_f32x16_8(a, b) (PW_SHUFFLE(a, b, pw_if16, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) + PW_SHUFFLE(a, b, pw_if16, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
#define PW_FOLD_f32x16_4(a, b) (PW_SHUFFLE(a, b, pw_if16, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) + PW_SHUFFLE(a, b, pw_if16, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31))
#define PW_FOLD_f32x16_2(a, b) (PW_SHUFFLE(a, b, pw_if16, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) + PW_SHUFFLE(a, b, pw_if16, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31))
#define PW_FOLD_f32x16_1(a, b) (PW_SHUFFLE(a, b, pw_if16, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) + PW_SHUFFLE(a, b, pw_if16, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31))
#define PW_REDUCE_f32x16(acc, out) \
    do { \
        __typeof__((acc)[0]) pw_r0_0 = PW_FOLD_f32x16_8((acc)[0], (acc)[1]); \
        __typeof__((acc)[0]) pw_r0_1 = PW_FOLD_f32x16_8((acc)[2], (acc)[3]); \
        __typeof__((acc)[0]) pw_r0_2 = PW_FOLD_f32x16_8((acc)[4], (acc)[5]); \
        __typeof__((acc)[0]) pw_r0_3 = PW_FOLD_f32x16_8((acc)[6], (acc)[7]); \
        __typeof__((acc)[0]) pw_r1_0 = PW_FOLD_f32x16_4(pw_r0_0, pw_r0_1); \
        __typeof__((acc)[0]) pw_r1_1 = PW_FOLD_f32x16_4(pw_r0_2, pw_r0_3); \
        __typeof__((acc)[0]) pw_r2_0 = PW_FOLD_f32x16_2(pw_r1_0, pw_r1_1); \
        __typeof__((acc)[0]) pw_last = PW_FOLD_f32x16_1(pw_r2_0, pw_r2_0); \
        for (int pw_f = 0; pw_f < 8; pw_f++) (out)[pw_f] = pw_last[pw_f]; \
    } while (0)
#endif
#ifdef PW_X86
#define PW_FOLD_f64x8_4(a, b) (PW_SHUFFLE(a, b, pw_il8, 0, 1, 2, 3, 8, 9, 10, 11) + PW_SHUFFLE(a, b, pw_il8, 4, 5, 6, 7, 12, 13, 14, 15))
#define PW_FOLD_f64x8_2(a, b) (PW_SHUFFLE(a, b, pw_il8, 0, 1, 4, 5, 8, 9, 12, 13) + PW_SHUFFLE(a, b, pw_il8, 2, 3, 6, 7, 10, 11, 14, 15))
#define PW_FOLD_f64x8_1(a, b) (PW_SHUFFLE(a, b, pw_il8, 0, 2, 4, 6, 8, 10, 12, 14) + PW_SHUFFLE(a, b, pw_il8, 1, 3, 5, 7, 9, 11, 13, 15))
#define PW_REDUCE_f64x8(acc, out) \
    do { \
        __typeof__((acc)[0]) pw_r0_0 = PW_FOLD_f64x8_4((acc)[0], (acc)[1]); \
        __typeof__((acc)[0]) pw_r0_1 = PW_FOLD_f64x8_4((acc)[2], (acc)[3]); \
        __typeof__((acc)[0]) pw_r0_2 = PW_FOLD_f64x8_4((acc)[4], (acc)[5]); \
        __typeof__((acc)[0]) pw_r0_3 = PW_FOLD_f64x8_4((acc)[6], (acc)[7]); \
        __typeof__((acc)[0]) pw_r1_0 = PW_FOLD_f64x8_2(pw_r0_0, pw_r0_1); \
        __typeof__((acc)[0]) pw_r1_1 = PW_FOLD_f64x8_2(pw_r0_2, pw_r0_3); \
        __typeof__((acc)[0]) pw_r2_0 = PW_FOLD_f64x8_1(pw_r1_0, pw_r1_1); \
        for (int pw_f = 0; pw_f < 8; pw_f++) (out)[0 + pw_f] = pw_r2_0[pw_f]; \
    } while (0)
#endif

/* KK filters (a compile-time constant, at most 8) at once over RR rows. Each filter keeps
 * U = 4 / KK (at least 1) vector accumulators a row, so at least four independent chains of
 * multiply-adds hide their latency; each row vector is loaded once for all filters, and each
 * filter vector once for all RR rows. A row's sums do not depend on RR. */
#define PW_DEFINE_BLOCK(FN, ATTR, T, V, VL, KK, RR, SUFFIX)                               \
    static inline __attribute__((always_inline)) ATTR void FN(                             \
        const T *restrict x, const T *restrict w, T *restrict out, Py_ssize_t c,           \
        Py_ssize_t k) {                                                                   \
        enum { U = (KK >= 4) ? 1 : 4 / KK };                                              \
        V acc[RR][KK][U];                                                                 \
        for (int r = 0; r < RR; r++)                                                      \
            for (int f = 0; f < KK; f++)                                                  \
                for (int u = 0; u < U; u++) acc[r][f][u] = (V){0};                        \
        Py_ssize_t body = c - c % (VL * U);                                               \
        for (Py_ssize_t j = 0; j < body; j += VL * U) {                                   \
            for (int u = 0; u < U; u++) {                                                 \
                V xv[RR];                                                                 \
                for (int r = 0; r < RR; r++) xv[r] = *(const V *)(x + r * c + j + u * VL); \
                PW_ROW_PREFETCH(RR);                                                        \
                for (int f = 0; f < KK; f++) {                                            \
                    V wv = *(const V *)(w + f * c + j + u * VL);                          \
                    for (int r = 0; r < RR; r++) acc[r][f][u] += xv[r] * wv;              \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
        for (int r = 0; r < RR; r++) {                                                    \
            const T *row = x + r * c;                                                     \
            V totals[8];                                                                  \
            for (int f = 0; f < 8; f++) {                                                 \
                totals[f] = (V){0};                                                       \
                if (f < KK)                                                               \
                    for (int u = 0; u < U; u++) totals[f] += acc[r][f][u];                \
            }                                                                             \
            T sums[8];                                                                    \
            PW_REDUCE_##SUFFIX(totals, sums);                                             \
            for (int f = 0; f < KK; f++) {                                                \
                T sum = sums[f];                                                          \
                for (Py_ssize_t j = body; j < c; j++) sum += row[j] * w[f * c + j];       \
                out[r * k + f] = sum;                                                     \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \

/* R rows by NV vectors of filters; `wt` is the (c, NV * VL) transposed, zero-padded table.
 * Lanes past the k-th filter hold zeros and are not stored. */
#define PW_DEFINE_TILE(NAME, ATTR, T, V, VL, R, NV)                                              \
    static inline __attribute__((always_inline)) ATTR void NAME##_##R##x##NV(                     \
        const T *restrict x, const T *restrict wt, T *restrict out, Py_ssize_t c, Py_ssize_t k) { \
        V acc[R][NV];                                                                            \
        for (int r = 0; r < R; r++)                                                              \
            for (int v = 0; v < NV; v++) acc[r][v] = (V){0};                                     \
        for (Py_ssize_t j = 0; j < c; j++) {                                                     \
            const T *wj = wt + j * (NV * VL);                                                    \
            for (int r = 0; r < R; r++) {                                                        \
                T xr = x[r * c + j];                                                             \
                for (int v = 0; v < NV; v++) acc[r][v] += *(const V *)(wj + v * VL) * xr;        \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < R; r++) {                                                            \
            T *o = out + r * k;                                                                  \
            for (int v = 0; v < NV; v++) {                                                       \
                if ((v + 1) * VL <= k) {                                                         \
                    *(V *)(o + v * VL) = acc[r][v];                                              \
                } else {                                                                         \
                    for (Py_ssize_t l = 0; l < k - v * VL; l++) o[v * VL + l] = acc[r][v][l];    \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }

/* Whole tiles of R rows, then the rows left over one at a time (same sums, same order). */
#define PW_DEFINE_ROWS(NAME, ATTR, T, V, VL, R, NV)                                              \
    PW_DEFINE_TILE(NAME, ATTR, T, V, VL, R, NV)                                                  \
    PW_DEFINE_TILE(NAME, ATTR, T, V, VL, 1, NV)                                                  \
    static ATTR void NAME##_rows##NV(const T *restrict x, const T *restrict wt, T *restrict out, \
                                     Py_ssize_t rows, Py_ssize_t c, Py_ssize_t k) {              \
        Py_ssize_t i = 0;                                                                        \
        for (; i + R <= rows; i += R) NAME##_##R##x##NV(x + i * c, wt, out + i * k, c, k);      \
        for (; i < rows; i++) NAME##_1x##NV(x + i * c, wt, out + i * k, c, k);                   \
    }

#define PW_RR_AVX2 1
#define PW_RR_AVX512 4
/* Each row is read PW_AHEAD_BYTES ahead of its use: with the multiply-adds this dense, the
 * hardware's prefetcher alone left the kernel at half the speed of a plain read (measured). */
#define PW_AHEAD_BYTES 8192
#define PW_ROW_PREFETCH(RR)                                                                     \
    for (int r = 0; r < (RR); r++) __builtin_prefetch((const char *)(x + r * c + j) + PW_AHEAD_BYTES, 0, 3)
/* Rows i .. i + R - 1 (R by the block's name: r1 or rn) through the block for k filters. */
#define PW_DOTS_BY_FILTERS(NAME, R)                                                              \
    switch (k) {                                                                                 \
        case 1: NAME##_1##R(x + i * c, w, out + i * k, c, k); break;                             \
        case 2: NAME##_2##R(x + i * c, w, out + i * k, c, k); break;                             \
        case 3: NAME##_3##R(x + i * c, w, out + i * k, c, k); break;                             \
        case 4: NAME##_4##R(x + i * c, w, out + i * k, c, k); break;                             \
        case 5: NAME##_5##R(x + i * c, w, out + i * k, c, k); break;                             \
        case 6: NAME##_6##R(x + i * c, w, out + i * k, c, k); break;                             \
        case 7: NAME##_7##R(x + i * c, w, out + i * k, c, k); break;                             \
        default: NAME##_8##R(x + i * c, w, out + i * k, c, k); break;                            \
    }
/* RR: the rows the dot products take at once (as registers allow). */
#define PW_DEFINE_KERNEL(NAME, ATTR, T, V, VL, SUFFIX, RR) PW_DEFINE_KERNEL_(NAME, ATTR, T, V, VL, SUFFIX, RR)
#define PW_DEFINE_KERNEL_(NAME, ATTR, T, V, VL, SUFFIX, RR)                                               \
    PW_DEFINE_BLOCK(NAME##_1r1, ATTR, T, V, VL, 1, 1, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_1rn, ATTR, T, V, VL, 1, RR, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_2r1, ATTR, T, V, VL, 2, 1, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_2rn, ATTR, T, V, VL, 2, RR, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_3r1, ATTR, T, V, VL, 3, 1, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_3rn, ATTR, T, V, VL, 3, RR, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_4r1, ATTR, T, V, VL, 4, 1, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_4rn, ATTR, T, V, VL, 4, RR, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_5r1, ATTR, T, V, VL, 5, 1, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_5rn, ATTR, T, V, VL, 5, RR, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_6r1, ATTR, T, V, VL, 6, 1, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_6rn, ATTR, T, V, VL, 6, RR, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_7r1, ATTR, T, V, VL, 7, 1, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_7rn, ATTR, T, V, VL, 7, RR, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_8r1, ATTR, T, V, VL, 8, 1, SUFFIX)                                            \
    PW_DEFINE_BLOCK(NAME##_8rn, ATTR, T, V, VL, 8, RR, SUFFIX)                                            \
    static ATTR void NAME##_dots(const T *restrict x, const T *restrict w, T *restrict out,       \
                                 Py_ssize_t rows, Py_ssize_t c, Py_ssize_t k) {                   \
        Py_ssize_t i = 0;                                                                         \
        for (; i + RR <= rows; i += RR) PW_DOTS_BY_FILTERS(NAME, rn);                             \
        for (; i < rows; i++) PW_DOTS_BY_FILTERS(NAME, r1);                                       \
    }                                                                                             \
    PW_DEFINE_ROWS(NAME, ATTR, T, V, VL, 8, 1)                                                   \
    PW_DEFINE_ROWS(NAME, ATTR, T, V, VL, 6, 2)                                                   \
    PW_DEFINE_ROWS(NAME, ATTR, T, V, VL, 4, 3)                                                   \
    PW_DEFINE_ROWS(NAME, ATTR, T, V, VL, 3, 4)                                                   \
    static ATTR void NAME(const T *restrict x, const T *restrict wt, T *restrict out,            \
                          Py_ssize_t rows, Py_ssize_t c, Py_ssize_t k) {                         \
        switch ((k + VL - 1) / VL) {                                                             \
            case 1: NAME##_rows1(x, wt, out, rows, c, k); break;                                 \
            case 2: NAME##_rows2(x, wt, out, rows, c, k); break;                                 \
            case 3: NAME##_rows3(x, wt, out, rows, c, k); break;                                 \
            default: NAME##_rows4(x, wt, out, rows, c, k); break;                                \
        }                                                                                        \
    }

/* Channels-first input ("planes"): out[f, p] = sum_j w[f, j] * x[j, p] over one image,
 * x (c, b) with b pixels a row and out (k, b).
 *
 * Rows of one image lie b pixels apart, often a power of two: the same pixel of many
 * channels falls in the same cache set, so walking all c channels of a few pixels at once
 * loses what is prefetched. Instead a span of PW_SPAN pixels is swept PW_ROWS channels at a
 * time, left to right: each of those rows is read as one sequential stream. A tile of NV
 * vectors of pixels by KK filters (at most 8) is accumulated in registers over the block's
 * rows, with x[j, p .. p + NV * VL) loaded once and multiplied by the KK weights of channel j
 * (the transposed table wt, (c, kp)); between blocks the sums wait in `acc` (k, PW_SPAN),
 * which stays in the cache, and the last block stores them in `out`. More filters run in
 * groups of 8 over the same tile. Every pixel's sums run over j in order, whatever the tile,
 * span or split of pixels. */
#define PW_SPAN 1024
#define PW_ROWS 8

/* A tile's rows of the next block of channels are fetched while this block is summed
 * (measured: 8 filters went from about 65% to 80-90% of a plain read's speed). Blocks of
 * 16-64 rows measured slower than 8, at 64 filters too. */
#define PW_PLANE_PREFETCH(bytes)                                                               \
    for (int l = 0; l < (bytes); l += 64) __builtin_prefetch((const char *)(xr + rows * b) + l, 0, 3)
#define PW_DEFINE_PLANE_TILE(FN, ATTR, T, V, VL, KK, NV)                                          \
    static inline __attribute__((always_inline)) ATTR void FN(                                    \
        const T *restrict x, const T *restrict wt, const T *restrict from, T *restrict to,        \
        Py_ssize_t to_stride, Py_ssize_t rows, Py_ssize_t b, Py_ssize_t kp, Py_ssize_t sp) {      \
        V acc[KK][NV];                                                                            \
        for (int f = 0; f < KK; f++)                                                              \
            for (int v = 0; v < NV; v++)                                                          \
                acc[f][v] = from != NULL ? *(const V *)(from + f * sp + v * VL) : (V){0};         \
        for (Py_ssize_t j = 0; j < rows; j++) {                                                   \
            const T *xr = x + j * b;                                                              \
            const T *wj = wt + j * kp;                                                            \
            V xv[NV];                                                                             \
            for (int v = 0; v < NV; v++) xv[v] = *(const V *)(xr + v * VL);                       \
            PW_PLANE_PREFETCH(NV * VL * (int)sizeof(T));                                          \
            for (int f = 0; f < KK; f++) {                                                        \
                T wf = wj[f];                                                                     \
                for (int v = 0; v < NV; v++) acc[f][v] += xv[v] * wf;                             \
            }                                                                                     \
        }                                                                                         \
        for (int f = 0; f < KK; f++)                                                              \
            for (int v = 0; v < NV; v++) *(V *)(to + f * to_stride + v * VL) = acc[f][v];         \
    }

/* KK filters: tiles of NV vectors, of one vector, and of one pixel. */
#define PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, KK, NV)                                          \
    PW_DEFINE_PLANE_TILE(NAME##_wide##KK, ATTR, T, V, VL, KK, NV)                                 \
    PW_DEFINE_PLANE_TILE(NAME##_narrow##KK, ATTR, T, V, VL, KK, 1)                                \
    static inline __attribute__((always_inline)) ATTR void NAME##_one##KK(                        \
        const T *restrict x, const T *restrict wt, const T *restrict from, T *restrict to,        \
        Py_ssize_t to_stride, Py_ssize_t rows, Py_ssize_t b, Py_ssize_t kp, Py_ssize_t sp) {      \
        T acc[KK];                                                                                \
        for (int f = 0; f < KK; f++) acc[f] = from != NULL ? from[f * sp] : 0;                    \
        for (Py_ssize_t j = 0; j < rows; j++) {                                                   \
            T xj = x[j * b];                                                                      \
            for (int f = 0; f < KK; f++) acc[f] += xj * wt[j * kp + f];                           \
        }                                                                                         \
        for (int f = 0; f < KK; f++) to[f * to_stride] = acc[f];                                  \
    }                                                                                             \
    static ATTR void NAME##_g##KK(const T *x, const T *wt, const T *from, T *to,                  \
                                  Py_ssize_t to_stride, Py_ssize_t rows, Py_ssize_t b,            \
                                  Py_ssize_t kp, Py_ssize_t sp, int width) {                      \
        if (width == NV * VL)                                                                     \
            NAME##_wide##KK(x, wt, from, to, to_stride, rows, b, kp, sp);                             \
        else if (width == VL)                                                                     \
            NAME##_narrow##KK(x, wt, from, to, to_stride, rows, b, kp, sp);                           \
        else                                                                                      \
            NAME##_one##KK(x, wt, from, to, to_stride, rows, b, kp, sp);                              \
    }

/* N1 .. N8: the vectors of pixels a wide tile holds for 1 .. 8 filters (as registers allow;
 * a span ends in narrower tiles where they do not divide it). */
#define PW_DEFINE_PLANES(NAME, ATTR, T, V, VL, N1, N2, N3, N4, N5, N6, N7, N8)                     \
    PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, 1, N1)                                               \
    PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, 2, N2)                                               \
    PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, 3, N3)                                               \
    PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, 4, N4)                                               \
    PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, 5, N5)                                               \
    PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, 6, N6)                                               \
    PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, 7, N7)                                               \
    PW_DEFINE_PLANE_KK(NAME, ATTR, T, V, VL, 8, N8)                                               \
    static const int NAME##_widths[9] = {0, N1 * VL, N2 * VL, N3 * VL, N4 * VL,                  \
                                         N5 * VL, N6 * VL, N7 * VL, N8 * VL};                     \
    static ATTR void NAME##_group(const T *x, const T *wt, const T *from, T *to,                  \
                                  Py_ssize_t to_stride, Py_ssize_t rows, Py_ssize_t b,            \
                                  Py_ssize_t kp, Py_ssize_t sp, int kk, int width) {              \
        switch (kk) {                                                                             \
            case 1: NAME##_g1(x, wt, from, to, to_stride, rows, b, kp, sp, width); break;             \
            case 2: NAME##_g2(x, wt, from, to, to_stride, rows, b, kp, sp, width); break;             \
            case 3: NAME##_g3(x, wt, from, to, to_stride, rows, b, kp, sp, width); break;             \
            case 4: NAME##_g4(x, wt, from, to, to_stride, rows, b, kp, sp, width); break;             \
            case 5: NAME##_g5(x, wt, from, to, to_stride, rows, b, kp, sp, width); break;             \
            case 6: NAME##_g6(x, wt, from, to, to_stride, rows, b, kp, sp, width); break;             \
            case 7: NAME##_g7(x, wt, from, to, to_stride, rows, b, kp, sp, width); break;             \
            default: NAME##_g8(x, wt, from, to, to_stride, rows, b, kp, sp, width); break;            \
        }                                                                                         \
    }                                                                                             \
    /* Pixels [p0, p1) of each of the a images; `acc` holds k x PW_SPAN values. */                \
    static ATTR void NAME(const T *x, const T *wt, T *out, T *acc, Py_ssize_t a, Py_ssize_t c,    \
                          Py_ssize_t b, Py_ssize_t k, Py_ssize_t p0, Py_ssize_t p1) {             \
        Py_ssize_t sp = PW_SPAN; /* 128-512 for 16-64 filters, acc in L1: no faster */            \
        for (Py_ssize_t n = 0; n < a; n++) {                                                      \
            const T *xn = x + n * c * b;                                                          \
            T *on = out + n * k * b;                                                              \
            for (Py_ssize_t s = p0; s < p1; s += sp) {                                            \
                Py_ssize_t span = p1 - s < sp ? p1 - s : sp;                                      \
                for (Py_ssize_t j0 = 0; j0 < c; j0 += PW_ROWS) {                                  \
                    Py_ssize_t rows = c - j0 < PW_ROWS ? c - j0 : PW_ROWS;                        \
                    int last = j0 + rows == c;                                                    \
                    for (Py_ssize_t g = 0; g < k; g += 8) {                                       \
                        int kk = k - g < 8 ? (int)(k - g) : 8;                                    \
                        int wide = NAME##_widths[kk];                                             \
                        for (Py_ssize_t q = 0; q < span;) {                                       \
                            int width = q + wide <= span ? wide : (q + VL <= span ? VL : 1);      \
                            const T *from = j0 == 0 ? NULL : acc + g * sp + q;                    \
                            T *to = last ? on + g * b + s + q : acc + g * sp + q;                 \
                            NAME##_group(xn + j0 * b + s + q, wt + j0 * k + g, from, to,          \
                                         last ? b : sp, rows, b, k, sp, kk, width);               \
                            q += width;                                                           \
                        }                                                                         \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

PW_DEFINE_KERNEL(plain_f32, PW_PLAIN, float, pw_vf, 8, f32x8, PW_RR_AVX2)
PW_DEFINE_KERNEL(plain_f64, PW_PLAIN, double, pw_vd, 4, f64x4, PW_RR_AVX2)
/* 16 vector registers: accumulators plus the loaded vectors fit in about 14 of them. */
PW_DEFINE_PLANES(plain_planes_f32, PW_PLAIN, float, pw_vf, 8, 6, 4, 3, 2, 2, 2, 1, 1)
PW_DEFINE_PLANES(plain_planes_f64, PW_PLAIN, double, pw_vd, 4, 6, 4, 3, 2, 2, 2, 1, 1)
#ifdef PW_X86
PW_DEFINE_KERNEL(avx2_f32, PW_AVX2, float, pw_vf, 8, f32x8, PW_RR_AVX2)
PW_DEFINE_KERNEL(avx2_f64, PW_AVX2, double, pw_vd, 4, f64x4, PW_RR_AVX2)
PW_DEFINE_PLANES(avx2_planes_f32, PW_AVX2, float, pw_vf, 8, 6, 4, 3, 2, 2, 2, 1, 1)
PW_DEFINE_PLANES(avx2_planes_f64, PW_AVX2, double, pw_vd, 4, 6, 4, 3, 2, 2, 2, 1, 1)
/* 32 vector registers. */
PW_DEFINE_KERNEL(avx512_f32, PW_AVX512, float, pw_vf16, 16, f32x16, PW_RR_AVX512)
PW_DEFINE_KERNEL(avx512_f64, PW_AVX512, double, pw_vd8, 8, f64x8, PW_RR_AVX512)
PW_DEFINE_PLANES(avx512_planes_f32, PW_AVX512, float, pw_vf16, 16, 8, 8, 6, 4, 4, 3, 3, 3)
PW_DEFINE_PLANES(avx512_planes_f64, PW_AVX512, double, pw_vd8, 8, 8, 8, 6, 4, 4, 3, 3, 3)
#endif

/* The most filters one channels-last call takes: four vectors of them. */
#define PW_MAX_VECTORS 4
/* The most filters one channels-first call takes (groups of 8 over each tile). */
#define PW_MAX_PLANE_FILTERS 128

/* Instruction sets, best last; `level` is what this CPU runs, `chosen` what the kernels use. */
enum { PW_GENERIC = 0, PW_AVX2_FMA = 1, PW_AVX512F = 2 };
static const char *const level_names[] = {"generic", "avx2+fma", "avx512f"};

static int cpu_level(void) {
#ifdef PW_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        cached = avx2 && __builtin_cpu_supports("avx512f") ? PW_AVX512F : avx2 ? PW_AVX2_FMA : PW_GENERIC;
    }
    return cached;
#else
    return PW_GENERIC;
#endif
}

static int chosen = -1;

static int level(void) {
    if (chosen < 0) chosen = cpu_level();
    return chosen;
}

/* Vector lanes of the channels-last tiles at the chosen level. */
static Py_ssize_t row_lanes(int itemsize) {
    Py_ssize_t bytes = level() == PW_AVX512F ? 64 : 32;
    return bytes / itemsize;
}

/* The (c, kp) transposed, zero-padded filter table, 64-byte aligned; NULL when out of memory. */
static void *transpose(const char *w, Py_ssize_t c, Py_ssize_t k, Py_ssize_t kp, int itemsize) {
    size_t bytes = (size_t)(c * kp * itemsize);
    void *wt = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (wt == NULL) return NULL;
    memset(wt, 0, bytes);
    for (Py_ssize_t f = 0; f < k; f++)
        for (Py_ssize_t j = 0; j < c; j++)
            memcpy((char *)wt + (j * kp + f) * itemsize, w + (f * c + j) * itemsize, itemsize);
    return wt;
}

/* Up to DOT_FILTERS filters: row-by-row dot products with the filters as given (`w`);
 * more: tiles over the transposed table (`w` is then that table). */
#define PW_DOT_FILTERS 4
/* Dot products also win for up to 8 filters over this many channels or more (measured). */
#define PW_DOT_FILTERS_WIDE 8
#define PW_DOT_WIDE_CHANNELS 128
#define PW_USE_DOTS(k, c) ((k) <= PW_DOT_FILTERS || ((k) <= PW_DOT_FILTERS_WIDE && (c) >= PW_DOT_WIDE_CHANNELS))

typedef void (*pw_rows_fn)(const void *, const void *, void *, Py_ssize_t, Py_ssize_t, Py_ssize_t);
typedef void (*pw_planes_fn)(const void *, const void *, void *, void *, Py_ssize_t, Py_ssize_t,
                             Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t);

#define PW_PICK(F32, F64, DOUBLE) ((DOUBLE) ? (void *)(F64) : (void *)(F32))

static pw_rows_fn rows_kernel(int dots, int itemsize) {
    int wide = itemsize == 8;
    switch (level()) {
#ifdef PW_X86
        case PW_AVX512F:
            return dots ? PW_PICK(avx512_f32_dots, avx512_f64_dots, wide) : PW_PICK(avx512_f32, avx512_f64, wide);
        case PW_AVX2_FMA:
            return dots ? PW_PICK(avx2_f32_dots, avx2_f64_dots, wide) : PW_PICK(avx2_f32, avx2_f64, wide);
#endif
        default:
            return dots ? PW_PICK(plain_f32_dots, plain_f64_dots, wide) : PW_PICK(plain_f32, plain_f64, wide);
    }
}

static pw_planes_fn planes_kernel(int itemsize) {
    int wide = itemsize == 8;
    switch (level()) {
#ifdef PW_X86
        case PW_AVX512F: return PW_PICK(avx512_planes_f32, avx512_planes_f64, wide);
        case PW_AVX2_FMA: return PW_PICK(avx2_planes_f32, avx2_planes_f64, wide);
#endif
        default: return PW_PICK(plain_planes_f32, plain_planes_f64, wide);
    }
}

static PyObject *instruction_set(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(level_names[level()]);
}

static PyObject *cpu_instruction_set(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(level_names[cpu_level()]);
}

/* Run a lower level than the CPU's (for measuring and testing each path); ValueError above it. */
static PyObject *use_instruction_set(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int l = 0; l <= cpu_level(); l++) {
        if (strcmp(name, level_names[l]) == 0) {
            chosen = l;
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "this CPU runs at most %s, not %s", level_names[cpu_level()], name);
    return NULL;
}

static PyObject *max_filters(PyObject *self, PyObject *args) {
    int itemsize;
    if (!PyArg_ParseTuple(args, "i", &itemsize)) return NULL;
    return PyLong_FromLong((long)(row_lanes(itemsize == 8 ? 8 : 4) * PW_MAX_VECTORS));
}

static PyObject *apply_rows(PyObject *self, PyObject *args) {
    Py_buffer x, w, out;
    Py_ssize_t rows, c, k;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*y*w*nnni", &x, &w, &out, &rows, &c, &k, &itemsize)) return NULL;
    Py_ssize_t lanes = row_lanes(itemsize == 8 ? 8 : 4);
    Py_ssize_t kp = (k + lanes - 1) / lanes * lanes;
    int ok = (itemsize == 4 || itemsize == 8) && rows >= 0 && c > 0 && k > 0 && kp <= lanes * PW_MAX_VECTORS &&
             x.len >= rows * c * itemsize && w.len >= k * c * itemsize && out.len >= rows * k * itemsize;
    void *wt = NULL;
    int dots = PW_USE_DOTS(k, c);
    if (ok && !dots) wt = transpose(w.buf, c, k, kp, itemsize);
    if (ok && (wt != NULL || dots)) {
        pw_rows_fn fn = rows_kernel(dots, itemsize);
        Py_BEGIN_ALLOW_THREADS
        fn(x.buf, wt != NULL ? wt : w.buf, out.buf, rows, c, k);
        Py_END_ALLOW_THREADS
    }
    free(wt);
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "apply_rows: buffer sizes do not match rows, c, k");
        return NULL;
    }
    if (wt == NULL && !dots) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *apply_planes(PyObject *self, PyObject *args) {
    Py_buffer x, w, out;
    Py_ssize_t a, c, b, k, p0, p1;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*y*w*nnnnnni", &x, &w, &out, &a, &c, &b, &k, &p0, &p1, &itemsize))
        return NULL;
    int ok = (itemsize == 4 || itemsize == 8) && a >= 0 && c > 0 && b >= 0 && k > 0 &&
             k <= PW_MAX_PLANE_FILTERS && 0 <= p0 && p0 <= p1 && p1 <= b && x.len >= a * c * b * itemsize &&
             w.len >= k * c * itemsize && out.len >= a * k * b * itemsize;
    void *wt = ok ? transpose(w.buf, c, k, k, itemsize) : NULL;
    void *acc = wt != NULL ? aligned_alloc(64, (size_t)(k * PW_SPAN * itemsize)) : NULL;
    if (acc != NULL) {
        pw_planes_fn fn = planes_kernel(itemsize);
        Py_BEGIN_ALLOW_THREADS
        fn(x.buf, wt, out.buf, acc, a, c, b, k, p0, p1);
        Py_END_ALLOW_THREADS
    }
    free(acc);
    free(wt);
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "apply_planes: buffer sizes do not match a, c, b, k, p0, p1");
        return NULL;
    }
    if (acc == NULL) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"apply_rows", apply_rows, METH_VARARGS,
     "apply_rows(x, w, out, rows, c, k, itemsize): out[i,f] = x[i,:] . w[f,:] (C-contiguous)."},
    {"apply_planes", apply_planes, METH_VARARGS,
     "apply_planes(x, w, out, a, c, b, k, p0, p1, itemsize): out[n,f,p] = w[f,:] . x[n,:,p] for p0 <= p < p1."},
    {"instruction_set", instruction_set, METH_NOARGS, "The instruction set the kernels run with."},
    {"cpu_instruction_set", cpu_instruction_set, METH_NOARGS, "The best instruction set this CPU runs."},
    {"use_instruction_set", use_instruction_set, METH_VARARGS,
     "use_instruction_set(name): run a path this CPU supports ('generic', 'avx2+fma', 'avx512f')."},
    {"max_filters", max_filters, METH_VARARGS, "max_filters(itemsize): the most filters one call takes."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fewfilters", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fewfilters(void) { return PyModule_Create(&module); }
