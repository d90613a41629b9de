/* The scatter matrix of channel vectors for fit: acc += (x - shift)^T (x - shift) and
 * sum += the column sums of (x - shift), in float64, from float32 or float64 rows.
 *
 * BLAS's rank-k update needs the rows converted to float64 first and runs a 64 x 64 update
 * far from the machine's peak; here a few hundred rows at a time are converted and shifted
 * into a small buffer that stays in the L1/L2 cache, and the update is computed from it in
 * register tiles of 4 output rows by two vectors of columns. Only the blocks on or above the
 * diagonal are computed (the caller mirrors them); every value is a float64 sum of float64
 * products, like BLAS's, in another order.
 *
 * Paths: AVX-512F (8 doubles a vector) and AVX2+FMA (4), chosen at run time by the CPU, and
 * none otherwise (pwconv then uses BLAS). Optional: pwconv works when this was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define PW_X86 1
#endif

/* Rows converted at a time: PW_ROWS x padded channels doubles stay in the cache. */
#define PW_ROWS 64

#ifdef PW_X86
typedef double pw_v4 __attribute__((vector_size(32), aligned(8)));
typedef double pw_v8 __attribute__((vector_size(64), aligned(8)));

/* One pass over a buffer of n shifted rows (cp doubles each, cp a multiple of 2 * VL):
 * for every block of 4 output rows and 2 * VL output columns on or above the diagonal. */
#define PW_DEFINE_UPDATE(NAME, ATTR, V, VL)                                                   \
    static ATTR void NAME(const double *restrict buf, Py_ssize_t n, Py_ssize_t cp,           \
                          double *restrict acc) {                                             \
        for (Py_ssize_t i0 = 0; i0 < cp; i0 += 4) {                                           \
            for (Py_ssize_t j0 = i0 / (2 * VL) * (2 * VL); j0 < cp; j0 += 2 * VL) {           \
                V a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0};                                 \
                V a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};                                 \
                for (Py_ssize_t p = 0; p < n; p++) {                                          \
                    const double *b = buf + p * cp;                                           \
                    V x0 = *(const V *)(b + j0), x1 = *(const V *)(b + j0 + VL);              \
                    double s0 = b[i0], s1 = b[i0 + 1], s2 = b[i0 + 2], s3 = b[i0 + 3];        \
                    a00 += s0 * x0; a01 += s0 * x1;                                           \
                    a10 += s1 * x0; a11 += s1 * x1;                                           \
                    a20 += s2 * x0; a21 += s2 * x1;                                           \
                    a30 += s3 * x0; a31 += s3 * x1;                                           \
                }                                                                             \
                double *o = acc + i0 * cp + j0;                                               \
                *(V *)(o) += a00; *(V *)(o + VL) += a01;                                      \
                *(V *)(o + cp) += a10; *(V *)(o + cp + VL) += a11;                            \
                *(V *)(o + 2 * cp) += a20; *(V *)(o + 2 * cp + VL) += a21;                    \
                *(V *)(o + 3 * cp) += a30; *(V *)(o + 3 * cp + VL) += a31;                    \
            }                                                                                 \
        }                                                                                     \
    }

PW_DEFINE_UPDATE(update_avx2, __attribute__((target("avx2,fma"))), pw_v4, 4)
PW_DEFINE_UPDATE(update_avx512, __attribute__((target("avx512f"))), pw_v8, 8)

static int path(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f"))
            cached = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            cached = 1;
        else
            cached = 0;
    }
    return cached;
}
#else
static int path(void) { return 0; }
#endif

/* Convert and shift rows [r0, r0 + n) into buf (zero-padded to cp) and add their sums. */
#define PW_DEFINE_FILL(NAME, T, ATTR)                                                           \
    static ATTR void NAME(const T *restrict x, Py_ssize_t n, Py_ssize_t c, Py_ssize_t cp,           \
                     const double *restrict shift, double *restrict buf, double *restrict sum) { \
        for (Py_ssize_t p = 0; p < n; p++) {                                                    \
            const T *row = x + p * c;                                                           \
            double *b = buf + p * cp;                                                           \
            for (Py_ssize_t j = 0; j < c; j++) {                                                \
                double v = (double)row[j] - shift[j];                                           \
                b[j] = v;                                                                       \
                sum[j] += v;                                                                    \
            }                                                                                   \
            for (Py_ssize_t j = c; j < cp; j++) b[j] = 0.0;                                     \
        }                                                                                       \
    }

