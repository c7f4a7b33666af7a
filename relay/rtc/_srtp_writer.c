/* One viewer's RTP send loop in C: number, encrypt and send a frame's packets in one call.
 *
 * The fan-out spends its CPU per packet and viewer. In Python each packet cost a slice copy, a
 * struct.pack_into, a cffi call and (per run) a socket call with its argument parsing: about half
 * of the server's CPU at 150 viewers, more than the kernel's send path. This module does the same
 * work (see relay/rtc/adapter.py, _PySrtpWriter, which stays as the fallback and the
 * reference) with one Python call per frame and viewer.
 *
 * libsrtp is the one pylibsrtp carries: the caller passes the address of its srtp_protect and
 * the viewer's srtp_t, so the keys stay in aiortc's session and no second libsrtp is linked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define BUF_SIZE 65536
#define TAG_ROOM (16 + 128) /* the longest SRTP trailer: a GCM tag and an MKI (pylibsrtp) */

typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

typedef struct {
    PyObject_HEAD
    PyObject *sock;    /* the socket.socket whose descriptor we send on: kept alive, asked each call */
    PyObject *session; /* keeps the srtp context alive */
    protect_fn protect;
    void *ctx;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int gso_refused;
    unsigned char *buf;
    /* an estimator's SendLog (relay/media/estimator.py), when bound (record_into): its history
     * arrays, next transport-wide sequence number and bytes-sent meter, written by send_recorded */
    int logged;
    Py_buffer log_seqs, log_times, log_sizes, log_acked, log_next, log_meter;
} Writer;

/* the meter's state: relay/media/estimator.py's _Buckets (BUCKET .. COUNTS, then SLOTS counts) */
enum { M_BUCKET, M_CURRENT, M_STARTED, M_START, M_WIDTH, M_COUNTS };
#define M_SLOTS 10

static PyObject *fileno_name;

static void release_log(Writer *self) {
    if (!self->logged)
        return;
    self->logged = 0;
    PyBuffer_Release(&self->log_seqs);
    PyBuffer_Release(&self->log_times);
    PyBuffer_Release(&self->log_sizes);
    PyBuffer_Release(&self->log_acked);
    PyBuffer_Release(&self->log_next);
    PyBuffer_Release(&self->log_meter);
}

static void Writer_dealloc(Writer *self) {
    release_log(self);
    Py_XDECREF(self->sock);
    Py_XDECREF(self->session);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Fills `out_addr` and `out_len` only on success. */
static int parse_addr(PyObject *addr, struct sockaddr_storage *out_addr, socklen_t *out_len) {
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyArg_ParseTuple(addr, "si|II", &host, &port, &flowinfo, &scope_id))
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    struct sockaddr_storage out;
    memset(&out, 0, sizeof(out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *out_len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        v6->sin6_flowinfo = htonl(flowinfo);
        v6->sin6_scope_id = scope_id;
        *out_len = sizeof(*v6);
    } else {
        PyErr_Format(PyExc_ValueError, "not a numeric IP address: %s", host);
        return -1;
    }
    *out_addr = out;
    return 0;
}

static int Writer_init(Writer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"sock", "addr", "protect", "ctx", "session", NULL};
    PyObject *sock, *addr, *session;
    unsigned long long protect, ctx;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!KKO", kwlist, &sock, &PyTuple_Type, &addr,
                                     &protect, &ctx, &session))
        return -1;
    if (!protect || !ctx) {
        PyErr_SetString(PyExc_ValueError, "null srtp_protect or context");
        return -1;
    }
    if (parse_addr(addr, &self->addr, &self->addrlen) < 0)
        return -1;
    if (self->buf == NULL) {
        self->buf = PyMem_Malloc(BUF_SIZE);
        if (self->buf == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_INCREF(sock);
    Py_XSETREF(self->sock, sock);
    Py_INCREF(session);
    Py_XSETREF(self->session, session);
    self->protect = (protect_fn)(uintptr_t)protect;
    self->ctx = (void *)(uintptr_t)ctx;
    self->gso_refused = 0;
    return 0;
}

static int current_fd(Writer *self) {
    /* asked every call: a closed socket says -1, never a descriptor since reused elsewhere */
    PyObject *fd = PyObject_CallMethodNoArgs(self->sock, fileno_name);
    if (fd == NULL)
        return -1;
    long value = PyLong_AsLong(fd);
    Py_DECREF(fd);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < 0) {
        errno = EBADF;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return (int)value;
}

static ssize_t send_gso(Writer *self, int fd, size_t length, uint16_t segment) {
    struct iovec iov = {.iov_base = self->buf, .iov_len = length};
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {
        .msg_name = &self->addr,
        .msg_namelen = self->addrlen,
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof(control.buf),
    };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(cm), &segment, sizeof(segment));
    return sendmsg(fd, &msg, 0);
}

