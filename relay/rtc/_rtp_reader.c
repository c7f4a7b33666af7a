/* An anchor's SRTP packet decrypted and parsed in one C call (issue 20: the receive path).
 *
 * Per received packet, Python spent more on pylibsrtp's unprotect (a cffi call, two copies) and
 * aiortc's RtpPacket.parse (struct unpacks, a list of header extensions, a dataclass) than on
 * the decryption itself. This does both in one call and returns the same aiortc RtpPacket
 * (relay/rtc/rtp_reader.py, PyRtpReader, is the fallback and the reference the tests hold this
 * to). libsrtp is the one pylibsrtp carries: the caller passes the address of its
 * srtp_unprotect and the session's srtp_t (as _srtp_writer.c does with srtp_protect).
 *
 * Header extension ids are read from aiortc's HeaderExtensionsMap ids object at each call (it
 * is configured when receivers register, after the reader exists).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

#define BUF_SIZE 1500 /* pylibsrtp's session buffer: a longer packet is refused there too */

typedef int (*unprotect_fn)(void *ctx, void *rtp, int *len);

enum { X_MID, X_RRID, X_RID, X_AST, X_TOFF, X_LEVEL, X_TWCC, X_COUNT };
static const char *ext_names[X_COUNT] = {
    "mid", "repaired_rtp_stream_id", "rtp_stream_id", "abs_send_time",
    "transmission_offset", "audio_level", "transport_sequence_number",
};
static PyObject *ext_strs[X_COUNT];
static PyObject *s_csrc, *s_extensions, *s_padding_size;
static PyObject *s_sequence_number, *s_timestamp, *s_time, *time_module;

/* A lane: one received SSRC whose in-order packets are handled wholly here (see "Lanes" below). */
#define MAX_LANES 8
#define LANE_FLUSH 32 /* packets a lane hands its counts to Python after at most */
typedef struct {
    uint32_t ssrc;
    int pt;
    int depay;         /* 0: the payload itself, 1: H264, 2: VP8 */
    PyObject *ssrc_obj;
    PyObject *stats;   /* a StreamStatistics of this module */
    PyObject *push;    /* the reorder core's bound push */
    PyObject *trackers; /* NackRequests' dict by SSRC, or NULL */
    PyObject *tracker; /* the NackTracker expected there */
    PyObject *handler; /* Python, per frame and every LANE_FLUSH packets */
    long long packets, bytes;
    long last_seq;
    double last_now;
} Lane;

typedef struct {
    PyObject_HEAD
    PyObject *session; /* keeps the srtp context alive */
    PyObject *ids;     /* aiortc HeaderExtensions holding the negotiated ids */
    PyObject *packet_cls;
    PyObject *extensions_cls;
    unprotect_fn unprotect;
    void *ctx;
    unsigned char buf[BUF_SIZE];
    Lane lanes[MAX_LANES];
    int nlanes;
    long long rx_bytes, rx_packets; /* datagrams since the last handler call (any lane) */
    long long fast;                 /* packets handled wholly here (lanes) */
} Reader;

static void lane_clear(Lane *lane) {
    Py_CLEAR(lane->ssrc_obj);
    Py_CLEAR(lane->stats);
    Py_CLEAR(lane->push);
    Py_CLEAR(lane->trackers);
    Py_CLEAR(lane->tracker);
    Py_CLEAR(lane->handler);
}

static int Reader_traverse(Reader *self, visitproc visit, void *arg) {
    Py_VISIT(self->session);
    Py_VISIT(self->ids);
    Py_VISIT(self->packet_cls);
    Py_VISIT(self->extensions_cls);
    for (int i = 0; i < self->nlanes; i++) {
        Lane *lane = &self->lanes[i];
        Py_VISIT(lane->stats);
        Py_VISIT(lane->push);
        Py_VISIT(lane->trackers);
        Py_VISIT(lane->tracker);
        Py_VISIT(lane->handler);
    }
    return 0;
}

static int Reader_clear(Reader *self) {
    for (int i = 0; i < self->nlanes; i++)
        lane_clear(&self->lanes[i]);
    self->nlanes = 0;
    return 0;
}

static void Reader_dealloc(Reader *self) {
    PyObject_GC_UnTrack(self);
    Reader_clear(self);
    Py_XDECREF(self->session);
    Py_XDECREF(self->ids);
    Py_XDECREF(self->packet_cls);
    Py_XDECREF(self->extensions_cls);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"unprotect", "ctx", "session", "ids", "packet_cls",
                             "extensions_cls", NULL};
    unsigned long long unprotect, ctx;
    PyObject *session, *ids, *packet_cls, *extensions_cls;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKOOOO", kwlist, &unprotect, &ctx, &session,
                                     &ids, &packet_cls, &extensions_cls))
        return -1;
    if (!unprotect || !ctx) {
        PyErr_SetString(PyExc_ValueError, "null srtp_unprotect or context");
        return -1;
    }
    self->unprotect = (unprotect_fn)(uintptr_t)unprotect;
    self->ctx = (void *)(uintptr_t)ctx;
    Py_INCREF(session);
    Py_XSETREF(self->session, session);
    Py_INCREF(ids);
    Py_XSETREF(self->ids, ids);
    Py_INCREF(packet_cls);
    Py_XSETREF(self->packet_cls, packet_cls);
    Py_INCREF(extensions_cls);
    Py_XSETREF(self->extensions_cls, extensions_cls);
    return 0;
}

