/* Few-filter kernels for channels-last input: out[i, f] = sum_j x[i, j] * w[f, j].
 *
 * A GEMM with few output columns spends most of its time packing the input; these read
 * each input row once, straight from memory.
 *
 * - Up to 4 filters, or up to 8 over 128+ channels ("dots"): per row, vectorised dot
 *   products with each filter; the row stays in L1 while every filter is applied.
 * - More filters, up to four vectors of them, 32 float32 or 16 float64 ("tiles"): the filters
 *   are transposed once per call into a small (C, K rounded up to whole vectors) table, and
 *   R rows are computed at once: for each channel j the R values x[i, j] are broadcast and
 *   multiplied into R x NV vector accumulators, NV vectors covering the K filters. No
 *   horizontal sums are needed.
 *
 * In both, a row's result does not depend on how rows are split into tiles, blocks or
 * threads (a row left over after the last whole tile runs the same sums in the same order).
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
#else
#define PW_AVX2
#endif
#define PW_PLAIN

typedef float pw_vf __attribute__((vector_size(32), aligned(4)));
typedef double pw_vd __attribute__((vector_size(32), aligned(8)));

/* KK filters (a compile-time constant, at most 8) at once over one row. Each filter keeps
 * U = 4 / KK (at least 1) vector accumulators, so at least four independent chains of
 * multiply-adds hide their latency; the row is loaded once for all filters. */
#define PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, KK)                                         \
    static inline __attribute__((always_inline)) ATTR void NAME##_##KK(                    \
        const T *restrict row, const T *restrict w, T *restrict out, Py_ssize_t c) {       \
        enum { U = (KK >= 4) ? 1 : 4 / KK };                                              \
        V acc[KK][U];                                                                     \
        for (int f = 0; f < KK; f++)                                                      \
            for (int u = 0; u < U; u++) acc[f][u] = (V){0};                               \
        Py_ssize_t body = c - c % (VL * U);                                               \
        for (Py_ssize_t j = 0; j < body; j += VL * U) {                                   \
            for (int u = 0; u < U; u++) {                                                 \
                V xv = *(const V *)(row + j + u * VL);                                    \
                for (int f = 0; f < KK; f++)                                              \
                    acc[f][u] += xv * *(const V *)(w + f * c + j + u * VL);               \
            }                                                                             \
        }                                                                                 \
        for (int f = 0; f < KK; f++) {                                                    \
            V total = acc[f][0];                                                          \
            for (int u = 1; u < U; u++) total += acc[f][u];                               \
            T sum = 0;                                                                    \
            for (int v = 0; v < VL; v++) sum += total[v];                                 \
            for (Py_ssize_t j = body; j < c; j++) sum += row[j] * w[f * c + j];           \
            out[f] = sum;                                                                 \
        }                                                                                 \
    }

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

