/* A viewer's SRTCP feedback datagram decrypted and split in one C call (issues 17 and 20).
 *
 * A Chromium viewer sends transport-cc feedback 10-20 times a second. Through aiortc each one
 * crossed the ICE connection's queue, woke the DTLS transport's task, was decrypted by
 * pylibsrtp (a cffi call, two copies) and walked by three Python wrappers before the estimator
 * saw it: 10-16 us per feedback, 12-20 % of what a viewer costs. The shared port's read
 * callback now hands such a datagram here (relay/rtc/rtcp_reader.py): decrypted with the
 * transport's own receive session (the caller passes the address of pylibsrtp's
 * srtp_unprotect_rtcp and the session's srtp_t, as _rtp_reader.c does with srtp_unprotect) and
 * split into the transport-cc packets' FCIs (for the estimator) and the rest of the compound
 * (for aiortc). relay/media/cc_feedback.py's split_feedback is the reference this is held to
 * (tests/unit/test_rtcp_reader.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define BUF_SIZE 1500 /* pylibsrtp's session buffer: a longer packet is refused there too */
#define RTPFB 205
#define FMT_TRANSPORT_CC 15

typedef int (*unprotect_fn)(void *ctx, void *rtcp, int *len);

/* One compound's packets: -1 when malformed (split leaves it whole), else the number of
 * transport-cc packets; with `taken` and `rest` (sized from a first pass), fills them. */
static int walk(const unsigned char *p, Py_ssize_t n, Py_ssize_t *kept_bytes, PyObject *taken,
                char *rest) {
    int fcis = 0;
    Py_ssize_t pos = 0;
    *kept_bytes = 0;
    while (pos + 4 <= n) {
        unsigned first = p[pos], pt = p[pos + 1];
        Py_ssize_t end = pos + 4 + 4 * (((Py_ssize_t)p[pos + 2] << 8) | p[pos + 3]);
        if ((first >> 6) != 2 || end > n)
            return -1;
        if (pt == RTPFB && (first & 0x1F) == FMT_TRANSPORT_CC) {
            if (end - pos < 12)
                return -1;
            Py_ssize_t stop = end;
            if (first & 0x20) { /* padding: its count in the last byte */
                unsigned pad = p[end - 1];
                if (pad == 0 || (Py_ssize_t)pad > end - pos - 12)
                    return -1;
                stop = end - pad;
            }
            if (taken != NULL) {
                PyObject *fci = PyBytes_FromStringAndSize((const char *)p + pos + 12,
                                                          stop - pos - 12);
                if (fci == NULL)
                    return -2;
                PyTuple_SET_ITEM(taken, fcis, fci);
            }
            fcis++;
        } else {
            if (rest != NULL)
                memcpy(rest + *kept_bytes, p + pos, end - pos);
            *kept_bytes += end - pos;
        }
        pos = end;
    }
    return pos == n ? fcis : -1;
}

/* split_feedback of cc_feedback.py: ((fci, ...), rest) where every transport-cc packet's FCI
 * (after its two SSRCs, without padding) is taken out and rest is the compound without them;
 * ((), the input) when there is none or the compound is malformed (aiortc's path decides). */
static PyObject *split(PyObject *whole, const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t kept_bytes;
    int fcis = walk(p, n, &kept_bytes, NULL, NULL);
    if (fcis <= 0) {
        if (whole != NULL)
            return Py_BuildValue("(()O)", whole);
        return Py_BuildValue("(()y#)", (const char *)p, n);
    }
    PyObject *taken = PyTuple_New(fcis);
    if (taken == NULL)
        return NULL;
    PyObject *rest = PyBytes_FromStringAndSize(NULL, kept_bytes);
    if (rest == NULL) {
        Py_DECREF(taken);
        return NULL;
    }
    if (walk(p, n, &kept_bytes, taken, PyBytes_AS_STRING(rest)) != fcis) {
        Py_DECREF(taken);
        Py_DECREF(rest);
        return NULL;
    }
    return Py_BuildValue("(NN)", taken, rest);
}

typedef struct {
    PyObject_HEAD
    PyObject *session; /* keeps the srtp context alive */
    unprotect_fn unprotect;
    void *ctx;
    unsigned char buf[BUF_SIZE];
} Reader;

static void Reader_dealloc(Reader *self) {
    Py_XDECREF(self->session);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"unprotect_rtcp", "ctx", "session", NULL};
    unsigned long long unprotect, ctx;
    PyObject *session;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKO", kwlist, &unprotect, &ctx, &session))
        return -1;
    if (!unprotect || !ctx) {
        PyErr_SetString(PyExc_ValueError, "null srtp_unprotect_rtcp or context");
        return -1;
    }
    self->unprotect = (unprotect_fn)(uintptr_t)unprotect;
    self->ctx = (void *)(uintptr_t)ctx;
    Py_INCREF(session);
    Py_XSETREF(self->session, session);
    return 0;
}

/* read(data) -> None (not authentic, too long) | ((fci, ...), rest) */
static PyObject *Reader_read(Reader *self, PyObject *arg) {
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &data, &n) < 0)
        return NULL;
    if (n > BUF_SIZE)
        Py_RETURN_NONE;
    memcpy(self->buf, data, n);
    int len = (int)n;
    if (self->unprotect(self->ctx, self->buf, &len) != 0 || len < 0 || len > n)
        Py_RETURN_NONE;
    return split(NULL, self->buf, len);
}

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_O,
     "read(data) -> None (dropped) | ((transport-cc FCI, ...), the rest of the compound)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.rtc._rtcp_reader.RtcpReader",
    .tp_basicsize = sizeof(Reader),
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RtcpReader(unprotect_rtcp, ctx, session): one SRTCP session's decrypt + split",
    .tp_methods = Reader_methods,
    .tp_init = (initproc)Reader_init,
    .tp_new = PyType_GenericNew,
};

/* split(plain) -> ((fci, ...), rest): as cc_feedback.split_feedback */
static PyObject *py_split(PyObject *mod, PyObject *arg) {
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &data, &n) < 0)
        return NULL;
    return split(arg, (const unsigned char *)data, n);
}

static PyMethodDef methods[] = {
    {"split", py_split, METH_O, "split(plain RTCP) -> ((transport-cc FCI, ...), rest)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay.rtc._rtcp_reader", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__rtcp_reader(void) {
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "RtcpReader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