/* The negotiated id of each extension (0: none; aiortc's None, or anything not a small int). */
static int read_ids(Reader *self, int ids[X_COUNT]) {
    for (int i = 0; i < X_COUNT; i++) {
        PyObject *v = PyObject_GetAttr(self->ids, ext_strs[i]);
        if (v == NULL)
            return -1;
        ids[i] = 0;
        if (PyLong_Check(v)) {
            long id = PyLong_AsLong(v);
            if (id > 0 && id < 256)
                ids[i] = (int)id;
            else if (id == -1 && PyErr_Occurred())
                PyErr_Clear();
        }
        Py_DECREF(v);
    }
    return 0;
}

/* One extension's value as aiortc's HeaderExtensionsMap.get makes it: 1 set, 0 not ours,
 * -2 a value aiortc's parser would raise on (the packet is dropped), -1 a Python error. */
static int set_extension(PyObject *exts, const int ids[X_COUNT], int id, const unsigned char *v,
                         int len) {
    int which = -1;
    if (id <= 0)
        return 0; /* 0 stands for "not negotiated" in ids */
    for (int i = 0; i < X_COUNT; i++) {
        if (ids[i] == id) { /* the first match, as aiortc's elif chain */
            which = i;
            break;
        }
    }
    if (which < 0)
        return 0;
    PyObject *value = NULL;
    switch (which) {
    case X_MID:
        value = PyUnicode_DecodeUTF8((const char *)v, len, "strict");
        break;
    case X_RRID:
    case X_RID:
        value = PyUnicode_DecodeASCII((const char *)v, len, "strict");
        break;
    case X_AST:
        if (len != 3)
            return -2;
        value = PyLong_FromUnsignedLong(((unsigned long)v[0] << 16) | (v[1] << 8) | v[2]);
        break;
    case X_TOFF: {
        if (len != 3)
            return -2;
        int32_t raw = (int32_t)(((uint32_t)v[0] << 24) | ((uint32_t)v[1] << 16) |
                                ((uint32_t)v[2] << 8));
        value = PyLong_FromLong((long)(raw >> 8));
        break;
    }
    case X_LEVEL:
        if (len != 1)
            return -2;
        value = Py_BuildValue("(Ni)", PyBool_FromLong(v[0] & 0x80), v[0] & 0x7F);
        break;
    case X_TWCC:
        if (len != 2)
            return -2;
        value = PyLong_FromLong((v[0] << 8) | v[1]);
        break;
    }
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return -2;
        }
        return -1;
    }
    int rc = PyObject_SetAttr(exts, ext_strs[which], value);
    Py_DECREF(value);
    return rc < 0 ? -1 : 1;
}

/* RFC 8285 one- and two-byte headers into a new HeaderExtensions; NULL with no error set:
 * malformed (aiortc raises ValueError). */
