/* The randomisation draws of policy/randomise.py `uniform`, compiled: BLAKE2b (RFC 7693,
 * unkeyed, 8-byte digest) of `prefix` followed by each id, read as a big-endian number over
 * 2^64. The digests are hashlib's, bit for bit (tested against it); one call hashes every id
 * of a batch without a Python object per id: a bucket of the 1M bench shop (60,000 ids,
 * six draws each) drew in 0.54 s through hashlib. Plain C over the buffer protocol; it
 * lets go of the GIL while it hashes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const uint64_t IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
}; /* rounds 10 and 11 take the first two again */

#define BLOCK 128
#define DIGEST 8

static inline uint64_t rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

/* A little-endian word, whatever this machine's order. */
static inline uint64_t load64(const uint8_t *p)
{
    uint64_t w = 0;
    for (int i = 7; i >= 0; i--)
        w = (w << 8) | p[i];
    return w;
}

#define G(a, b, c, d, x, y)                                                                    \
    do {                                                                                       \
        v[a] += v[b] + (x);                                                                    \
        v[d] = rotr(v[d] ^ v[a], 32);                                                          \
        v[c] += v[d];                                                                          \
        v[b] = rotr(v[b] ^ v[c], 24);                                                          \
        v[a] += v[b] + (y);                                                                    \
        v[d] = rotr(v[d] ^ v[a], 16);                                                          \
        v[c] += v[d];                                                                          \
        v[b] = rotr(v[b] ^ v[c], 63);                                                          \
    } while (0)

/* RFC 7693's F: `counter` bytes hashed once this block is; `last` for the final block. */
static void compress(uint64_t h[8], const uint8_t *block, uint64_t counter, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++)
        m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = IV[i];
    }
    v[12] ^= counter; /* the counter's high word stays 0: no message here nears 2^64 bytes */
    if (last)
        v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = SIGMA[r % 10];
        G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

/* The first (and only) digest word of BLAKE2b-64 of msg[0..len). */
static uint64_t digest_word(const uint8_t *msg, size_t len)
{
    uint64_t h[8];
    memcpy(h, IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ DIGEST; /* depth 1, fanout 1, no key */
    size_t done = 0;
    while (len - done > BLOCK) {
        compress(h, msg + done, done + BLOCK, 0);
        done += BLOCK;
    }
    uint8_t last[BLOCK] = {0};
    memcpy(last, msg + done, len - done);
    compress(h, last, len, 1);
    return h[0];
}

/* The digest's bytes (h[0], little-endian) read as a big-endian number. */
static uint64_t big_endian(uint64_t word)
{
    uint64_t swapped = 0;
    for (int i = 0; i < 8; i++) {
        swapped = (swapped << 8) | (word & 0xff);
        word >>= 8;
    }
    return swapped;
}

/* draws(prefix, data, offsets, n, out): out[k] = BLAKE2b-64(prefix + data[offsets[k]:
 * offsets[k + 1]]) / 2^64 for k < n, as float64; `offsets` int64, n + 1 of them, rising
 * within `data` (an Arrow string column's buffers). */
static PyObject *draws(PyObject *self, PyObject *args)
{
    Py_buffer prefix, data, offsets, out;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*y*nw*", &prefix, &data, &offsets, &n, &out))
        return NULL;
    const int64_t *at = offsets.buf;
    const uint8_t *text = data.buf;
    PyObject *result = NULL;
    uint8_t *message = NULL;
    Py_ssize_t longest = 0;
    int fits = n >= 0 && offsets.len / 8 > n && out.len / 8 >= n && (n == 0 || at[0] >= 0);
    for (Py_ssize_t k = 0; fits && k < n; k++) {
        fits = at[k + 1] >= at[k] && at[k + 1] <= data.len;
        if (fits && at[k + 1] - at[k] > longest)
            longest = at[k + 1] - at[k];
    }
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "draws: offsets, data and out do not fit together");
    } else if ((message = malloc(prefix.len + longest + 1)) == NULL) {
        PyErr_NoMemory();
    } else {
        double *draw = out.buf;
        memcpy(message, prefix.buf, prefix.len);
        Py_BEGIN_ALLOW_THREADS;
        for (Py_ssize_t k = 0; k < n; k++) {
            size_t size = (size_t)(at[k + 1] - at[k]);
            memcpy(message + prefix.len, text + at[k], size);
            /* as numpy's uint64 -> float64 cast, then an exact division by 2^64 */
            draw[k] = (double)big_endian(digest_word(message, prefix.len + size)) * 0x1p-64;
        }
        Py_END_ALLOW_THREADS;
        result = Py_NewRef(Py_None);
    }
    free(message);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"draws", draws, METH_VARARGS,
     "draws(prefix, data, offsets, n, out): BLAKE2b-64 of prefix + each id, over 2^64."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_randomise", NULL, -1, methods};

PyMODINIT_FUNC PyInit__randomise(void) { return PyModule_Create(&module); }
