/* Candidate generation's inner loops, one customer's row at a time (see models/products.py).
 *
 * numpy does each of these as several passes over a chunk's dense customers x products
 * arrays (a sort of a sample of every row, masks, a sparse product, then a scatter); here
 * each row is read once or twice while it sits in cache. On the 1M bench shop (5,976
 * products) a chunk of 502 customers' candidates took 35 ms instead of 62. Plain C over the
 * buffer protocol, so there are no numpy headers to build against; each function lets go
 * of the GIL, so chunks run side by side on every core. The Python callers hand over
 * C-ordered arrays of the dtypes each function names.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The k-th largest of a[0..n) (1 <= k <= n), reordering a: Wirth's selection. */
static float kth_largest(float *a, Py_ssize_t n, Py_ssize_t k)
{
    Py_ssize_t lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        float pivot = a[target];
        Py_ssize_t i = lo, j = hi;
        do {
            while (a[i] > pivot)
                i++;
            while (pivot > a[j])
                j--;
            if (i <= j) {
                float swap = a[i];
                a[i] = a[j];
                a[j] = swap;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < target)
            lo = i;
        if (target < i)
            hi = j;
    }
    return a[target];
}

/* The larger of a and b, a NaN only where both are. */
static inline float larger(float a, float b) { return (a > b || b != b) ? a : b; }

#define BLOCK 16 /* columns a block maximum covers */
#define LANES 8  /* independent maxima, so the compiler can keep them in one vector */

/* Buffers for `mark_row`, sized once per call for rows of `width`. */
typedef struct {
    float *maxima;     /* per block */
    float *values;     /* candidates' values, reordered by the selection */
    Py_ssize_t *columns; /* candidates' columns, in order */
} Scratch;

/* Mark, in `mark` (never cleared), where `row` holds one of its k largest values; with
 * `positive`, of its k largest positive values (all of them where it has fewer). `exact`:
 * exactly k, ties at the k-th value going to the first columns; else every tie is kept.
 *
 * The k-th largest of the row's block maxima is at most the row's k-th largest (k maxima
 * are k of its values), so only blocks whose maximum reaches it can hold the row's k
 * largest: typically a few dozen blocks of hundreds are searched. */
static void mark_row(const float *row, Py_ssize_t width, Py_ssize_t k, int positive, int exact,
                     Scratch *scratch, unsigned char *mark)
{
    float floor = positive ? 0.0f : -INFINITY; /* a block maximum above it counts */
    Py_ssize_t blocks = (width + BLOCK - 1) / BLOCK, full = width / BLOCK, eligible = 0;
    for (Py_ssize_t b = 0; b < full; b++) {
        const float *block = row + b * BLOCK;
        float lane[LANES];
        for (int l = 0; l < LANES; l++)
            lane[l] = larger(block[l], block[l + LANES]);
        float m = lane[0];
        for (int l = 1; l < LANES; l++)
            m = larger(lane[l], m);
        scratch->maxima[b] = m;
    }
    if (full < blocks) {
        float m = -INFINITY;
        for (Py_ssize_t j = full * BLOCK; j < width; j++)
            m = larger(row[j], m);
        scratch->maxima[full] = m;
    }
    for (Py_ssize_t b = 0; b < blocks; b++) /* a block all NaN has a NaN maximum: never */
        eligible += scratch->maxima[b] > floor;
    float threshold = -INFINITY; /* values at or above it are candidates */
    if (eligible >= k) {
        Py_ssize_t m = 0;
        for (Py_ssize_t b = 0; b < blocks; b++)
            if (scratch->maxima[b] > floor)
                scratch->values[m++] = scratch->maxima[b];
        if (m >= k)
            threshold = kth_largest(scratch->values, m, k);
    }
    Py_ssize_t n = 0;
    for (Py_ssize_t b = 0; b < blocks; b++) {
        float top = scratch->maxima[b];
        if (!(top >= threshold))
            continue;
        Py_ssize_t stop = b * BLOCK + BLOCK < width ? b * BLOCK + BLOCK : width;
        for (Py_ssize_t j = b * BLOCK; j < stop; j++) {
            float v = row[j];
            scratch->columns[n] = j;
            n += (v >= threshold) & (positive ? v > 0.0f : v == v);
        }
    }
    if (n == 0)
        return;
    if (n <= k) {
        for (Py_ssize_t c = 0; c < n; c++)
            mark[scratch->columns[c]] = 1;
        return;
    }
    for (Py_ssize_t c = 0; c < n; c++)
        scratch->values[c] = row[scratch->columns[c]];
    float kth = kth_largest(scratch->values, n, k);
    Py_ssize_t room = k;
    if (exact)
        for (Py_ssize_t c = 0; c < n; c++)
            room -= row[scratch->columns[c]] > kth;
    for (Py_ssize_t c = 0; c < n; c++) { /* columns in order: the first ties are kept */
        float v = row[scratch->columns[c]];
        if (v > kth || (v == kth && (!exact || room-- > 0)))
            mark[scratch->columns[c]] = 1;
    }
}