static PyObject *parse_extensions(Reader *self, unsigned profile, const unsigned char *v,
                                  Py_ssize_t n) {
    PyObject *exts = PyObject_CallNoArgs(self->extensions_cls);
    if (exts == NULL)
        return NULL;
    int ids[X_COUNT];
    if (read_ids(self, ids) < 0)
        goto error;
    Py_ssize_t pos = 0;
    if (profile == 0xBEDE) {
        while (pos < n) {
            if (v[pos] == 0) {
                pos++;
                continue;
            }
            int id = v[pos] >> 4, len = (v[pos] & 0x0F) + 1;
            pos++;
            if (n < pos + len)
                goto malformed;
            int rc = set_extension(exts, ids, id, v + pos, len);
            if (rc == -1)
                goto error;
            if (rc == -2)
                goto malformed;
            pos += len;
        }
    } else if (profile == 0x1000) {
        while (pos < n) {
            if (v[pos] == 0) {
                pos++;
                continue;
            }
            if (n < pos + 2)
                goto malformed;
            int id = v[pos], len = v[pos + 1];
            pos += 2;
            if (n < pos + len)
                goto malformed;
            int rc = set_extension(exts, ids, id, v + pos, len);
            if (rc == -1)
                goto error;
            if (rc == -2)
                goto malformed;
            pos += len;
        }
    }
    return exts;
malformed:
    Py_DECREF(exts);
    return NULL;
error:
    Py_DECREF(exts);
    return NULL;
}

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* aiortc's RtpPacket.parse of `p[:n]`; None (no error) where it raises ValueError. */
static PyObject *parse_packet(Reader *self, const unsigned char *p, Py_ssize_t n) {
    if (n < 12 || (p[0] >> 6) != 2)
        Py_RETURN_NONE;
    int padding = (p[0] >> 5) & 1, extension = (p[0] >> 4) & 1, cc = p[0] & 0x0F;
    if (n < 12 + 4 * cc)
        Py_RETURN_NONE;
    Py_ssize_t pos = 12 + 4 * cc;
    PyObject *exts = NULL;
    if (extension) {
        if (n < pos + 4)
            Py_RETURN_NONE;
        unsigned profile = ((unsigned)p[pos] << 8) | p[pos + 1];
        Py_ssize_t len = 4 * (((Py_ssize_t)p[pos + 2] << 8) | p[pos + 3]);
        pos += 4;
        if (n < pos + len)
            Py_RETURN_NONE;
        exts = parse_extensions(self, profile, p + pos, len);
        if (exts == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
        pos += len;
    }
    Py_ssize_t end = n;
    int padding_size = 0;
    if (padding) {
        padding_size = p[n - 1];
        if (!padding_size || padding_size > n - pos) {
            Py_XDECREF(exts);
            Py_RETURN_NONE;
        }
        end = n - padding_size;
    }
    PyObject *payload = PyBytes_FromStringAndSize((const char *)p + pos, end - pos);
    if (payload == NULL) {
        Py_XDECREF(exts);
        return NULL;
    }
    /* RtpPacket(payload_type, marker, sequence_number, timestamp, ssrc, payload) */
    PyObject *packet = PyObject_CallFunction(self->packet_cls, "(iiiIIN)", p[1] & 0x7F, p[1] >> 7,
                                             (p[2] << 8) | p[3], (unsigned int)be32(p + 4),
                                             (unsigned int)be32(p + 8), payload);
    if (packet == NULL) {
        Py_XDECREF(exts);
        return NULL;
    }
    if (cc) {
        PyObject *csrc = PyList_New(cc);
        if (csrc == NULL)
            goto fail;
        for (int i = 0; i < cc; i++) {
            PyObject *c = PyLong_FromUnsignedLong(be32(p + 12 + 4 * i));
            if (c == NULL) {
                Py_DECREF(csrc);
                goto fail;
            }
            PyList_SET_ITEM(csrc, i, c);
        }
        int rc = PyObject_SetAttr(packet, s_csrc, csrc);
        Py_DECREF(csrc);
        if (rc < 0)
            goto fail;
    }
    if (exts != NULL) {
        if (PyObject_SetAttr(packet, s_extensions, exts) < 0)
            goto fail;
        Py_CLEAR(exts);
    }
    if (padding_size) {
        PyObject *size = PyLong_FromLong(padding_size);
        if (size == NULL)
            goto fail;
        int rc = PyObject_SetAttr(packet, s_padding_size, size);
        Py_DECREF(size);
        if (rc < 0)
            goto fail;
    }
    return packet;
fail:
    Py_XDECREF(exts);
    Py_DECREF(packet);
    return NULL;
}

static PyObject *Reader_read(Reader *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "packet must be bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n > BUF_SIZE)
        Py_RETURN_NONE;
    memcpy(self->buf, PyBytes_AS_STRING(data), (size_t)n);
    int len = (int)n;
    if (self->unprotect(self->ctx, self->buf, &len) != 0)
        Py_RETURN_NONE; /* replayed, forged or not ours: dropped, as aiortc does */
    return parse_packet(self, self->buf, len);
}

static PyObject *Reader_parse(Reader *self, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = parse_packet(self, view.buf, view.len);
    PyBuffer_Release(&view);
    return out;
}

/* aiortc's h264_depayload (RFC 6184: single NAL unit, FU-A, STAP-A): Annex-B bytes. */
static PyObject *depayload_h264(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = view.len;
    PyObject *out = NULL;
    if (n < 2) {
        PyErr_SetString(PyExc_ValueError, "NAL unit is too short");
        goto done;
    }
    int nal_type = d[0] & 0x1F;
    if (nal_type >= 1 && nal_type < 24) {
        out = PyBytes_FromStringAndSize(NULL, n + 4);
        if (out != NULL) {
            char *o = PyBytes_AS_STRING(out);
            memcpy(o, "\0\0\0\1", 4);
            memcpy(o + 4, d, (size_t)n);
        }
    } else if (nal_type == 28) { /* FU-A */
        int first = d[1] & 0x80;
        Py_ssize_t body = n - 2, head = first ? 5 : 0;
        out = PyBytes_FromStringAndSize(NULL, head + body);
        if (out != NULL) {
            char *o = PyBytes_AS_STRING(out);
            if (first) {
                memcpy(o, "\0\0\0\1", 4);
                o[4] = (char)((d[0] & 0xE0) | (d[1] & 0x1F));
            }
            memcpy(o + head, d + 2, (size_t)body);
        }
    } else if (nal_type == 24) { /* STAP-A */
        Py_ssize_t pos = 1, total = 0;
        while (pos < n) {
            if (n < pos + 2) {
                PyErr_SetString(PyExc_ValueError, "STAP-A length field is truncated");
                goto done;
            }
            Py_ssize_t size = ((Py_ssize_t)d[pos] << 8) | d[pos + 1];
            pos += 2 + size;
            if (n < pos) {
                PyErr_SetString(PyExc_ValueError, "STAP-A data is truncated");
                goto done;
            }
            total += 4 + size;
        }
        out = PyBytes_FromStringAndSize(NULL, total);
        if (out != NULL) {
            char *o = PyBytes_AS_STRING(out);
            pos = 1;
            while (pos < n) {
                Py_ssize_t size = ((Py_ssize_t)d[pos] << 8) | d[pos + 1];
                memcpy(o, "\0\0\0\1", 4);
                memcpy(o + 4, d + pos + 2, (size_t)size);
                o += 4 + size;
                pos += 2 + size;
            }
        }
    } else {
        PyErr_Format(PyExc_ValueError, "NAL unit type %d is not supported", nal_type);
    }
done:
    PyBuffer_Release(&view);
    return out;
}

/* aiortc's vp8_depayload (RFC 7741): the payload after the VP8 payload descriptor. */
static PyObject *depayload_vp8(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = view.len, pos = 1;
    PyObject *out = NULL;
    const char *error = NULL;
    if (n < 1) {
        error = "VPX descriptor is too short";
    } else if (d[0] & 0x80) {
        if (n < 2) {
            error = "VPX descriptor has truncated extended bits";
        } else {
            int x = d[1];
            pos = 2;
            if (x & 0x80) { /* I: picture id */
                if (n < pos + 1)
                    error = "VPX descriptor has truncated PictureID";
                else if (d[pos] & 0x80) {
                    if (n < pos + 2)
                        error = "VPX descriptor has truncated long PictureID";
                    pos += 2;
                } else
                    pos += 1;
            }
            if (!error && (x & 0x40)) { /* L: TL0PICIDX */
                if (n < pos + 1)
                    error = "VPX descriptor has truncated TL0PICIDX";
                pos += 1;
            }
            if (!error && (x & 0x30)) { /* T or K */
                if (n < pos + 1)
                    error = "VPX descriptor has truncated T/K";
                pos += 1;
            }
        }
    }
    if (error)
        PyErr_SetString(PyExc_ValueError, error);
    else
        out = PyBytes_FromStringAndSize((const char *)d + pos, n - pos);
    PyBuffer_Release(&view);
    return out;
}

/* --- Receiver statistics (aiortc's StreamStatistics) ------------------------------------------
 * What aiortc's RTCRtpReceiver keeps per remote SSRC for its RTCP receiver reports and getStats:
 * the same fields, the same arithmetic (RFC 3550 A.3 and A.8 as aiortc writes them), so the RRs
 * we send stay the same. One per packet in Python was a method call with two uint16 compares,
 * time.time() and a dozen attribute stores. */

typedef struct {
    PyObject_HEAD
    int has_max; /* base_seq and max_seq are None until the first packet */
    long base_seq, max_seq;
    long long cycles, packets_received;
    long long clockrate;
    long long jitter_q4;
    int has_last;
    long long last_arrival, last_timestamp;
    long long expected_prior, received_prior;
} Stats;

static int uint16_gt(long a, long b) {
    return (a < b && b - a > 0x8000) || (a > b && a - b < 0x8000);
}

static int Stats_init(Stats *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"clockrate", NULL};
    long long clockrate;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L", kwlist, &clockrate))
        return -1;
    self->clockrate = clockrate;
    return 0;
}