#ifdef PW_X86
#define PW_T512 __attribute__((target("avx512f")))
#define PW_T2 __attribute__((target("avx2,fma")))
#else
#define PW_T512
#define PW_T2
#endif
PW_DEFINE_FILL(fill_f32_512, float, PW_T512)
PW_DEFINE_FILL(fill_f64_512, double, PW_T512)
PW_DEFINE_FILL(fill_f32_2, float, PW_T2)
PW_DEFINE_FILL(fill_f64_2, double, PW_T2)

/* The same for neighbour differences: pixel q of the n taken from image row r is
 * x[r][q + ca] - x[r + dr][q + cb], the row holding w pixels of c channels. */
#define PW_DEFINE_FILL_DIFF(NAME, T, ATTR)                                                       \
    static ATTR void NAME(const T *restrict x, Py_ssize_t r, Py_ssize_t q0, Py_ssize_t n, Py_ssize_t w, \
                     Py_ssize_t c, Py_ssize_t dr, Py_ssize_t ca, Py_ssize_t cb, Py_ssize_t cp,     \
                     const double *restrict shift, double *restrict buf, double *restrict sum) {   \
        const T *top = x + (r * w + q0 + ca) * c;                                                 \
        const T *low = x + ((r + dr) * w + q0 + cb) * c;                                          \
        for (Py_ssize_t p = 0; p < n; p++) {                                                      \
            double *b = buf + p * cp;                                                             \
            for (Py_ssize_t j = 0; j < c; j++) {                                                  \
                double v = ((double)top[p * c + j] - (double)low[p * c + j]) - shift[j];          \
                b[j] = v;                                                                         \
                sum[j] += v;                                                                      \
            }                                                                                     \
            for (Py_ssize_t j = c; j < cp; j++) b[j] = 0.0;                                       \
        }                                                                                         \
    }

PW_DEFINE_FILL_DIFF(fill_diff_f32_512, float, PW_T512)
PW_DEFINE_FILL_DIFF(fill_diff_f64_512, double, PW_T512)
PW_DEFINE_FILL_DIFF(fill_diff_f32_2, float, PW_T2)
PW_DEFINE_FILL_DIFF(fill_diff_f64_2, double, PW_T2)

static PyObject *lanes(PyObject *self, PyObject *args) {
    int p = path();
    return PyLong_FromLong(p == 2 ? 8 : p == 1 ? 4 : 0);
}

static PyObject *instruction_set(PyObject *self, PyObject *args) {
    int p = path();
    return PyUnicode_FromString(p == 2 ? "avx512f" : p == 1 ? "avx2+fma" : "generic");
}

/* The end of a call: the buffer freed, the four buffers released, and the result (None, or
 * the error of bad arguments or of no memory for the buffer). */
static PyObject *finish(double *buf, int ok, Py_buffer *views[4], const char *name) {
    free(buf);
    for (int i = 0; i < 4; i++) PyBuffer_Release(views[i]);
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "%s: no vector path, or buffer sizes that do not match", name);
        return NULL;
    }
    if (buf == NULL) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* add_rows(x, rows, c, itemsize, shift, acc, sum, cp): acc (cp x cp) and sum (cp) updated. */