/* An int in [0, max] (as struct.pack_into would insist), or 0 with an exception set. */
static int u32_arg(PyObject *arg, unsigned long max, const char *name, unsigned long *out) {
    unsigned long value = PyLong_AsUnsignedLong(arg);
    if (value == (unsigned long)-1 && PyErr_Occurred())
        return 0;
    if (value > max) {
        PyErr_Format(PyExc_OverflowError, "%s out of range", name);
        return 0;
    }
    *out = value;
    return 1;
}

/* Errors of a UDP GSO send that mean "not on this path" (kernel, device or socket option). */
static int gso_refusal(int err) {
    return err == EIO || err == EINVAL || err == EOPNOTSUPP || err == ENOPROTOOPT;
}

/* The frame's packets numbered, encrypted and sent (see Writer_send): the GSO sends made, or -1
 * with an exception set. */
static long send_packets(Writer *self, PyObject *templates, PyObject *runs, unsigned long seq,
                         unsigned long ts, unsigned long ssrc, int gso, unsigned long twcc_offset,
                         unsigned long twcc_seq) {
    int fd = current_fd(self);
    if (fd < 0)
        return -1;
    Py_ssize_t count = PyTuple_GET_SIZE(templates);
    long sends = 0;
    unsigned char *buf = self->buf;
    for (Py_ssize_t r = 0; r < PyTuple_GET_SIZE(runs); r++) {
        PyObject *run = PyTuple_GET_ITEM(runs, r);
        if (!PyTuple_Check(run) || PyTuple_GET_SIZE(run) != 2) {
            PyErr_SetString(PyExc_TypeError, "a run is a (start, end) tuple");
            return -1;
        }
        Py_ssize_t start = PyLong_AsSsize_t(PyTuple_GET_ITEM(run, 0));
        Py_ssize_t end = PyLong_AsSsize_t(PyTuple_GET_ITEM(run, 1));
        if (PyErr_Occurred())
            return -1;
        if (start < 0 || end > count || start >= end) {
            PyErr_SetString(PyExc_ValueError, "run out of the frame's packets");
            return -1;
        }
        size_t offset = 0;
        Py_ssize_t n = 0;
        int protected_len = 0;
        for (Py_ssize_t i = start; i < end; i++) {
            PyObject *template = PyTuple_GET_ITEM(templates, i);
            if (!PyBytes_Check(template)) {
                PyErr_SetString(PyExc_TypeError, "templates must be bytes");
                return -1;
            }
            n = PyBytes_GET_SIZE(template);
            if (n < 12) {
                PyErr_SetString(PyExc_ValueError, "an RTP packet is at least 12 bytes");
                return -1;
            }
            if (offset + (size_t)n > BUF_SIZE - TAG_ROOM) {
                PyErr_SetString(PyExc_ValueError, "RTP packets too large for the SRTP buffer");
                return -1;
            }
            unsigned char *p = buf + offset;
            memcpy(p, PyBytes_AS_STRING(template), (size_t)n);
            uint16_t s = htons((uint16_t)seq);
            uint32_t t = htonl((uint32_t)ts), c = htonl((uint32_t)ssrc);
            memcpy(p + 2, &s, 2);
            memcpy(p + 4, &t, 4);
            memcpy(p + 8, &c, 4);
            seq = (seq + 1) & 0xFFFF;
            if (twcc_offset) {
                if (twcc_offset + 2 > (size_t)n) {
                    PyErr_SetString(PyExc_ValueError,
                                    "transport-wide sequence number beyond the packet");
                    return -1;
                }
                uint16_t w = htons((uint16_t)twcc_seq);
                memcpy(p + twcc_offset, &w, 2);
                twcc_seq = (twcc_seq + 1) & 0xFFFF;
            }
            protected_len = (int)n;
            int status = self->protect(self->ctx, p, &protected_len);
            if (status) {
                PyErr_Format(PyExc_RuntimeError, "srtp_protect failed: %d", status);
                return -1;
            }
            offset += (size_t)protected_len;
        }
        int tag = protected_len - (int)n; /* every packet gets the same tag */
        if (end - start > 1 && gso) {
            size_t first = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(templates, start));
            if (send_gso(self, fd, offset, (uint16_t)(first + (size_t)tag)) >= 0) {
                sends++;
                continue;
            }
            if (!gso_refusal(errno)) {
                PyErr_SetFromErrno(PyExc_OSError); /* EAGAIN: BlockingIOError */
                return -1;
            }
            /* no UDP GSO on this path: this run one datagram per call, and the caller stops asking */
            self->gso_refused = 1;
            gso = 0;
        }
        size_t at = 0;
        for (Py_ssize_t i = start; i < end; i++) {
            size_t size = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(templates, i)) + (size_t)tag;
            if (sendto(fd, buf + at, size, 0, (struct sockaddr *)&self->addr, self->addrlen) < 0) {
                PyErr_SetFromErrno(PyExc_OSError);
                return -1;
            }
            at += size;
        }
    }
    return sends;
}