/* StreamStatistics.add, with the arrival (seconds, time.time()'s clock) given or read. */
static PyObject *stats_add(Stats *self, long seq, long long timestamp, double now) {
    int in_order = !self->has_max || uint16_gt(seq, self->max_seq);
    self->packets_received++;
    if (!self->has_max) {
        self->has_max = 1;
        self->base_seq = seq;
        self->max_seq = seq; /* set again below: in order */
    }
    if (in_order) {
        long long arrival = (long long)(now * (double)self->clockrate);
        if (self->packets_received > 1 && seq < self->max_seq)
            self->cycles += 1 << 16;
        self->max_seq = seq;
        if (self->has_last && timestamp != self->last_timestamp && self->packets_received > 1) {
            long long diff = (arrival - self->last_arrival) - (timestamp - self->last_timestamp);
            if (diff < 0)
                diff = -diff;
            /* Python's >> floors: so does an arithmetic shift of a negative long long here */
            self->jitter_q4 += diff - ((self->jitter_q4 + 8) >> 4);
        }
        self->has_last = 1;
        self->last_arrival = arrival;
        self->last_timestamp = timestamp;
    }
    Py_RETURN_NONE;
}

/* time.time(), looked up at each call as aiortc's module does (tests replace it) */
static double wall_seconds(void) {
    PyObject *t = PyObject_CallMethodNoArgs(time_module, s_time);
    if (t == NULL)
        return -1.0;
    double v = PyFloat_AsDouble(t);
    Py_DECREF(t);
    return v;
}

