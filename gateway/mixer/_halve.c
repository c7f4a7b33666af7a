/* Exact 2:1 downscale of a yuv420p picture into a region of another (2x2 box average).
 *
 * The mixer's commonest scale is exactly by half: four 1280x720 anchors into 640x360 grid tiles
 * of a 1280x720 canvas, and the canvas into the 640x360 rendition. libswscale takes its generic
 * filter path for such a tile, whatever the interpolation asked for; averaging 2x2 blocks with
 * SSE2 costs a fraction of that (BENCHMARKS.md, "Code figures"), and for an exact halving the box
 * average is what an area filter computes anyway. Writes exactly the region's bytes, never past a row.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* dst[c] = round(mean of the 2x2 block under it) for c in [0, w) */
static void halve_row(const uint8_t *s0, const uint8_t *s1, uint8_t *d, Py_ssize_t w) {
    Py_ssize_t c = 0;
#ifdef __SSE2__
    const __m128i even = _mm_set1_epi16(0x00FF), two = _mm_set1_epi16(2);
    for (; c + 16 <= w; c += 16) {
        __m128i a0 = _mm_loadu_si128((const __m128i *)(s0 + 2 * c));
        __m128i a1 = _mm_loadu_si128((const __m128i *)(s0 + 2 * c + 16));
        __m128i b0 = _mm_loadu_si128((const __m128i *)(s1 + 2 * c));
        __m128i b1 = _mm_loadu_si128((const __m128i *)(s1 + 2 * c + 16));
        /* pairs summed in 16-bit lanes: even byte + odd byte, row 0 + row 1 */
        __m128i lo = _mm_add_epi16(_mm_add_epi16(_mm_and_si128(a0, even), _mm_srli_epi16(a0, 8)),
                                   _mm_add_epi16(_mm_and_si128(b0, even), _mm_srli_epi16(b0, 8)));
        __m128i hi = _mm_add_epi16(_mm_add_epi16(_mm_and_si128(a1, even), _mm_srli_epi16(a1, 8)),
                                   _mm_add_epi16(_mm_and_si128(b1, even), _mm_srli_epi16(b1, 8)));
        lo = _mm_srli_epi16(_mm_add_epi16(lo, two), 2);
        hi = _mm_srli_epi16(_mm_add_epi16(hi, two), 2);
        _mm_storeu_si128((__m128i *)(d + c), _mm_packus_epi16(lo, hi));
    }
#endif
    for (; c < w; c++)
        d[c] = (uint8_t)((s0[2 * c] + s0[2 * c + 1] + s1[2 * c] + s1[2 * c + 1] + 2) >> 2);
}

/* Checks that a plane of `rows` x `cols` bytes at (x, y) with `stride` lies inside the buffer,
 * without an overflow on the way (every value here comes from Python). */
static int fits(Py_buffer *b, Py_ssize_t stride, Py_ssize_t x, Py_ssize_t y, Py_ssize_t cols,
                Py_ssize_t rows) {
    Py_ssize_t end, last_row, start;
    if (x < 0 || y < 0 || rows <= 0 || cols <= 0 || stride <= 0)
        return 0;
    if (__builtin_add_overflow(x, cols, &end) || end > stride)
        return 0;
    if (__builtin_add_overflow(y, rows - 1, &last_row) ||
        __builtin_mul_overflow(last_row, stride, &start) ||
        __builtin_add_overflow(start, end, &end))
        return 0;
    return end <= b->len;
}

static PyObject *halve(PyObject *self, PyObject *args) {
    PyObject *src, *dst;
    Py_ssize_t ss[3], ds[3], width, height, x, y;
    if (!PyArg_ParseTuple(args, "O(nnn)nnO(nnn)nn", &src, &ss[0], &ss[1], &ss[2], &width, &height,
                          &dst, &ds[0], &ds[1], &ds[2], &x, &y))
        return NULL;
    if (width % 4 || height % 4 || x % 2 || y % 2 || width <= 0 || height <= 0) {
        PyErr_SetString(PyExc_ValueError, "sides must be multiples of 4 and the corner even");
        return NULL;
    }
    if (!PySequence_Check(src) || !PySequence_Check(dst) || PySequence_Size(src) < 3 ||
        PySequence_Size(dst) < 3) {
        PyErr_SetString(PyExc_TypeError, "src and dst are sequences of three planes");
        return NULL;
    }
    Py_buffer sb[3], db[3];
    int got = 0, ok = 1;
    for (; got < 3; got++) {
        PyObject *sp = PySequence_GetItem(src, got), *dp = PySequence_GetItem(dst, got);
        int failed = sp == NULL || dp == NULL || PyObject_GetBuffer(sp, &sb[got], PyBUF_SIMPLE) < 0;
        if (!failed && PyObject_GetBuffer(dp, &db[got], PyBUF_WRITABLE) < 0) {
            PyBuffer_Release(&sb[got]);
            failed = 1;
        }
        Py_XDECREF(sp);
        Py_XDECREF(dp);
        if (failed) {
            ok = 0;
            break;
        }
    }
    if (ok) {
        for (int p = 0; p < 3; p++) {
            Py_ssize_t w = p ? width / 2 : width, h = p ? height / 2 : height;
            Py_ssize_t px = p ? x / 2 : x, py = p ? y / 2 : y;
            if (!fits(&sb[p], ss[p], 0, 0, w, h) || !fits(&db[p], ds[p], px, py, w / 2, h / 2)) {
                PyErr_SetString(PyExc_ValueError, "a plane is smaller than its sides say");
                ok = 0;
                break;
            }
        }
    }
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        for (int p = 0; p < 3; p++) {
            Py_ssize_t w = p ? width / 4 : width / 2, h = p ? height / 4 : height / 2;
            const uint8_t *s = sb[p].buf;
            uint8_t *d = (uint8_t *)db[p].buf + (p ? y / 2 : y) * ds[p] + (p ? x / 2 : x);
            for (Py_ssize_t r = 0; r < h; r++)
                halve_row(s + 2 * r * ss[p], s + (2 * r + 1) * ss[p], d + r * ds[p], w);
        }
        Py_END_ALLOW_THREADS
    }
    for (int p = 0; p < got; p++) {
        PyBuffer_Release(&sb[p]);
        PyBuffer_Release(&db[p]);
    }
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"halve", halve, METH_VARARGS,
     "halve(src_planes, src_strides, width, height, dst_planes, dst_strides, x, y)\n\n"
     "Average 2x2 blocks of the width x height yuv420p picture in src_planes (Y, U, V, each a\n"
     "buffer with its stride) into the (width/2) x (height/2) region at (x, y) of dst_planes.\n"
     "Sides multiples of 4, corner even; every plane is bounds-checked."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway.mixer._halve",
    .m_doc = "Exact 2:1 yuv420p downscale into a region (see _halve.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__halve(void) { return PyModule_Create(&module); }
