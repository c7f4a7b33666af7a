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
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HALVE_AVX2 1
#endif

/* dst[c] = round(mean of the 2x2 block under it) for c in [0, w) */
static void halve_row_sse2(const uint8_t *s0, const uint8_t *s1, uint8_t *d, Py_ssize_t w) {
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

#ifdef HALVE_AVX2
/* The same with AVX2, 32 outputs a step: vpmaddubsw against ones sums each horizontal pair
 * into a 16-bit lane in one instruction (the SSE2 loop needs a mask, a shift and an add), so a
 * step costs about a third of two SSE2 steps: the mixer halves five 1280x720 pictures a frame
 * (four tiles and the 360p rendition), a tenth of its thread's CPU with SSE2 (perf, BENCHMARKS.md).
 * Chosen at import where the CPU has AVX2; the result is the same to the bit. */
__attribute__((target("avx2"))) static void halve_row_avx2(const uint8_t *s0, const uint8_t *s1,
                                                            uint8_t *d, Py_ssize_t w) {
    Py_ssize_t c = 0;
    const __m256i ones = _mm256_set1_epi8(1), two = _mm256_set1_epi16(2);
    for (; c + 32 <= w; c += 32) {
        __m256i a0 = _mm256_loadu_si256((const __m256i *)(s0 + 2 * c));
        __m256i a1 = _mm256_loadu_si256((const __m256i *)(s0 + 2 * c + 32));
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(s1 + 2 * c));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(s1 + 2 * c + 32));
        /* unsigned pixels times signed 1, adjacent products added: pair sums <= 510 */
        __m256i lo = _mm256_add_epi16(_mm256_maddubs_epi16(a0, ones), _mm256_maddubs_epi16(b0, ones));
        __m256i hi = _mm256_add_epi16(_mm256_maddubs_epi16(a1, ones), _mm256_maddubs_epi16(b1, ones));
        lo = _mm256_srli_epi16(_mm256_add_epi16(lo, two), 2);
        hi = _mm256_srli_epi16(_mm256_add_epi16(hi, two), 2);
        /* packus works per 128-bit lane: lo0 hi0 lo1 hi1 -> lo0 lo1 hi0 hi1 */
        __m256i out = _mm256_permute4x64_epi64(_mm256_packus_epi16(lo, hi), 0xD8);
        _mm256_storeu_si256((__m256i *)(d + c), out);
    }
    if (c < w)
        halve_row_sse2(s0 + 2 * c, s1 + 2 * c, d + c, w - c);
}
#endif

typedef void (*row_fn)(const uint8_t *, const uint8_t *, uint8_t *, Py_ssize_t);
static row_fn halve_row = halve_row_sse2;
static const char *kernel_name = "sse2";

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

/* Switches to the kernel `name` ("avx2" or "sse2", the latter meaning whatever the build has
 * without AVX2); 0 where this CPU or build cannot run it. */
static int select_kernel(const char *name) {
    if (strcmp(name, "sse2") == 0) {
        halve_row = halve_row_sse2;
        kernel_name = "sse2";
        return 1;
    }
#ifdef HALVE_AVX2
    if (strcmp(name, "avx2") == 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2")) {
            halve_row = halve_row_avx2;
            kernel_name = "avx2";
            return 1;
        }
    }
#endif
    return 0;
}

static PyObject *kernel(PyObject *self, PyObject *args) {
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|s", &name))
        return NULL;
    if (name != NULL && !select_kernel(name))
        Py_RETURN_NONE;
    return PyUnicode_FromString(kernel_name);
}

static PyMethodDef methods[] = {
    {"kernel", kernel, METH_VARARGS,
     "kernel(name=None) -> str | None\n\n"
     "The row kernel in use (\"avx2\" or \"sse2\"); with a name, switch to it first (None if\n"
     "this CPU or build cannot run it; the kernel in use stays). Both give the same bytes."},
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

PyMODINIT_FUNC PyInit__halve(void) {
    select_kernel("avx2");
    return PyModule_Create(&module);
}