static PyObject *Stats_add(Stats *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "add(packet, now=None)");
        return NULL;
    }
    PyObject *v = PyObject_GetAttr(args[0], s_sequence_number);
    if (v == NULL)
        return NULL;
    long seq = PyLong_AsLong(v);
    Py_DECREF(v);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    v = PyObject_GetAttr(args[0], s_timestamp);
    if (v == NULL)
        return NULL;
    long long ts = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (ts == -1 && PyErr_Occurred())
        return NULL;
    double now;
    if (nargs == 2 && args[1] != Py_None)
        now = PyFloat_AsDouble(args[1]);
    else
        now = wall_seconds();
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return stats_add(self, seq, ts, now);
}


/* --- Lanes --------------------------------------------------------------------------------------
 * The rest of an anchor packet's receive path, for the packets that need nothing else (issue 20):
 * an SSRC registered from Python (lane_add, after aiortc routed its first packets to a tapped
 * receiver) whose next packet is a plain one (no padding, header extension or CSRC) of its media
 * payload type and the one after the last (RTP order, nothing missing for the NACK tracker) is
 * handled here in full: decrypted, counted in aiortc's receiver statistics, its number taken by
 * the NACK tracker (its _highest, as NackTracker.packet sets it for such a packet), depayloaded
 * and pushed to the ingest's reorder core. Python's handler runs when the core releases a frame
 * or asks for a keyframe, and every LANE_FLUSH packets, with the counts since its last call (the
 * ingest's packets and bytes, the transport's datagrams, the time for consent). Everything else
 * is parsed and returned, and Python takes aiortc's path with it as before: its result is the
 * same (tests/unit/test_rtp_lanes.py runs both on the same traces). */

static PyObject *s_highest, *s_missing;
static PyTypeObject StatsType;

static double monotonic_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t); /* time.monotonic's clock */
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static Lane *find_lane(Reader *self, uint32_t ssrc) {
    for (int i = 0; i < self->nlanes; i++)
        if (self->lanes[i].ssrc == ssrc)
            return &self->lanes[i];
    return NULL;
}

/* 1: in order for the NACK tracker (*next: its _highest after this packet, new reference, or
 * NULL without a tracker); 0: the tracker must see it (or changed); -1: a Python error. */
static int nack_in_order(Lane *lane, long seq, PyObject **next) {
    *next = NULL;
    if (lane->trackers == NULL)
        return 1;
    PyObject *tracker = PyDict_GetItemWithError(lane->trackers, lane->ssrc_obj);
    if (tracker != lane->tracker)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *missing = PyObject_GetAttr(tracker, s_missing);
    if (missing == NULL)
        return -1;
    Py_ssize_t size = PyObject_Length(missing);
    Py_DECREF(missing);
    if (size != 0)
        return size < 0 ? -1 : 0;
    PyObject *h = PyObject_GetAttr(tracker, s_highest);
    if (h == NULL)
        return -1;
    if (!PyLong_Check(h)) {
        Py_DECREF(h);
        return 0; /* None: no packet yet */
    }
    long long highest = PyLong_AsLongLong(h);
    Py_DECREF(h);
    if (highest == -1 && PyErr_Occurred())
        return -1;
    if (((highest + 1) & 0xFFFF) != seq)
        return 0;
    *next = PyLong_FromLongLong(highest + 1);
    return *next == NULL ? -1 : 1;
}

static PyObject *lane_flush(Reader *self, Lane *lane, PyObject *out) {
    PyObject *args[7] = {out, PyLong_FromLongLong(lane->packets), PyLong_FromLongLong(lane->bytes),
                         PyLong_FromLong(lane->last_seq), PyFloat_FromDouble(lane->last_now),
                         PyLong_FromLongLong(self->rx_bytes), PyLong_FromLongLong(self->rx_packets)};
    PyObject *result = NULL;
    if (args[1] && args[2] && args[3] && args[4] && args[5] && args[6]) {
        lane->packets = lane->bytes = 0;
        self->rx_bytes = self->rx_packets = 0;
        PyObject *handler = lane->handler;
        Py_INCREF(handler); /* it may remove its own lane */
        result = PyObject_Vectorcall(handler, args, 7, NULL);
        Py_DECREF(handler);
    }
    for (int i = 1; i < 7; i++)
        Py_XDECREF(args[i]);
    return result;
}