/* send()'s and send_recorded()'s common arguments: templates, runs, seq, ts, ssrc, gso; 0 with
 * an exception set. */
static int frame_args(Writer *self, PyObject *const *args, unsigned long *seq, unsigned long *ts,
                      unsigned long *ssrc, int *gso) {
    if (!PyTuple_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "templates and runs must be tuples");
        return 0;
    }
    if (self->buf == NULL || self->sock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SrtpWriter.__init__ was not called");
        return 0;
    }
    if (!u32_arg(args[2], 0xFFFF, "seq", seq) || !u32_arg(args[3], 0xFFFFFFFF, "ts", ts) ||
        !u32_arg(args[4], 0xFFFFFFFF, "ssrc", ssrc))
        return 0;
    *gso = PyObject_IsTrue(args[5]);
    return *gso >= 0;
}

static PyObject *Writer_send(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "send(templates, runs, seq, ts, ssrc, gso[, twcc_offset, twcc_seq])");
        return NULL;
    }
    unsigned long seq, ts, ssrc;
    int gso;
    if (!frame_args(self, args, &seq, &ts, &ssrc, &gso))
        return NULL;
    /* the transport-wide sequence number extension's value: its offset in every template (0:
     * not negotiated) and the number the first packet gets */
    unsigned long twcc_offset = 0, twcc_seq = 0;
    if (nargs == 8 && (!u32_arg(args[6], BUF_SIZE, "twcc_offset", &twcc_offset) ||
                       !u32_arg(args[7], 0xFFFF, "twcc_seq", &twcc_seq)))
        return NULL;
    long sends = send_packets(self, args[0], args[1], seq, ts, ssrc, gso, twcc_offset, twcc_seq);
    return sends < 0 ? NULL : PyLong_FromLong(sends);
}

/* Python's floor modulo for the meter's slots (a bucket number may be negative in tests). */
static long floor_mod(long a, long m) {
    long r = a % m;
    return r < 0 ? r + m : r;
}