/* a * b, or -1 where either is negative or the product overflows. */
static Py_ssize_t times(Py_ssize_t a, Py_ssize_t b)
{
    if (a < 0 || b < 0 || (b > 0 && a > PY_SSIZE_T_MAX / b))
        return -1;
    return a * b;
}

/* Whether each buffer holds at least its number of bytes; else a ValueError naming it. */
static int sized(Py_buffer *buffers, const Py_ssize_t *bytes, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (bytes[i] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: negative or overflowing size", names[i]);
            return 0;
        } else if (buffers[i].len < bytes[i]) {
            PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, not %zd", names[i],
                         buffers[i].len, bytes[i]);
            return 0;
        }
    return 1;
}

static void release(Py_buffer *buffers, int n)
{
    for (int i = 0; i < n; i++)
        PyBuffer_Release(&buffers[i]);
}

/* mark_top(scores, rows, width, k, positive, exact, mark): `mark_row` over each row of the
 * float32 `scores` into the uint8 `mark`, both `rows` x `width`, C order. */
static PyObject *mark_top(PyObject *self, PyObject *args)
{
    Py_buffer b[2]; /* scores, mark */
    Py_ssize_t rows, width, k;
    int positive, exact;
    if (!PyArg_ParseTuple(args, "y*nnnppw*", &b[0], &rows, &width, &k, &positive, &exact, &b[1]))
        return NULL;
    const Py_ssize_t bytes[2] = {times(times(rows, width), sizeof(float)), times(rows, width)};
    const char *const names[2] = {"scores", "mark"};
    Py_ssize_t span = width > 0 ? width : 0;
    Scratch scratch = {malloc(sizeof(float) * (span / BLOCK + 1)),
                       malloc(sizeof(float) * (span + 1)),
                       malloc(sizeof(Py_ssize_t) * (span + 1))};
    PyObject *result = NULL;
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k must not be negative");
    } else if (!sized(b, bytes, names, 2)) {
        /* the error is set */
    } else if (scratch.maxima == NULL || scratch.values == NULL || scratch.columns == NULL) {
        PyErr_NoMemory();
    } else {
        const float *values = b[0].buf;
        unsigned char *marks = b[1].buf;
        Py_BEGIN_ALLOW_THREADS;
        for (Py_ssize_t i = 0; k > 0 && i < rows; i++)
            mark_row(values + i * width, width, k, positive, exact, &scratch, marks + i * width);
        Py_END_ALLOW_THREADS;
        result = Py_NewRef(Py_None);
    }
    free(scratch.maxima);
    free(scratch.values);
    free(scratch.columns);
    release(b, 2);
    return result;
}

/* Whether a CSR matrix of `rows` rows holds together: its row pointers rise from 0 to at most
 * `entries`, and each of its column indices is in [0, columns); else a ValueError. Checked
 * on every call, before any is followed: a wrong matrix must not write past `out`. */