/* The packet in self->buf[:len] (n: the datagram's length) through `lane`. */
static PyObject *lane_packet(Reader *self, Lane *lane, Py_ssize_t n, int len, PyObject *next) {
    const unsigned char *p = self->buf;
    long seq = (p[2] << 8) | p[3];
    uint32_t ts = be32(p + 4);
    double wall = wall_seconds();
    if (wall == -1.0 && PyErr_Occurred())
        return NULL;
    stats_add((Stats *)lane->stats, seq, ts, wall);
    if (next != NULL && PyObject_SetAttr(lane->tracker, s_highest, next) < 0)
        return NULL;
    self->rx_bytes += n;
    self->rx_packets++;
    PyObject *payload = PyBytes_FromStringAndSize((const char *)p + 12, len - 12);
    if (payload == NULL)
        return NULL;
    PyObject *data;
    if (len == 12)
        data = PyBytes_FromStringAndSize(NULL, 0);
    else if (lane->depay == 1)
        data = depayload_h264(NULL, payload);
    else if (lane->depay == 2)
        data = depayload_vp8(NULL, payload);
    else
        data = PyBytes_FromStringAndSize((const char *)p + 12, len - 12);
    if (data == NULL) {
        Py_DECREF(payload);
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL;
        PyErr_Clear(); /* aiortc's depayloader would raise: dropped after the statistics */
        Py_RETURN_NONE;
    }
    double now = monotonic_seconds();
    lane->packets++;
    lane->bytes += len - 12;
    lane->last_seq = seq;
    lane->last_now = now;
    self->fast++;
    PyObject *args[6] = {PyLong_FromLong(seq), PyLong_FromUnsignedLong(ts),
                         PyBool_FromLong(p[1] >> 7), payload, data, PyFloat_FromDouble(now)};
    PyObject *out = NULL;
    if (args[0] && args[1] && args[5])
        out = PyObject_Vectorcall(lane->push, args, 6, NULL);
    for (int i = 0; i < 6; i++)
        Py_XDECREF(args[i]);
    if (out == NULL)
        return NULL;
    PyObject *result = Py_None;
    Py_INCREF(result);
    if (out != Py_None || lane->packets >= LANE_FLUSH) {
        Py_DECREF(result);
        result = lane_flush(self, lane, out);
        if (result != NULL) {
            Py_DECREF(result);
            result = Py_None;
            Py_INCREF(result);
        }
    }
    Py_DECREF(out);
    return result;
}

/* read(), except that a packet a lane takes is handled here (None) */
static PyObject *Reader_receive(Reader *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "packet must be bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n > BUF_SIZE || self->nlanes == 0)
        return Reader_read(self, data);
    memcpy(self->buf, PyBytes_AS_STRING(data), (size_t)n);
    int len = (int)n;
    if (self->unprotect(self->ctx, self->buf, &len) != 0) {
        self->rx_bytes += n;
        self->rx_packets++;
        Py_RETURN_NONE; /* replayed, forged or not ours: dropped, as aiortc does */
    }
    const unsigned char *p = self->buf;
    if (len >= 12 && p[0] == 0x80) {
        Lane *lane = find_lane(self, be32(p + 8));
        if (lane != NULL && (p[1] & 0x7F) == lane->pt) {
            PyObject *next;
            int in_order = nack_in_order(lane, (p[2] << 8) | p[3], &next);
            if (in_order < 0)
                return NULL;
            if (in_order) {
                PyObject *out = lane_packet(self, lane, n, len, next);
                Py_XDECREF(next);
                return out;
            }
        }
    }
    return parse_packet(self, p, len);
}

/* take(srtp) -> bool: the packet handled here in full when a lane takes it, from its header
 * (in the clear in SRTP) before it is decrypted: True (taken, or dropped as not authentic), else
 * False and nothing done (it goes the Python way, receive() and all). The shared port's reader
 * calls this for each datagram of a session with lanes (udp_batch.recv's lanes). */
static PyObject *Reader_take(Reader *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "packet must be bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    if (n > BUF_SIZE || n < 12 || p[0] != 0x80 || self->nlanes == 0 ||
        (p[1] >= 192 && p[1] <= 223)) /* SRTCP (the port offers it too) */
        Py_RETURN_FALSE;
    Lane *lane = find_lane(self, be32(p + 8));
    if (lane == NULL || (p[1] & 0x7F) != lane->pt)
        Py_RETURN_FALSE;
    PyObject *next;
    int in_order = nack_in_order(lane, (p[2] << 8) | p[3], &next);
    if (in_order <= 0)
        return in_order < 0 ? NULL : Py_NewRef(Py_False);
    memcpy(self->buf, p, (size_t)n);
    int len = (int)n;
    if (self->unprotect(self->ctx, self->buf, &len) != 0 || len < 12) {
        Py_XDECREF(next);
        self->rx_bytes += n;
        self->rx_packets++;
        Py_RETURN_TRUE; /* replayed, forged or not ours: dropped, as aiortc does */
    }
    PyObject *out = lane_packet(self, lane, n, len, next);
    Py_XDECREF(next);
    if (out == NULL)
        return NULL;
    Py_DECREF(out);
    Py_RETURN_TRUE;
}