static PyObject *add_rows(PyObject *self, PyObject *args) {
    Py_buffer x, shift, acc, sum;
    Py_ssize_t rows, c, cp;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*nniy*w*w*n", &x, &rows, &c, &itemsize, &shift, &acc, &sum, &cp)) return NULL;
    int p = path();
    Py_ssize_t block = p == 2 ? 16 : 8;
    int ok = p > 0 && (itemsize == 4 || itemsize == 8) && rows >= 0 && c > 0 && cp >= c && cp % block == 0 &&
             x.len >= rows * c * itemsize && shift.len >= c * 8 && acc.len >= cp * cp * 8 && sum.len >= cp * 8;
    double *buf = ok ? aligned_alloc(64, (size_t)(PW_ROWS * cp * 8)) : NULL;
    if (buf != NULL) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r0 = 0; r0 < rows; r0 += PW_ROWS) {
            Py_ssize_t n = rows - r0 < PW_ROWS ? rows - r0 : PW_ROWS;
            if (itemsize == 4)
                (p == 2 ? fill_f32_512 : fill_f32_2)((const float *)x.buf + r0 * c, n, c, cp, shift.buf, buf, sum.buf);
            else
                (p == 2 ? fill_f64_512 : fill_f64_2)((const double *)x.buf + r0 * c, n, c, cp, shift.buf, buf, sum.buf);
#ifdef PW_X86
            (p == 2 ? update_avx512 : update_avx2)(buf, n, cp, acc.buf);
#endif
        }
        Py_END_ALLOW_THREADS
    }
    return finish(buf, ok, (Py_buffer *[]){&x, &shift, &acc, &sum}, "add_rows");
}

/* add_differences(x, r0, r1, w, c, itemsize, dr, dc, shift, acc, sum, cp): the products and
 * sums of x[r][q] - x[r + dr][q + dc] for image rows r0 <= r < r1 of the (rows, w, c) block,
 * over every q where both pixels exist. */
static PyObject *add_differences(PyObject *self, PyObject *args) {
    Py_buffer x, shift, acc, sum;
    Py_ssize_t r0, r1, w, c, dr, dc, cp;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*nnnninny*w*w*n", &x, &r0, &r1, &w, &c, &itemsize, &dr, &dc, &shift, &acc,
                          &sum, &cp))
        return NULL;
    int p = path();
    Py_ssize_t block = p == 2 ? 16 : 8;
    Py_ssize_t cols = w - (dc < 0 ? -dc : dc), ca = dc < 0 ? -dc : 0, cb = dc > 0 ? dc : 0;
    int ok = p > 0 && (itemsize == 4 || itemsize == 8) && 0 <= r0 && r0 <= r1 && dr >= 0 && cols >= 0 && c > 0 &&
             cp >= c && cp % block == 0 && x.len >= (r1 + dr) * w * c * itemsize && shift.len >= c * 8 &&
             acc.len >= cp * cp * 8 && sum.len >= cp * 8;
    double *buf = ok ? aligned_alloc(64, (size_t)(PW_ROWS * cp * 8)) : NULL;
    if (buf != NULL) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r = r0; r < r1; r++) {
            for (Py_ssize_t q0 = 0; q0 < cols; q0 += PW_ROWS) {
                Py_ssize_t n = cols - q0 < PW_ROWS ? cols - q0 : PW_ROWS;
                if (itemsize == 4)
                    (p == 2 ? fill_diff_f32_512 : fill_diff_f32_2)(x.buf, r, q0, n, w, c, dr, ca, cb, cp, shift.buf,
                                                                   buf, sum.buf);
                else
                    (p == 2 ? fill_diff_f64_512 : fill_diff_f64_2)(x.buf, r, q0, n, w, c, dr, ca, cb, cp, shift.buf,
                                                                   buf, sum.buf);
#ifdef PW_X86
                (p == 2 ? update_avx512 : update_avx2)(buf, n, cp, acc.buf);
#endif
            }
        }
        Py_END_ALLOW_THREADS
    }
    return finish(buf, ok, (Py_buffer *[]){&x, &shift, &acc, &sum}, "add_differences");
}

static PyMethodDef methods[] = {
    {"add_differences", add_differences, METH_VARARGS,
     "add_differences(x, r0, r1, w, c, itemsize, dr, dc, shift, acc, sum, cp): neighbour differences."},
    {"add_rows", add_rows, METH_VARARGS,
     "add_rows(x, rows, c, itemsize, shift, acc, sum, cp): the shifted rows' products and sums."},
    {"lanes", lanes, METH_NOARGS, "Doubles per vector of the path in use (0: none)."},
    {"instruction_set", instruction_set, METH_NOARGS, "The instruction set the kernel runs with."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scatter", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scatter(void) { return PyModule_Create(&module); }