static int pointers_fit(const long long *indptr, Py_ssize_t rows, Py_ssize_t entries,
                        const char *name)
{
    if (rows < 0 || indptr[0] != 0) {
        PyErr_Format(PyExc_ValueError, "%s: not a CSR matrix", name);
        return 0;
    }
    for (Py_ssize_t r = 0; r < rows; r++)
        if (indptr[r + 1] < indptr[r] || indptr[r + 1] > entries) {
            PyErr_Format(PyExc_ValueError, "%s: row %zd's pointers are out of order", name, r);
            return 0;
        }
    return 1;
}

static int csr_fits(const long long *indptr, Py_ssize_t rows, const long long *indices,
                    Py_ssize_t entries, Py_ssize_t columns, const char *name)
{
    if (!pointers_fit(indptr, rows, entries, name))
        return 0;
    for (long long e = 0; e < indptr[rows]; e++)
        if (indices[e] < 0 || indices[e] >= columns) {
            PyErr_Format(PyExc_ValueError, "%s: column %lld is not in [0, %zd)", name,
                         indices[e], columns);
            return 0;
        }
    return 1;
}

/* sparse_product_rows(q_indptr, q_indices, q_data, s_indptr, s_indices, s_data, rows, width,
 * out): query @ similar, both CSR (int64 indptr and indices; float64 query values, float32
 * similar ones), `rows` query rows, into the float32 `out` (`rows` x `width`, C order, every
 * entry written): summed in double, each product's terms in the query row's order, as scipy's
 * sparse product sums them. A row's sums gather in one dense row of doubles, then all of it
 * is written out and cleared: a bench customer's 2,600 terms fall on about 1,200 of 6,000
 * products, and noting which were touched (a branch a term) took longer than the sweep. */
static PyObject *sparse_product_rows(PyObject *self, PyObject *args)
{
    Py_buffer b[7]; /* q_indptr, q_indices, q_data, s_indptr, s_indices, s_data, out */
    Py_ssize_t rows, width;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*nnw*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
                          &rows, &width, &b[6]))
        return NULL;
    const long long *qp = b[0].buf, *qi = b[1].buf, *sp = b[3].buf, *si = b[4].buf;
    Py_ssize_t entries = rows >= 0 && b[0].len >= times(rows + 1, 8) ? (Py_ssize_t)qp[rows] : -1;
    Py_ssize_t s_rows = b[3].len / 8 - 1, s_entries = b[4].len / 8;
    const Py_ssize_t bytes[7] = {times(rows + 1, 8), times(entries, 8), times(entries, 8), 8,
                                 8 * s_entries, 4 * s_entries,
                                 times(times(rows, width), sizeof(float))};
    const char *const names[7] = {"q_indptr", "q_indices", "q_data", "s_indptr",
                                  "s_indices", "s_data", "out"};
    Py_ssize_t space = width > 0 ? width : 1;
    double *sums = calloc(space, sizeof(double));
    PyObject *result = NULL;
    if (!sized(b, bytes, names, 7)) {
        /* the error is set */
    } else if (!csr_fits(qp, rows, qi, entries, s_rows, "query") ||
               !csr_fits(sp, s_rows, si, s_entries, width, "similar")) {
        /* the error is set */
    } else if (sums == NULL) {
        PyErr_NoMemory();
    } else {
        const double *qd = b[2].buf;
        const float *sd = b[5].buf;
        float *dense = b[6].buf;
        Py_BEGIN_ALLOW_THREADS;
        for (Py_ssize_t r = 0; r < rows; r++) {
            for (long long a = qp[r]; a < qp[r + 1]; a++) {
                const double weight = qd[a];
                for (long long e = sp[qi[a]]; e < sp[qi[a] + 1]; e++)
                    sums[si[e]] += weight * (double)sd[e];
            }
            float *row = dense + r * width;
            for (Py_ssize_t t = 0; t < width; t++) {
                row[t] = (float)sums[t];
                sums[t] = 0.0;
            }
        }
        Py_END_ALLOW_THREADS;
        result = Py_NewRef(Py_None);
    }
    free(sums);
    release(b, 7);
    return result;
}

