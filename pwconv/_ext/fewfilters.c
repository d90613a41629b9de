/* Few-filter kernel for channels-last input: out[i, k] = sum_c x[i, c] * w[k, c].
 *
 * BLAS packs the whole input for a GEMM with few columns, which costs about three passes
 * over memory. Here each input row is read once, stays in L1 while every filter is applied,
 * and the sums are vectorised. Rows are independent, so the result of a row does not depend
 * on how the rows are split into blocks or threads.
 *
 * Optional: pwconv falls back to numpy/BLAS when this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

/* Rows one after another; filters in groups of up to 8 while the row is in L1. */
#define PW_DEFINE_KERNEL(NAME, ATTR, T, V, VL)                                            \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 1)                                              \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 2)                                              \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 3)                                              \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 4)                                              \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 5)                                              \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 6)                                              \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 7)                                              \
    PW_DEFINE_BLOCK(NAME, ATTR, T, V, VL, 8)                                              \
    static ATTR void NAME(const T *restrict x, const T *restrict w, T *restrict out,      \
                          Py_ssize_t rows, Py_ssize_t c, Py_ssize_t k) {                    \
        for (Py_ssize_t i = 0; i < rows; i++) {                                           \
            const T *row = x + i * c;                                                     \
            for (Py_ssize_t f0 = 0; f0 < k; f0 += 8) {                                    \
                const T *wf = w + f0 * c;                                                 \
                T *o = out + i * k + f0;                                                  \
                switch (k - f0 < 8 ? k - f0 : 8) {                                        \
                    case 1: NAME##_1(row, wf, o, c); break;                               \
                    case 2: NAME##_2(row, wf, o, c); break;                               \
                    case 3: NAME##_3(row, wf, o, c); break;                               \
                    case 4: NAME##_4(row, wf, o, c); break;                               \
                    case 5: NAME##_5(row, wf, o, c); break;                               \
                    case 6: NAME##_6(row, wf, o, c); break;                               \
                    case 7: NAME##_7(row, wf, o, c); break;                               \
                    default: NAME##_8(row, wf, o, c); break;                              \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }

PW_DEFINE_KERNEL(plain_f32, PW_PLAIN, float, pw_vf, 8)
PW_DEFINE_KERNEL(plain_f64, PW_PLAIN, double, pw_vd, 4)
#ifdef PW_X86
PW_DEFINE_KERNEL(avx2_f32, PW_AVX2, float, pw_vf, 8)
PW_DEFINE_KERNEL(avx2_f64, PW_AVX2, double, pw_vd, 4)
#endif

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

static void rows_f32(const float *x, const float *w, float *out, Py_ssize_t rows, Py_ssize_t c, Py_ssize_t k) {
#ifdef PW_X86
    if (use_avx2()) { avx2_f32(x, w, out, rows, c, k); return; }
#endif
    plain_f32(x, w, out, rows, c, k);
}

static void rows_f64(const double *x, const double *w, double *out, Py_ssize_t rows, Py_ssize_t c, Py_ssize_t k) {
#ifdef PW_X86
    if (use_avx2()) { avx2_f64(x, w, out, rows, c, k); return; }
#endif
    plain_f64(x, w, out, rows, c, k);
}

static PyObject *instruction_set(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(use_avx2() ? "avx2+fma" : "generic");
}

static PyObject *apply_rows(PyObject *self, PyObject *args) {
    Py_buffer x, w, out;
    Py_ssize_t rows, c, k;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*y*w*nnni", &x, &w, &out, &rows, &c, &k, &itemsize)) return NULL;
    int ok = (itemsize == 4 || itemsize == 8) && rows >= 0 && c > 0 && k > 0 &&
             x.len >= rows * c * itemsize && w.len >= k * c * itemsize && out.len >= rows * k * itemsize;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        if (itemsize == 4)
            rows_f32((const float *)x.buf, (const float *)w.buf, (float *)out.buf, rows, c, k);
        else
            rows_f64((const double *)x.buf, (const double *)w.buf, (double *)out.buf, rows, c, k);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "apply_rows: buffer sizes do not match rows, c, k");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"apply_rows", apply_rows, METH_VARARGS,
     "apply_rows(x, w, out, rows, c, k, itemsize): out[i,k] = x[i,:] . w[k,:] (C-contiguous)."},
    {"instruction_set", instruction_set, METH_NOARGS, "The instruction set the kernel runs with."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fewfilters", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fewfilters(void) { return PyModule_Create(&module); }