/* _Buckets.add(now, value), in the same arithmetic. */
static void meter_add(double *m, double now, double value) {
    double bucket = trunc(now / m[M_WIDTH]); /* Python's int(): toward zero */
    if (bucket != m[M_BUCKET]) {
        if (!m[M_STARTED]) {
            m[M_STARTED] = 1.0;
            m[M_START] = now;
        }
        long current = (long)m[M_BUCKET], b_new = (long)bucket;
        if (b_new > current) {
            m[M_COUNTS + floor_mod(current, M_SLOTS)] = m[M_CURRENT];
            long stop = b_new < current + M_SLOTS + 1 ? b_new : current + M_SLOTS + 1;
            for (long b = current + 1; b < stop; b++)
                m[M_COUNTS + floor_mod(b, M_SLOTS)] = 0.0;
        }
        m[M_BUCKET] = bucket;
        m[M_CURRENT] = 0.0;
    }
    m[M_CURRENT] += value;
}

/* One of SendLog's arrays as a writable buffer of `format` and `items` items (0: any count). */
static int log_buffer(PyObject *log, const char *name, const char *format, Py_ssize_t itemsize,
                      Py_ssize_t items, Py_buffer *out) {
    PyObject *obj = PyObject_GetAttrString(log, name);
    if (obj == NULL)
        return -1;
    int flags = PyBUF_WRITABLE | (format ? PyBUF_FORMAT : 0);
    int bad = PyObject_GetBuffer(obj, out, flags);
    Py_DECREF(obj);
    if (bad)
        return -1;
    if ((format && strcmp(out->format, format)) || out->len % itemsize ||
        (items && out->len != items * itemsize)) {
        PyErr_Format(PyExc_ValueError, "SendLog.%s: wrong type or length", name);
        PyBuffer_Release(out);
        return -1;
    }
    return 0;
}

static PyObject *Writer_record_into(Writer *self, PyObject *log) {
    release_log(self);
    PyObject *meter = PyObject_GetAttrString(log, "meter");
    if (meter == NULL)
        return NULL;
    Py_buffer b[6];
    int got = 0;
    if (log_buffer(log, "seqs", "l", sizeof(long), 0, &b[got]) == 0 && ++got &&
        log_buffer(log, "times", "d", sizeof(double), 0, &b[got]) == 0 && ++got &&
        log_buffer(log, "sizes", "l", sizeof(long), 0, &b[got]) == 0 && ++got &&
        log_buffer(log, "acked", NULL, 1, 0, &b[got]) == 0 && ++got &&
        log_buffer(log, "next", "l", sizeof(long), 1, &b[got]) == 0 && ++got &&
        log_buffer(meter, "state", "d", sizeof(double), M_COUNTS + M_SLOTS, &b[got]) == 0)
        ++got;
    Py_DECREF(meter);
    Py_ssize_t history = got == 6 ? b[3].len : 0;
    if (got == 6 && (history == 0 || (history & (history - 1)) ||
                     b[0].len != history * (Py_ssize_t)sizeof(long) ||
                     b[1].len != history * (Py_ssize_t)sizeof(double) ||
                     b[2].len != history * (Py_ssize_t)sizeof(long) ||
                     !(((double *)b[5].buf)[M_WIDTH] > 0))) {
        PyErr_SetString(PyExc_ValueError, "SendLog: history arrays of one power-of-two length");
        got = -got;
    }
    if (got != 6) {
        for (int i = 0; i < (got < 0 ? -got : got); i++)
            PyBuffer_Release(&b[i]);
        return NULL;
    }
    self->log_seqs = b[0];
    self->log_times = b[1];
    self->log_sizes = b[2];
    self->log_acked = b[3];
    self->log_next = b[4];
    self->log_meter = b[5];
    self->logged = 1;
    Py_RETURN_NONE;
}