/* Whether key a sorts before key b: ascending, NaN last. */
static inline int before(double a, double b) { return a < b || (a == a && b != b); }

/* Sort the n indices `order` by their `key`, stably, with `scratch` of n/2 + 1 indices: a
 * merge sort, by insertion below 16 (a customer's candidates are a few dozen). */
static void sort_indices(long long *order, Py_ssize_t n, const double *key, long long *scratch)
{
    if (n <= 16) {
        for (Py_ssize_t i = 1; i < n; i++) {
            long long v = order[i];
            Py_ssize_t j = i;
            for (; j > 0 && before(key[v], key[order[j - 1]]); j--)
                order[j] = order[j - 1];
            order[j] = v;
        }
        return;
    }
    Py_ssize_t half = n / 2;
    sort_indices(order, half, key, scratch);
    sort_indices(order + half, n - half, key, scratch);
    if (!before(key[order[half]], key[order[half - 1]]))
        return; /* already in order */
    for (Py_ssize_t i = 0; i < half; i++)
        scratch[i] = order[i];
    Py_ssize_t i = 0, j = half, out = 0; /* out <= j: the right half is read before written */
    while (i < half && j < n)
        order[out++] = before(key[order[j]], key[scratch[i]]) ? order[j++] : scratch[i++];
    while (i < half)
        order[out++] = scratch[i++];
}

/* sort_within(indptr, keys, groups, order): for each of `groups` runs of the float64 `keys`
 * (run g is [indptr[g], indptr[g + 1]), int64 pointers), its positions ascending by key,
 * stably, NaN last, into the int64 `order` (as long as `keys`). A lexsort of every pair, or
 * an argsort of padded rows, sorted the whole chunk where only each customer's few dozen
 * candidates need it. */
static PyObject *sort_within(PyObject *self, PyObject *args)
{
    Py_buffer b[3]; /* indptr, keys, order */
    Py_ssize_t groups;
    if (!PyArg_ParseTuple(args, "y*y*nw*", &b[0], &b[1], &groups, &b[2]))
        return NULL;
    Py_ssize_t entries = b[1].len / sizeof(double);
    const Py_ssize_t bytes[3] = {times(groups + 1, 8), 0, times(entries, 8)};
    const char *const names[3] = {"indptr", "keys", "order"};
    const long long *indptr = b[0].buf;
    long long *scratch = NULL;
    PyObject *result = NULL;
    if (!sized(b, bytes, names, 3) || !pointers_fit(indptr, groups, entries, "indptr")) {
        /* the error is set */
    } else {
        long long widest = 0;
        for (Py_ssize_t g = 0; g < groups; g++)
            if (indptr[g + 1] - indptr[g] > widest)
                widest = indptr[g + 1] - indptr[g];
        scratch = malloc(sizeof(long long) * (widest / 2 + 1));
        if (scratch == NULL) {
            PyErr_NoMemory();
        } else {
            const double *keys = b[1].buf;
            long long *order = b[2].buf;
            Py_BEGIN_ALLOW_THREADS;
            for (Py_ssize_t g = 0; g < groups; g++) {
                for (long long e = indptr[g]; e < indptr[g + 1]; e++)
                    order[e] = e;
                sort_indices(order + indptr[g], indptr[g + 1] - indptr[g], keys, scratch);
            }
            Py_END_ALLOW_THREADS;
            result = Py_NewRef(Py_None);
        }
    }
    free(scratch);
    release(b, 3);
    return result;
}

#define DOT_ROWS 4     /* rows of `a` per block */
#define DOT_COLUMNS 16 /* columns of `bt` per block */
typedef float floats8 __attribute__((vector_size(32))); /* GCC and Clang, any CPU */

/* `dot_rows`' blocks: each entry's products added from k = 0 up, a multiplication then an
 * addition (never fused), so the AVX2 build's bits are the plain one's. */