/* lane_add(ssrc, payload_type, depayload, stats, push, trackers, tracker, handler) */
static PyObject *Reader_lane_add(Reader *self, PyObject *args) {
    unsigned long ssrc;
    int pt, depay;
    PyObject *stats, *push, *trackers, *tracker, *handler;
    if (!PyArg_ParseTuple(args, "kiiOOOOO", &ssrc, &pt, &depay, &stats, &push, &trackers,
                          &tracker, &handler))
        return NULL;
    if (!PyObject_TypeCheck(stats, &StatsType)) {
        PyErr_SetString(PyExc_TypeError, "stats must be this module's StreamStatistics");
        return NULL;
    }
    if (trackers != Py_None && !PyDict_Check(trackers)) {
        PyErr_SetString(PyExc_TypeError, "trackers must be a dict or None");
        return NULL;
    }
    if (depay < 0 || depay > 2 || pt < 0 || pt > 127) {
        PyErr_SetString(PyExc_ValueError, "bad payload type or depayloader");
        return NULL;
    }
    Lane *lane = find_lane(self, (uint32_t)ssrc);
    if (lane == NULL) {
        if (self->nlanes == MAX_LANES)
            Py_RETURN_FALSE;
        lane = &self->lanes[self->nlanes++];
        memset(lane, 0, sizeof(*lane));
    } else {
        if (lane->packets && lane->handler != NULL) { /* hand over the counts first */
            PyObject *r = lane_flush(self, lane, Py_None);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
        }
        lane_clear(lane);
    }
    lane->ssrc = (uint32_t)ssrc;
    lane->pt = pt;
    lane->depay = depay;
    lane->packets = lane->bytes = 0;
    lane->ssrc_obj = PyLong_FromUnsignedLong(ssrc);
    if (lane->ssrc_obj == NULL)
        return NULL;
    Py_INCREF(stats);
    lane->stats = stats;
    Py_INCREF(push);
    lane->push = push;
    if (trackers != Py_None) {
        Py_INCREF(trackers);
        lane->trackers = trackers;
        Py_INCREF(tracker);
        lane->tracker = tracker;
    }
    Py_INCREF(handler);
    lane->handler = handler;
    Py_RETURN_TRUE;
}