static PyObject *Writer_send_recorded(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "send_recorded(templates, runs, seq, ts, ssrc, gso, "
                                         "twcc_offset, now, size)");
        return NULL;
    }
    if (!self->logged) {
        PyErr_SetString(PyExc_RuntimeError, "send_recorded before record_into");
        return NULL;
    }
    unsigned long seq, ts, ssrc, twcc_offset;
    int gso;
    if (!frame_args(self, args, &seq, &ts, &ssrc, &gso) ||
        !u32_arg(args[6], BUF_SIZE, "twcc_offset", &twcc_offset))
        return NULL;
    double now = PyFloat_AsDouble(args[7]);
    long size = PyLong_AsLong(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (!twcc_offset) {
        PyErr_SetString(PyExc_ValueError, "send_recorded needs the transport-wide number's offset");
        return NULL;
    }
    /* recorded before the send, as estimator.record was: a packet a full buffer kept back
     * reads as lost */
    PyObject *templates = args[0];
    Py_ssize_t count = PyTuple_GET_SIZE(templates);
    for (Py_ssize_t k = 0; k < count; k++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(templates, k))) {
            PyErr_SetString(PyExc_TypeError, "templates must be bytes");
            return NULL;
        }
    long *next = self->log_next.buf, *seq_of = self->log_seqs.buf, *size_of = self->log_sizes.buf;
    double *time_of = self->log_times.buf;
    unsigned char *acked_of = self->log_acked.buf;
    long mask = (long)self->log_acked.len - 1;
    long first = *next & 0xFFFF, number = first;
    for (Py_ssize_t k = 0; k < count; k++) {
        long i = number & mask;
        seq_of[i] = number;
        time_of[i] = now;
        size_of[i] = (long)PyBytes_GET_SIZE(PyTuple_GET_ITEM(templates, k));
        acked_of[i] = 0;
        number = (number + 1) & 0xFFFF;
    }
    *next = number;
    long sends = send_packets(self, templates, args[1], seq, ts, ssrc, gso, twcc_offset,
                              (unsigned long)first);
    if (sends < 0)
        return NULL;
    meter_add(self->log_meter.buf, now, (double)size);
    return PyLong_FromLong(sends);
}

static PyObject *Writer_get_gso_refused(Writer *self, void *closure) {
    return PyBool_FromLong(self->gso_refused);
}

static PyMethodDef Writer_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Writer_send, METH_FASTCALL,
     "send(templates, runs, seq, ts, ssrc, gso[, twcc_offset, twcc_seq]) -> GSO sends made\n\n"
     "Number, encrypt and send a frame's packets: each run of two or more as one UDP GSO send\n"
     "(with twcc_offset, packet i also gets transport-wide sequence number twcc_seq + i there);\n"
     "(gso), the rest one datagram per call. A kernel that refuses GSO sets gso_refused (the\n"
     "frame still goes out datagram by datagram); BlockingIOError and other socket errors raise."},
    {"record_into", (PyCFunction)Writer_record_into, METH_O,
     "record_into(log): bind an estimator's SendLog (relay/media/estimator.py) for send_recorded."},
    {"send_recorded", (PyCFunction)(void (*)(void))Writer_send_recorded, METH_FASTCALL,
     "send_recorded(templates, runs, seq, ts, ssrc, gso, twcc_offset, now, size) -> GSO sends\n\n"
     "send() numbered from the bound SendLog's next transport-wide number, each packet recorded\n"
     "in its history (sent at now) before the send, and size bytes added to its meter after it:\n"
     "estimator.record, send and estimator.add_sent in one call (record_sent is the reference)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"gso_refused", (getter)Writer_get_gso_refused, NULL, "the kernel refused a UDP GSO send", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.rtc._srtp_writer.SrtpWriter",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SrtpWriter(sock, addr, protect, ctx, session): one viewer's SRTP send loop.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
    .tp_getset = Writer_getset,
};

/* ULPFEC (RFC 5109) parity over plain RTP packets: relay/media/ulpfec.py's fec_payload, which
 * stays the reference (tests/unit/test_ulpfec.py holds this to it). Every lossy viewer with
 * red + ulpfec XORs each media packet it is sent once more; in Python that was most of the
 * parity's cost (int.from_bytes per packet). */