#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
static void dot_blocks(const float *a, const float *bt, Py_ssize_t rows, Py_ssize_t depth,
                       Py_ssize_t columns, Py_ssize_t width, float *out)
{
    for (Py_ssize_t i = 0; i < rows; i += DOT_ROWS)
        for (Py_ssize_t j = 0; j < columns; j += DOT_COLUMNS) {
            floats8 sums[DOT_ROWS][2] = {{{0}}};
            for (Py_ssize_t k = 0; k < depth; k++) {
                floats8 left, right;
                const float *panel = bt + j * depth + k * DOT_COLUMNS;
                memcpy(&left, panel, sizeof left);
                memcpy(&right, panel + 8, sizeof right);
                for (int r = 0; r < DOT_ROWS; r++) {
                    const float w = a[(i + r) * depth + k];
                    const floats8 spread = {w, w, w, w, w, w, w, w};
                    sums[r][0] += spread * left;
                    sums[r][1] += spread * right;
                }
            }
            Py_ssize_t kept = width - j < DOT_COLUMNS ? width - j : DOT_COLUMNS;
            for (int r = 0; r < DOT_ROWS; r++)
                memcpy(out + (i + r) * width + j, sums[r], sizeof(float) * kept);
        }
}

/* dot_rows(a, bt, rows, depth, columns, width, out): out = a @ b, float32, C order; `a` is
 * rows x depth, `bt` is b (depth x columns) packed as `columns / DOT_COLUMNS` panels, each
 * depth x DOT_COLUMNS, C order, and `out` rows x width, b's first `width` columns. `rows` is a
 * multiple of DOT_ROWS and `columns` of DOT_COLUMNS (the caller pads). Every entry is added by
 * the one block of `dot_blocks`, so its bits depend on its row and column alone: BLAS kernels
 * add in an order that depends on where an entry falls in their tiles (OpenBLAS 0.3.31 on AMD
 * EPYC: by the row's place modulo 12), and a customer's ALS scores differed in the last bits
 * between a bucket and the whole shop. About 1.4 times BLAS's time (20 ms against 14.7 ms for
 * 500 customers x 5,976 products x 64 factors). */
static PyObject *dot_rows(PyObject *self, PyObject *args)
{
    Py_buffer b[3]; /* a, bt, out */
    Py_ssize_t rows, depth, columns, width;
    if (!PyArg_ParseTuple(args, "y*y*nnnnw*", &b[0], &b[1], &rows, &depth, &columns, &width,
                          &b[2]))
        return NULL;
    const Py_ssize_t bytes[3] = {times(times(rows, depth), sizeof(float)),
                                 times(times(depth, columns), sizeof(float)),
                                 times(times(rows, width), sizeof(float))};
    const char *const names[3] = {"a", "bt", "out"};
    PyObject *result = NULL;
    if (rows % DOT_ROWS || columns % DOT_COLUMNS || width < 0 || width > columns) {
        PyErr_SetString(PyExc_ValueError,
                        "rows and columns must be padded to whole blocks, width within them");
    } else if (sized(b, bytes, names, 3)) {
        const float *a = b[0].buf, *bt = b[1].buf;
        float *out = b[2].buf;
        Py_BEGIN_ALLOW_THREADS
        dot_blocks(a, bt, rows, depth, columns, width, out);
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    }
    release(b, 3);
    return result;
}

static PyMethodDef methods[] = {
    {"dot_rows", dot_rows, METH_VARARGS,
     "dot_rows(a, bt, rows, depth, columns, width, out): a @ b, each entry added in one order."},
    {"mark_top", mark_top, METH_VARARGS,
     "mark_top(scores, rows, width, k, positive, exact, mark): mark each row's k largest."},
    {"sparse_product_rows", sparse_product_rows, METH_VARARGS,
     "sparse_product_rows(q_indptr, q_indices, q_data, s_indptr, s_indices, s_data, rows, "
     "width, out): a CSR product, dense."},
    {"sort_within", sort_within, METH_VARARGS,
     "sort_within(indptr, keys, groups, order): each run's positions by key, stably."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