#define PW_DEFINE_KERNEL(NAME, ATTR, T, V, VL)                                                   \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 1)                                                     \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 2)                                                     \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 3)                                                     \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 4)                                                     \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 5)                                                     \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 6)                                                     \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 7)                                                     \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 8)                                                     \
    static ATTR void NAME##_dots(const T *restrict x, const T *restrict w, T *restrict out,       \
                                 Py_ssize_t rows, Py_ssize_t c, Py_ssize_t k) {                   \
        for (Py_ssize_t i = 0; i < rows; i++) {                                                   \
            const T *row = x + i * c;                                                             \
            T *o = out + i * k;                                                                   \
            switch (k) {                                                                          \
                case 1: NAME##_1(row, w, o, c); break;                                            \
                case 2: NAME##_2(row, w, o, c); break;                                            \
                case 3: NAME##_3(row, w, o, c); break;                                            \
                case 4: NAME##_4(row, w, o, c); break;                                            \
                case 5: NAME##_5(row, w, o, c); break;                                            \
                case 6: NAME##_6(row, w, o, c); break;                                            \
                case 7: NAME##_7(row, w, o, c); break;                                            \
                default: NAME##_8(row, w, o, c); break;                                           \
            }                                                                                     \
        }                                                                                         \
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

PW_DEFINE_KERNEL(plain_f32, PW_PLAIN, float, pw_vf, 8)
PW_DEFINE_KERNEL(plain_f64, PW_PLAIN, double, pw_vd, 4)
#ifdef PW_X86
PW_DEFINE_KERNEL(avx2_f32, PW_AVX2, float, pw_vf, 8)
PW_DEFINE_KERNEL(avx2_f64, PW_AVX2, double, pw_vd, 4)
#endif

/* The most filters one call takes: four vectors of them. */
#define PW_MAX_VECTORS 4

static int use_avx2(void) {
#ifdef PW_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
#else
    return 0;
#endif
}

/* The (c, kp) transposed, zero-padded filter table, 32-byte aligned; NULL when out of memory. */
static void *transpose(const char *w, Py_ssize_t c, Py_ssize_t k, Py_ssize_t kp, int itemsize) {
    size_t bytes = (size_t)(c * kp * itemsize);
    void *wt = aligned_alloc(32, (bytes + 31) / 32 * 32);
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

static void run(const void *x, const void *w, void *out, Py_ssize_t rows, Py_ssize_t c, Py_ssize_t k,
                int itemsize) {
    int avx2 = use_avx2();
    int dots = PW_USE_DOTS(k, c);
    if (itemsize == 4) {
#ifdef PW_X86
        if (avx2) { (dots ? avx2_f32_dots : avx2_f32)(x, w, out, rows, c, k); return; }
#endif
        (dots ? plain_f32_dots : plain_f32)(x, w, out, rows, c, k);
    } else {
#ifdef PW_X86
        if (avx2) { (dots ? avx2_f64_dots : avx2_f64)(x, w, out, rows, c, k); return; }
#endif
        (dots ? plain_f64_dots : plain_f64)(x, w, out, rows, c, k);
    }
}

static PyObject *instruction_set(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(use_avx2() ? "avx2+fma" : "generic");
}

static PyObject *max_filters(PyObject *self, PyObject *args) {
    int itemsize;
    if (!PyArg_ParseTuple(args, "i", &itemsize)) return NULL;
    return PyLong_FromLong(itemsize == 4 ? 8 * PW_MAX_VECTORS : 4 * PW_MAX_VECTORS);
}

static PyObject *apply_rows(PyObject *self, PyObject *args) {
    Py_buffer x, w, out;
    Py_ssize_t rows, c, k;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*y*w*nnni", &x, &w, &out, &rows, &c, &k, &itemsize)) return NULL;
    Py_ssize_t lanes = itemsize == 8 ? 4 : 8;
    Py_ssize_t kp = (k + lanes - 1) / lanes * lanes;
    int ok = (itemsize == 4 || itemsize == 8) && rows >= 0 && c > 0 && k > 0 && kp <= lanes * PW_MAX_VECTORS &&
             x.len >= rows * c * itemsize && w.len >= k * c * itemsize && out.len >= rows * k * itemsize;
    void *wt = NULL;
    int dots = PW_USE_DOTS(k, c);
    if (ok && !dots) wt = transpose(w.buf, c, k, kp, itemsize);
    if (ok && (wt != NULL || dots)) {
        Py_BEGIN_ALLOW_THREADS
        run(x.buf, wt != NULL ? wt : w.buf, out.buf, rows, c, k, itemsize);
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

static PyMethodDef methods[] = {
    {"apply_rows", apply_rows, METH_VARARGS,
     "apply_rows(x, w, out, rows, c, k, itemsize): out[i,f] = x[i,:] . w[f,:] (C-contiguous)."},
    {"instruction_set", instruction_set, METH_NOARGS, "The instruction set the kernel runs with."},
    {"max_filters", max_filters, METH_VARARGS, "max_filters(itemsize): the most filters one call takes."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fewfilters", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fewfilters(void) { return PyModule_Create(&module); }
