/* libx264 driven directly for the mixer's renditions, with the quantiser chosen per frame.
 *
 * Through libavcodec x264 runs its own average-bitrate control, and that needs x264's lowres
 * lookahead on every frame (a half-size copy of the picture, its half-pel planes and a motion
 * search on it to estimate the frame's cost) even at rc-lookahead 0: at ultrafast that is about
 * a quarter of a 720p encode (BENCHMARKS.md, "Code figures"). libavcodec's wrapper cannot take a
 * quantiser per frame, so this drives x264 itself in constant-QP mode, where x264 builds no
 * lowres picture, and ``rate_control.QpRateControl`` picks each frame's QP from the sizes of
 * the frames before it. The settings are the PyAV path's: ultrafast, zerolatency, constrained
 * baseline, level 3.1, Annex-B with the headers repeated on every keyframe, one thread.
 * Links the system's libx264 (libx264-dev); where it is not there the build skips this module
 * and ``codecs.VideoEncoder`` keeps PyAV.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <x264.h>

typedef struct {
    PyObject_HEAD
    x264_t *enc;
    int width, height;
    int64_t pts;
} Encoder;

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"width", "height", "fps", "gop", "level", NULL};
    int width, height, fps, gop, level = 31;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiii|i", kwlist, &width, &height, &fps, &gop,
                                     &level))
        return -1;
    if (width <= 0 || height <= 0 || width % 2 || height % 2 || fps <= 0 || gop <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad encoder geometry");
        return -1;
    }
    if (self->enc) {
        x264_encoder_close(self->enc);
        self->enc = NULL;
    }
    x264_param_t p;
    if (x264_param_default_preset(&p, "ultrafast", "zerolatency") < 0) {
        PyErr_SetString(PyExc_RuntimeError, "x264 preset refused");
        return -1;
    }
    p.i_threads = 1;
    p.b_sliced_threads = 0;
    p.i_width = width;
    p.i_height = height;
    p.i_csp = X264_CSP_I420;
    p.i_fps_num = (uint32_t)fps;
    p.i_fps_den = 1;
    p.i_timebase_num = 1;
    p.i_timebase_den = (uint32_t)fps;
    p.b_vfr_input = 0;
    p.i_keyint_max = gop;
    p.i_keyint_min = gop;
    p.i_scenecut_threshold = 0;
    p.b_repeat_headers = 1;
    p.b_annexb = 1;
    p.i_level_idc = level;
    /* Every frame's QP is forced (i_qpplus1), but in constant-QP mode x264 clamps forced QPs to
     * the span of its I, P and B quantisers: qp_constant and 6 * log2 of the I/P and P/B
     * factors around it, each factor at most 10. P at 30 and both factors at 10 give 10..50
     * (QP_LOW..QP_HIGH), wider than the mixer ever asks for. */
    p.rc.i_rc_method = X264_RC_CQP;
    p.rc.i_qp_constant = 30;
    p.rc.f_ip_factor = 10.0f;
    p.rc.f_pb_factor = 10.0f;
    p.i_log_level = X264_LOG_ERROR;
    if (x264_param_apply_profile(&p, "baseline") < 0) {
        PyErr_SetString(PyExc_RuntimeError, "x264 profile refused");
        return -1;
    }
    self->enc = x264_encoder_open(&p);
    if (!self->enc) {
        PyErr_SetString(PyExc_RuntimeError, "x264_encoder_open failed");
        return -1;
    }
    self->width = width;
    self->height = height;
    self->pts = 0;
    return 0;
}

static void Encoder_dealloc(Encoder *self) {
    if (self->enc)
        x264_encoder_close(self->enc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* encode(planes, strides, qp, keyframe) -> (bitstream, is_keyframe)
 * planes: three buffers (Y, U, V of a yuv420p picture of the encoder's size); strides: their
 * line sizes. x264 copies the picture before returning, so the planes may change right after. */
static PyObject *Encoder_encode(Encoder *self, PyObject *args) {
    PyObject *planes;
    Py_ssize_t strides[3];
    int qp, keyframe;
    if (!PyArg_ParseTuple(args, "O(nnn)ip", &planes, &strides[0], &strides[1], &strides[2], &qp,
                          &keyframe))
        return NULL;
    if (!self->enc) {
        PyErr_SetString(PyExc_RuntimeError, "encoder closed");
        return NULL;
    }
    if (qp < 10 || qp > 50) {
        PyErr_SetString(PyExc_ValueError, "qp outside 10..50");
        return NULL;
    }
    Py_buffer b[3];
    int got = 0;
    for (; got < 3; got++) {
        PyObject *plane = PySequence_GetItem(planes, got);
        int failed = plane == NULL || PyObject_GetBuffer(plane, &b[got], PyBUF_SIMPLE) < 0;
        Py_XDECREF(plane);
        if (failed)
            goto fail;
        Py_ssize_t rows = got ? self->height / 2 : self->height;
        Py_ssize_t cols = got ? self->width / 2 : self->width;
        if (strides[got] < cols || b[got].len < (rows - 1) * strides[got] + cols) {
            PyBuffer_Release(&b[got]);
            PyErr_SetString(PyExc_ValueError, "plane smaller than the encoder's picture");
            goto fail;
        }
    }
    x264_picture_t pic, out;
    x264_picture_init(&pic);
    pic.img.i_csp = X264_CSP_I420;
    pic.img.i_plane = 3;
    for (int i = 0; i < 3; i++) {
        pic.img.plane[i] = (uint8_t *)b[i].buf;
        pic.img.i_stride[i] = (int)strides[i];
    }
    pic.i_pts = self->pts++;
    pic.i_type = keyframe ? X264_TYPE_IDR : X264_TYPE_AUTO;
    pic.i_qpplus1 = qp + 1;
    x264_nal_t *nal = NULL;
    int nnal = 0, size;
    Py_BEGIN_ALLOW_THREADS
    size = x264_encoder_encode(self->enc, &nal, &nnal, &pic, &out);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < 3; i++)
        PyBuffer_Release(&b[i]);
    if (size < 0) {
        PyErr_SetString(PyExc_RuntimeError, "x264_encoder_encode failed");
        return NULL;
    }
    /* x264 lays one frame's NAL units out back to back from the first one's payload */
    PyObject *data = PyBytes_FromStringAndSize(size ? (const char *)nal[0].p_payload : "", size);
    if (!data)
        return NULL;
    return Py_BuildValue("(NO)", data, out.b_keyframe && size ? Py_True : Py_False);
fail:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&b[i]);
    return NULL;
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_VARARGS,
     "encode(planes, strides, qp, keyframe) -> (bytes, is_keyframe)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.mixer._x264.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(width, height, fps, gop, level=31): libx264, QP forced per frame",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_x264", "libx264 with a per-frame quantiser", -1, NULL,
};

PyMODINIT_FUNC PyInit__x264(void) {
    if (PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "BUILD", X264_BUILD);
    PyModule_AddIntConstant(m, "QP_LOW", 10);
    PyModule_AddIntConstant(m, "QP_HIGH", 50);
    return m;
}
