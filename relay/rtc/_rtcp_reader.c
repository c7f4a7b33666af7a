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
 *
 * A feedback lane (bind, then take: offered every SRTCP datagram from the viewer's addresses by
 * the shared port's recvmmsg loop, relay/rtc/_udp_batch.c) goes further: a datagram that is
 * transport-cc feedback alone (Chromium's) goes from the socket's buffer to the estimator's
 * TwccState without a Python frame. Python runs only where something happens that Python owns:
 * a compound with other RTCP or a probe cluster waiting for its feedback (`slow`: the port's
 * read-callback path), a malformed FCI or one that reports a loss (`taken`: the estimator's
 * counters and feedback repair), and once a second the transport's counts and consent (`tick`).
 * rtcp_reader.PyFeedbackLane is the reference it is held to (tests/unit/test_feedback_lane.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

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

#define TICK 1.0 /* s between the lane's calls of tick */

typedef struct {
    PyObject_HEAD
    PyObject *session; /* keeps the srtp context alive */
    unprotect_fn unprotect;
    void *ctx;
    /* the feedback lane (bind): NULL until bound */
    PyObject *state;       /* the estimator's TwccState */
    PyObject *take_fci;    /* its take, bound */
    Py_buffer params;      /* the estimator's lane parameters: probe_bps, probe_at, rtt, slow */
    PyObject *taken, *slow, *tick;
    long long rx_bytes, rx_packets, feedbacks; /* since the last tick */
    long long lane_feedbacks;                  /* datagrams the lane took, monotonic */
    double due;
    unsigned char buf[BUF_SIZE];
} Reader;

static void unbind(Reader *self) {
    Py_CLEAR(self->state);
    Py_CLEAR(self->take_fci);
    Py_CLEAR(self->taken);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->tick);
    if (self->params.obj != NULL)
        PyBuffer_Release(&self->params);
}

static void Reader_dealloc(Reader *self) {
    unbind(self);
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

/* bind(state, params, taken, slow, tick): see the top; params is an array('d') of 4 */
static PyObject *Reader_bind(Reader *self, PyObject *args) {
    PyObject *state, *params, *taken, *slow, *tick;
    if (!PyArg_ParseTuple(args, "OOOOO", &state, &params, &taken, &slow, &tick))
        return NULL;
    PyObject *take_fci = PyObject_GetAttrString(state, "take");
    if (take_fci == NULL)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(params, &view, PyBUF_FORMAT) < 0) {
        Py_DECREF(take_fci);
        return NULL;
    }
    if (view.format == NULL || strcmp(view.format, "d") || view.len != 4 * sizeof(double)) {
        PyBuffer_Release(&view);
        Py_DECREF(take_fci);
        PyErr_SetString(PyExc_ValueError, "params: array('d') of 4");
        return NULL;
    }
    unbind(self);
    self->state = Py_NewRef(state);
    self->take_fci = take_fci;
    self->params = view;
    self->taken = Py_NewRef(taken);
    self->slow = Py_NewRef(slow);
    self->tick = Py_NewRef(tick);
    self->due = 0.0;
    Py_RETURN_NONE;
}

static double monotonic(void) { /* time.monotonic's clock on Linux */
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* A callback's failure is reported, never raised: the port's read goes on with the batch. */
static void call_reported(PyObject *fn, PyObject *r) {
    if (r == NULL)
        PyErr_WriteUnraisable(fn);
    Py_XDECREF(r);
}

/* One FCI through TwccState.take; `taken` when it was malformed or reported a loss. */
static void lane_fci(Reader *self, const unsigned char *fci, Py_ssize_t len, double now,
                     const double *pp) {
    PyObject *before = PyObject_GetAttrString(self->state, "lost_packets");
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)fci, len);
    PyObject *args[5] = {bytes, PyFloat_FromDouble(now), PyFloat_FromDouble(pp[0]),
                         PyFloat_FromDouble(pp[1]), PyFloat_FromDouble(pp[2])};
    PyObject *r = NULL, *after = NULL;
    if (before != NULL && bytes != NULL && args[1] && args[2] && args[3] && args[4])
        r = PyObject_Vectorcall(self->take_fci, args, 5, NULL);
    if (r != NULL)
        after = PyObject_GetAttrString(self->state, "lost_packets");
    if (after == NULL) {
        PyErr_WriteUnraisable(self->take_fci);
    } else {
        long code = PyLong_AsLong(r);
        int changed = PyObject_RichCompareBool(before, after, Py_NE);
        if (code == 1 || changed == 1)
            call_reported(self->taken,
                          PyObject_CallFunction(self->taken, "OdlO", bytes, now, code, before));
        else if (changed < 0 || PyErr_Occurred())
            PyErr_WriteUnraisable(self->take_fci);
    }
    for (int i = 0; i < 5; i++)
        Py_XDECREF(args[i]);
    Py_XDECREF(r);
    Py_XDECREF(after);
    Py_XDECREF(before);
}

/* take(data) -> bool: the feedback lane (bind first); see the top. True: handled (or handed to
 * slow); False: not transport-cc feedback, not authentic here, or no lane: the caller's path. */
static PyObject *Reader_take(Reader *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(arg);
    if (self->take_fci == NULL || n < 12 || n > BUF_SIZE || p[1] != RTPFB ||
        (p[0] & 0xDF) != (0x80 | FMT_TRANSPORT_CC))
        Py_RETURN_FALSE;
    memcpy(self->buf, p, n);
    int len = (int)n;
    if (self->unprotect(self->ctx, self->buf, &len) != 0 || len < 0 || len > n)
        Py_RETURN_FALSE; /* replayed, forged, or keys changed: the port's path decides */
    self->rx_bytes += n;
    self->rx_packets++;
    const double *pp = (const double *)self->params.buf;
    Py_ssize_t kept_bytes;
    int fcis = walk(self->buf, len, &kept_bytes, NULL, NULL);
    if (fcis <= 0 || kept_bytes > 0 || pp[3] != 0.0) { /* not a lone feedback, or a probe */
        PyObject *split_ = split(NULL, self->buf, len);
        if (split_ == NULL)
            PyErr_WriteUnraisable(self->slow);
        else
            call_reported(self->slow, PyObject_Call(self->slow, split_, NULL));
        Py_XDECREF(split_);
    } else {
        self->feedbacks++;
        self->lane_feedbacks++;
        double now = monotonic();
        Py_ssize_t pos = 0;
        while (pos < len) { /* every packet a transport-cc one: walk said so */
            const unsigned char *q = self->buf + pos;
            Py_ssize_t end = pos + 4 + 4 * (((Py_ssize_t)q[2] << 8) | q[3]);
            Py_ssize_t stop = (q[0] & 0x20) ? end - self->buf[end - 1] : end;
            lane_fci(self, q + 12, stop - pos - 12, now, pp);
            pos = end;
        }
    }
    double now = monotonic();
    if (now >= self->due) {
        self->due = now + TICK;
        PyObject *r = PyObject_CallFunction(self->tick, "LLLd", self->rx_bytes, self->rx_packets,
                                            self->feedbacks, now);
        self->rx_bytes = self->rx_packets = self->feedbacks = 0;
        call_reported(self->tick, r);
    }
    Py_RETURN_TRUE;
}

static PyObject *Reader_flush(Reader *self, PyObject *unused) {
    if (self->tick != NULL && (self->rx_packets || self->feedbacks)) {
        PyObject *r = PyObject_CallFunction(self->tick, "LLLd", self->rx_bytes, self->rx_packets,
                                            self->feedbacks, monotonic());
        self->rx_bytes = self->rx_packets = self->feedbacks = 0;
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *Reader_get_lane_feedbacks(Reader *self, void *closure) {
    return PyLong_FromLongLong(self->lane_feedbacks);
}

static PyGetSetDef Reader_getset[] = {
    {"lane_feedbacks", (getter)Reader_get_lane_feedbacks, NULL,
     "datagrams the feedback lane took (monotonic)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_O,
     "read(data) -> None (dropped) | ((transport-cc FCI, ...), the rest of the compound)"},
    {"bind", (PyCFunction)Reader_bind, METH_VARARGS,
     "bind(state, params, taken, slow, tick): make take() a feedback lane into state"},
    {"take", (PyCFunction)Reader_take, METH_O,
     "take(data) -> bool: lone transport-cc feedback into the bound TwccState (True)"},
    {"flush", (PyCFunction)Reader_flush, METH_NOARGS, "flush(): the pending counts to tick now"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.rtc._rtcp_reader.RtcpReader",
    .tp_basicsize = sizeof(Reader),
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RtcpReader(unprotect_rtcp, ctx, session): one SRTCP session's decrypt + split",
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
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