static PyObject *ulpfec_parity(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "ulpfec_parity(packets, mask, bits, seq_base)");
        return NULL;
    }
    PyObject *packets = args[0];
    if (!PyList_Check(packets)) {
        PyErr_SetString(PyExc_TypeError, "packets must be a list of bytes");
        return NULL;
    }
    unsigned long long mask = PyLong_AsUnsignedLongLong(args[1]);
    if (mask == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    long bits = PyLong_AsLong(args[2]);
    long base = PyLong_AsLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if ((bits != 16 && bits != 48) || base < 0 || base > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "bits is 16 or 48, seq_base 16 bits");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(packets);
    if (count > bits) {
        PyErr_SetString(PyExc_ValueError, "more packets than mask bits");
        return NULL;
    }
    size_t longest = 0;
    int chosen = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *p = PyList_GET_ITEM(packets, i);
        if (!PyBytes_Check(p) || PyBytes_GET_SIZE(p) < 12) {
            PyErr_SetString(PyExc_ValueError, "packets must be RTP packets (bytes of 12 or more)");
            return NULL;
        }
        if (!(mask >> (bits - 1 - i) & 1))
            continue;
        chosen++;
        size_t body = (size_t)PyBytes_GET_SIZE(p) - 12;
        if (body > longest)
            longest = body;
    }
    if (!chosen) {
        PyErr_SetString(PyExc_ValueError, "the mask protects none of the packets");
        return NULL;
    }
    size_t head = 10 + 2 + (size_t)bits / 8;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(head + longest));
    if (out == NULL)
        return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    memset(o, 0, head + longest);
    unsigned char b0 = 0, b1 = 0, ts[4] = {0, 0, 0, 0};
    unsigned int length = 0;
    unsigned char *parity = o + head;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!(mask >> (bits - 1 - i) & 1))
            continue;
        PyObject *p = PyList_GET_ITEM(packets, i);
        const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(p);
        size_t n = (size_t)PyBytes_GET_SIZE(p) - 12;
        b0 ^= d[0];
        b1 ^= d[1];
        for (int k = 0; k < 4; k++)
            ts[k] ^= d[4 + k];
        length ^= (unsigned int)n & 0xFFFF;
        const unsigned char *body = d + 12;
        size_t k = 0;
        for (; k + 8 <= n; k += 8) {
            uint64_t a, b;
            memcpy(&a, parity + k, 8);
            memcpy(&b, body + k, 8);
            a ^= b;
            memcpy(parity + k, &a, 8);
        }
        for (; k < n; k++)
            parity[k] ^= body[k];
    }
    o[0] = (unsigned char)((b0 & 0x3F) | (bits == 48 ? 0x40 : 0));
    o[1] = b1;
    o[2] = (unsigned char)(base >> 8);
    o[3] = (unsigned char)base;
    memcpy(o + 4, ts, 4);
    o[8] = (unsigned char)(length >> 8);
    o[9] = (unsigned char)length;
    o[10] = (unsigned char)(longest >> 8);
    o[11] = (unsigned char)longest;
    for (long k = 0; k < bits / 8; k++)
        o[12 + k] = (unsigned char)(mask >> (bits - 8 - 8 * k));
    return out;
}

static PyMethodDef module_methods[] = {
    {"ulpfec_parity", (PyCFunction)(void (*)(void))ulpfec_parity, METH_FASTCALL,
     "ulpfec_parity(packets, mask, bits, seq_base) -> bytes\n\n"
     "One ULPFEC packet (FEC header, level-0 ULP header, parity) over the plain RTP packets\n"
     "whose mask bit is set (bit i from the most significant of a bits-bit mask)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay.rtc._srtp_writer",
    .m_doc = "One viewer's RTP send loop in C (see _srtp_writer.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__srtp_writer(void) {
    fileno_name = PyUnicode_InternFromString("fileno");
    if (fileno_name == NULL || PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "SrtpWriter", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