/* lane_remove(ssrc): its pending counts are handed to its handler first */
static PyObject *Reader_lane_remove(Reader *self, PyObject *arg) {
    unsigned long ssrc = PyLong_AsUnsignedLong(arg);
    if (ssrc == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    Lane *lane = find_lane(self, (uint32_t)ssrc);
    if (lane == NULL)
        Py_RETURN_FALSE;
    Lane gone = *lane;
    *lane = self->lanes[--self->nlanes];
    memset(&self->lanes[self->nlanes], 0, sizeof(Lane));
    int failed = 0;
    if (gone.packets) {
        PyObject *r = lane_flush(self, &gone, Py_None);
        failed = r == NULL;
        Py_XDECREF(r);
    }
    lane_clear(&gone);
    if (failed)
        return NULL;
    Py_RETURN_TRUE;
}

/* flush(): every lane's pending counts to its handler now */
static PyObject *Reader_flush(Reader *self, PyObject *unused) {
    for (int i = 0; i < self->nlanes; i++) {
        Lane *lane = &self->lanes[i];
        if (!lane->packets)
            continue;
        PyObject *r = lane_flush(self, lane, Py_None);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *Reader_lanes(Reader *self, void *closure) {
    PyObject *out = PyList_New(self->nlanes);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < self->nlanes; i++) {
        PyObject *v = PyLong_FromUnsignedLong(self->lanes[i].ssrc);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *Reader_fast(Reader *self, void *closure) {
    return PyLong_FromLongLong(self->fast);
}

static long long stats_expected(Stats *self) {
    return self->cycles + self->max_seq - self->base_seq + 1;
}

static PyObject *Stats_fraction_lost(Stats *self, void *closure) {
    long long expected = stats_expected(self);
    long long expected_interval = expected - self->expected_prior;
    self->expected_prior = expected;
    long long received_interval = self->packets_received - self->received_prior;
    self->received_prior = self->packets_received;
    long long lost_interval = expected_interval - received_interval;
    if (expected_interval == 0 || lost_interval <= 0)
        return PyLong_FromLong(0);
    /* Python's // floors; both operands are positive here */
    return PyLong_FromLongLong((lost_interval << 8) / expected_interval);
}

static PyObject *Stats_jitter(Stats *self, void *closure) {
    return PyLong_FromLongLong(self->jitter_q4 >> 4);
}

static PyObject *Stats_packets_expected(Stats *self, void *closure) {
    if (!self->has_max) {
        PyErr_SetString(PyExc_TypeError, "no packet yet");
        return NULL;
    }
    return PyLong_FromLongLong(stats_expected(self));
}

static PyObject *Stats_packets_lost(Stats *self, void *closure) {
    if (!self->has_max) {
        PyErr_SetString(PyExc_TypeError, "no packet yet");
        return NULL;
    }
    long long lost = stats_expected(self) - self->packets_received;
    if (lost < -(1LL << 23))
        lost = -(1LL << 23);
    if (lost > (1LL << 23) - 1)
        lost = (1LL << 23) - 1;
    return PyLong_FromLongLong(lost);
}

static PyObject *Stats_base_seq(Stats *self, void *closure) {
    if (!self->has_max)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->base_seq);
}

static PyObject *Stats_max_seq(Stats *self, void *closure) {
    if (!self->has_max)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->max_seq);
}

static PyObject *Stats_cycles(Stats *self, void *closure) {
    return PyLong_FromLongLong(self->cycles);
}

static PyObject *Stats_packets_received(Stats *self, void *closure) {
    return PyLong_FromLongLong(self->packets_received);
}

static PyGetSetDef Stats_getset[] = {
    {"base_seq", (getter)Stats_base_seq, NULL, NULL, NULL},
    {"max_seq", (getter)Stats_max_seq, NULL, NULL, NULL},
    {"cycles", (getter)Stats_cycles, NULL, NULL, NULL},
    {"packets_received", (getter)Stats_packets_received, NULL, NULL, NULL},
    {"fraction_lost", (getter)Stats_fraction_lost, NULL,
     "lost since the previous reading, in 1/256 (reading it starts a new interval)", NULL},
    {"jitter", (getter)Stats_jitter, NULL, NULL, NULL},
    {"packets_expected", (getter)Stats_packets_expected, NULL, NULL, NULL},
    {"packets_lost", (getter)Stats_packets_lost, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Stats_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Stats_add, METH_FASTCALL,
     "add(packet, now=None): count a received RtpPacket (now: time.time() when None)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StatsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.rtc._rtp_reader.StreamStatistics",
    .tp_basicsize = sizeof(Stats),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "StreamStatistics(clockrate): aiortc's receiver statistics of one SSRC, in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Stats_init,
    .tp_methods = Stats_methods,
    .tp_getset = Stats_getset,
};

static PyMethodDef module_methods[] = {
    {"depayload_h264", depayload_h264, METH_O,
     "depayload_h264(payload) -> bytes: aiortc's h264_depayload (ValueError where it raises)."},
    {"depayload_vp8", depayload_vp8, METH_O,
     "depayload_vp8(payload) -> bytes: aiortc's vp8_depayload (ValueError where it raises)."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_O,
     "read(srtp) -> RtpPacket | None: decrypt and parse (None: not authentic or malformed)."},
    {"parse", (PyCFunction)Reader_parse, METH_O,
     "parse(rtp) -> RtpPacket | None: parse a packet already in the clear."},
    {"receive", (PyCFunction)Reader_receive, METH_O,
     "receive(srtp) -> RtpPacket | None: read(), except that a packet a lane takes is handled "
     "in full here (None)."},
    {"take", (PyCFunction)Reader_take, METH_O,
     "take(srtp) -> bool: handled here in full by a lane (decided from the clear header before "
     "decrypting), or dropped as not authentic (True); False: untouched."},
    {"lane_add", (PyCFunction)Reader_lane_add, METH_VARARGS,
     "lane_add(ssrc, payload_type, depayload, stats, push, trackers, tracker, handler) -> bool: "
     "handle this SSRC's plain in-order packets here (False: no room)."},
    {"lane_remove", (PyCFunction)Reader_lane_remove, METH_O,
     "lane_remove(ssrc) -> bool: stop (its pending counts go to its handler first)."},
    {"flush", (PyCFunction)Reader_flush, METH_NOARGS,
     "flush(): every lane's pending counts to its handler now."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"lanes", (getter)Reader_lanes, NULL, "the SSRCs with a lane", NULL},
    {"fast", (getter)Reader_fast, NULL, "packets handled wholly in C", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.rtc._rtp_reader.RtpReader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RtpReader(unprotect, ctx, session, ids, packet_cls, extensions_cls): one "
              "transport's SRTP receive: decrypt and parse.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay.rtc._rtp_reader",
    .m_doc = "An anchor's SRTP packets decrypted and parsed in C (see _rtp_reader.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__rtp_reader(void) {
    for (int i = 0; i < X_COUNT; i++) {
        ext_strs[i] = PyUnicode_InternFromString(ext_names[i]);
        if (ext_strs[i] == NULL)
            return NULL;
    }
    s_csrc = PyUnicode_InternFromString("csrc");
    s_extensions = PyUnicode_InternFromString("extensions");
    s_padding_size = PyUnicode_InternFromString("padding_size");
    s_sequence_number = PyUnicode_InternFromString("sequence_number");
    s_timestamp = PyUnicode_InternFromString("timestamp");
    if (!s_csrc || !s_extensions || !s_padding_size || !s_sequence_number || !s_timestamp)
        return NULL;
    s_highest = PyUnicode_InternFromString("_highest");
    s_missing = PyUnicode_InternFromString("_missing");
    if (s_highest == NULL || s_missing == NULL)
        return NULL;
    s_time = PyUnicode_InternFromString("time");
    time_module = PyImport_ImportModule("time");
    if (s_time == NULL || time_module == NULL)
        return NULL;
    if (PyType_Ready(&ReaderType) < 0 || PyType_Ready(&StatsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "RtpReader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&StatsType);
    if (PyModule_AddObject(m, "StreamStatistics", (PyObject *)&StatsType) < 0) {
        Py_DECREF(&StatsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
