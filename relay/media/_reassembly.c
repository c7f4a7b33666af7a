/* The packet-ordering core of relay.media.reassembly's FrameAssembler, in C (issue 20).
 *
 * Per anchor packet, the Python assembler unwrapped two counters, built a slotted dataclass and
 * stored it in a dict: most of a video packet's reassembly cost, for the one in 10-20 packets
 * that ends a frame. This holds the packets and decides what leaves: frames released on their
 * marker bit once every packet back to the previous frame's end is in, a gap waited for
 * (``max_wait``) then skipped with the frame it broke, resync on a frame's first packet. Python
 * sees one call per packet that returns None, and the packets of each completed frame.
 *
 * ``PyReorder`` in reassembly.py is the reference: tests/unit/test_reassembly.py runs both on
 * the same traces and asserts the same output. Every step below names the Python it mirrors.
 *
 * Storage: an open-addressing table keyed by the unwrapped sequence number (key & mask: a run
 * of consecutive numbers never collides), linear probing, backward-shift deletion. It holds at
 * most max_packets + 1 packets (more is a stall: skipped at once). It starts at 64 slots and
 * doubles when half full: sized for 1024 packets from the start, each video SSRC's table was
 * 192 KiB, all of it touched as the sequence numbers went round, for the ~10-100 packets a
 * frame or a repair wait holds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

enum { CODEC_OTHER = 0, CODEC_H264 = 1, CODEC_VP8 = 2 };

typedef struct {
    int64_t key;
    int64_t ts;
    double arrival;
    PyObject *payload;
    PyObject *data;
    char marker;
    char used;
} Slot;

typedef struct {
    int has_last;
    int64_t last;
} Unwrap;

typedef struct {
    PyObject_HEAD
    int video;
    int codec;
    double max_wait;
    Py_ssize_t max_packets;
    Unwrap seq_u, ts_u;
    Slot *slots;
    int64_t mask;
    Py_ssize_t count;
    int has_next;
    int64_t next;
    int has_gap_since;
    double gap_since;
    int resync;
    int lost;
    long long frames_skipped;
    int64_t max_key; /* valid when count > 0 and !max_dirty */
    int max_dirty;
} Core;

/* reassembly.Unwrapper.unwrap */
static int64_t unwrap(Unwrap *u, int64_t value, int bits) {
    if (!u->has_last) {
        u->has_last = 1;
        u->last = value;
        return value;
    }
    int64_t mod = (int64_t)1 << bits, half = mod >> 1;
    int64_t delta = (int64_t)((uint64_t)(value - u->last) & (uint64_t)(mod - 1));
    if (delta >= half)
        delta -= mod;
    u->last += delta;
    return u->last;
}

static Slot *find(Core *self, int64_t key) {
    int64_t i = key & self->mask;
    for (;;) {
        Slot *s = &self->slots[i];
        if (!s->used)
            return NULL;
        if (s->key == key)
            return s;
        i = (i + 1) & self->mask;
    }
}

static void insert(Core *self, int64_t key, int64_t ts, int marker, PyObject *payload,
                   PyObject *data, double arrival) {
    int64_t i = key & self->mask;
    while (self->slots[i].used)
        i = (i + 1) & self->mask;
    Slot *s = &self->slots[i];
    s->used = 1;
    s->key = key;
    s->ts = ts;
    s->marker = (char)marker;
    s->arrival = arrival;
    Py_INCREF(payload);
    s->payload = payload;
    Py_INCREF(data);
    s->data = data;
    if (self->count == 0 || (!self->max_dirty && key > self->max_key)) {
        self->max_key = key;
        self->max_dirty = 0;
    }
    self->count++;
}

/* Double the table (called before an insert would fill it past half). */
static int grow(Core *self) {
    int64_t old_size = self->mask + 1, size = old_size * 2;
    Slot *old = self->slots;
    Slot *slots = PyMem_Calloc((size_t)size, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int64_t i = 0; i < old_size; i++) {
        if (old[i].used) {
            int64_t j = old[i].key & (size - 1);
            while (slots[j].used)
                j = (j + 1) & (size - 1);
            slots[j] = old[i];
        }
    }
    self->slots = slots;
    self->mask = size - 1;
    PyMem_Free(old);
    return 0;
}

/* Remove the slot at index i (its references are dropped), shifting its probe chain back. */
static void remove_at(Core *self, int64_t i) {
    Slot *s = &self->slots[i];
    Py_CLEAR(s->payload);
    Py_CLEAR(s->data);
    if (s->key == self->max_key)
        self->max_dirty = 1;
    s->used = 0;
    self->count--;
    int64_t hole = i;
    int64_t j = (i + 1) & self->mask;
    while (self->slots[j].used) {
        int64_t home = self->slots[j].key & self->mask;
        /* can j's entry move to the hole? (home not cyclically in (hole, j]) */
        int movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            self->slots[hole] = self->slots[j];
            self->slots[j].used = 0;
            self->slots[j].payload = NULL;
            self->slots[j].data = NULL;
            hole = j;
        }
        j = (j + 1) & self->mask;
    }
}

static void remove_key(Core *self, int64_t key) {
    int64_t i = key & self->mask;
    for (;;) {
        Slot *s = &self->slots[i];
        if (!s->used)
            return;
        if (s->key == key) {
            remove_at(self, i);
            return;
        }
        i = (i + 1) & self->mask;
    }
}

static void clear_all(Core *self) {
    for (int64_t i = 0; i <= self->mask; i++) {
        if (self->slots[i].used) {
            Py_CLEAR(self->slots[i].payload);
            Py_CLEAR(self->slots[i].data);
            self->slots[i].used = 0;
        }
    }
    self->count = 0;
    self->max_dirty = 0;
}

static int64_t max_key(Core *self) {
    if (self->max_dirty) {
        int first = 1;
        for (int64_t i = 0; i <= self->mask; i++) {
            if (self->slots[i].used && (first || self->slots[i].key > self->max_key)) {
                self->max_key = self->slots[i].key;
                first = 0;
            }
        }
        self->max_dirty = 0;
    }
    return self->max_key;
}

/* reassembly.starts_frame */
static int starts_frame(Core *self, Slot *s) {
    if (self->codec == CODEC_H264) {
        const char *d = PyBytes_AS_STRING(s->data);
        Py_ssize_t n = PyBytes_GET_SIZE(s->data);
        return (n >= 4 && d[0] == 0 && d[1] == 0 && d[2] == 0 && d[3] == 1) ||
               (n >= 3 && d[0] == 0 && d[1] == 0 && d[2] == 1);
    }
    if (self->codec == CODEC_VP8) {
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(s->payload);
        return PyBytes_GET_SIZE(s->payload) > 0 && (p[0] & 0x17) == 0x10;
    }
    return 1;
}

/* One frame as the Python core returns it: (timestamp, [payload], [data], [arrival]). */
static PyObject *run_tuple(int64_t ts, PyObject *payloads, PyObject *datas, PyObject *arrivals) {
    return Py_BuildValue("(LOOO)", (long long)ts, payloads, datas, arrivals);
}

static int append_float(PyObject *list, double value) {
    PyObject *f = PyFloat_FromDouble(value);
    if (f == NULL)
        return -1;
    int rc = PyList_Append(list, f);
    Py_DECREF(f);
    return rc;
}

/* PyReorder._drain: append completed frames to out; -1 on a Python error. */
static int drain(Core *self, PyObject *out) {
    if (!self->has_next)
        return 0;
    for (;;) {
        int64_t seq = self->next;
        Slot *s = NULL;
        Py_ssize_t n = 0;
        int ended = 0;
        while ((s = find(self, seq)) != NULL) {
            n++;
            if (s->marker) {
                ended = 1;
                break;
            }
            seq++;
        }
        if (!ended)
            return 0;
        int64_t last_ts = s->ts;
        PyObject *payloads = PyList_New(0), *datas = PyList_New(0), *arrivals = PyList_New(0);
        if (payloads == NULL || datas == NULL || arrivals == NULL) {
            Py_XDECREF(payloads);
            Py_XDECREF(datas);
            Py_XDECREF(arrivals);
            return -1;
        }
        int first = 1, starts = 1, err = 0;
        for (int64_t k = self->next; k <= seq; k++) {
            Slot *p = find(self, k);
            if (p->ts == last_ts) {
                if (first) {
                    starts = starts_frame(self, p);
                    first = 0;
                }
                if (!err && (PyList_Append(payloads, p->payload) < 0 ||
                             PyList_Append(datas, p->data) < 0 ||
                             append_float(arrivals, p->arrival) < 0))
                    err = 1;
            }
        }
        for (int64_t k = self->next; k <= seq; k++)
            remove_key(self, k);
        self->next = seq + 1;
        if (err || (self->resync && !starts)) {
            Py_DECREF(payloads);
            Py_DECREF(datas);
            Py_DECREF(arrivals);
            if (err)
                return -1;
            self->frames_skipped++;
            self->lost = 1;
            continue;
        }
        self->resync = 0;
        PyObject *run = run_tuple(last_ts, payloads, datas, arrivals);
        Py_DECREF(payloads);
        Py_DECREF(datas);
        Py_DECREF(arrivals);
        if (run == NULL)
            return -1;
        int rc = PyList_Append(out, run);
        Py_DECREF(run);
        if (rc < 0)
            return -1;
    }
}

/* PyReorder._has_gap */
static int has_gap(Core *self) {
    if (self->count == 0 || !self->has_next)
        return 0;
    int64_t seq = self->next;
    while (find(self, seq) != NULL)
        seq++;
    return seq <= max_key(self);
}

/* PyReorder._track_gap */
static void track_gap(Core *self, double now) {
    if (!has_gap(self))
        self->has_gap_since = 0;
    else if (!self->has_gap_since) {
        self->has_gap_since = 1;
        self->gap_since = now;
    }
}

/* PyReorder._hole_seen: when the first hole now open was seen (the arrival of the first packet
 * after it), so a filled hole does not pass its age on to a later one. */
static double hole_seen(Core *self, double since) {
    if (self->count == 0 || !self->has_next)
        return since;
    int64_t end = max_key(self);
    int64_t seq = self->next;
    while (find(self, seq) != NULL)
        seq++;
    while (seq <= end && find(self, seq) == NULL)
        seq++;
    Slot *s = find(self, seq);
    if (s == NULL)
        return since;
    return s->arrival > since ? s->arrival : since;
}

/* PyReorder._stalled */
static int stalled(Core *self, double now) {
    if (self->count > self->max_packets)
        return 1;
    if (!self->has_gap_since || now - self->gap_since <= self->max_wait)
        return 0;
    self->gap_since = hole_seen(self, self->gap_since);
    return now - self->gap_since > self->max_wait;
}

/* PyReorder._skip_gap */
static void skip_gap(Core *self) {
    int found = 0;
    int64_t cut = 0;
    for (int64_t i = 0; i <= self->mask; i++) {
        Slot *s = &self->slots[i];
        if (s->used && s->marker && (!found || s->key < cut)) {
            cut = s->key;
            found = 1;
        }
    }
    if (!found) {
        clear_all(self);
        self->has_next = 0;
    } else {
        int64_t i = 0;
        while (i <= self->mask) {
            Slot *s = &self->slots[i];
            if (s->used && s->key <= cut) {
                remove_at(self, i); /* may shift a later entry into i: look at i again */
                continue;
            }
            i++;
        }
        self->next = cut + 1;
    }
    self->has_gap_since = 0;
    self->resync = 1;
    self->lost = 1;
    self->frames_skipped++;
}

static PyObject *Core_push(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "push(sequence_number, timestamp, marker, payload, data, now)");
        return NULL;
    }
    long long seq_in = PyLong_AsLongLong(args[0]);
    if (seq_in == -1 && PyErr_Occurred())
        return NULL;
    long long ts_in = PyLong_AsLongLong(args[1]);
    if (ts_in == -1 && PyErr_Occurred())
        return NULL;
    int marker = PyObject_IsTrue(args[2]);
    if (marker < 0)
        return NULL;
    PyObject *payload = args[3], *data = args[4];
    if (!PyBytes_Check(payload) || !PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "payload and data must be bytes");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[5]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;

    int64_t seq = unwrap(&self->seq_u, seq_in, 16);
    int64_t ts = unwrap(&self->ts_u, ts_in, 32);
    if (!self->has_next) {
        self->has_next = 1;
        self->next = seq;
    }
    if (seq < self->next || find(self, seq) != NULL)
        Py_RETURN_NONE; /* late or duplicate */
    if (!self->video) {
        self->next = seq + 1;
        return Py_BuildValue("([(L[O][O][d])]O)", (long long)ts, payload, data, now, Py_False);
    }
    int extends = !marker && !self->has_gap_since &&
                  (find(self, seq - 1) != NULL || (self->count == 0 && seq == self->next));
    if (2 * ((int64_t)self->count + 1) > self->mask + 1 && grow(self) < 0)
        return NULL;
    insert(self, seq, ts, marker, payload, data, now);
    if (extends && self->count <= self->max_packets)
        Py_RETURN_NONE; /* extends the run from next and ends no frame: nothing to drain */
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        return NULL;
    if (drain(self, frames) < 0)
        goto error;
    track_gap(self, now);
    if (self->count > 0 && stalled(self, now)) {
        skip_gap(self);
        if (drain(self, frames) < 0)
            goto error;
        track_gap(self, now);
    }
    int need = self->lost;
    self->lost = 0;
    if (PyList_GET_SIZE(frames) == 0 && !need) {
        Py_DECREF(frames);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(NO)", frames, need ? Py_True : Py_False);
error:
    Py_DECREF(frames);
    return NULL;
}

static int Core_init(Core *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"video", "codec", "max_wait", "max_packets", NULL};
    int video;
    const char *codec;
    double max_wait;
    Py_ssize_t max_packets;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "psdn", kwlist, &video, &codec, &max_wait,
                                     &max_packets))
        return -1;
    if (max_packets < 1 || max_packets > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "max_packets out of range");
        return -1;
    }
    if (self->slots != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    self->video = video;
    self->codec = CODEC_OTHER;
    if (PyOS_stricmp(codec, "H264") == 0)
        self->codec = CODEC_H264;
    else if (PyOS_stricmp(codec, "VP8") == 0)
        self->codec = CODEC_VP8;
    self->max_wait = max_wait;
    self->max_packets = max_packets;
    int64_t size = 64; /* grows with the packets held (grow) */
    self->slots = PyMem_Calloc((size_t)size, sizeof(Slot));
    if (self->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->mask = size - 1;
    self->resync = 1;
    return 0;
}

static void Core_dealloc(Core *self) {
    if (self->slots != NULL) {
        clear_all(self);
        PyMem_Free(self->slots);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Core_next_sequence(Core *self, void *closure) {
    if (!self->has_next)
        Py_RETURN_NONE;
    return PyLong_FromLongLong((long long)(self->next & 0xFFFF));
}

static PyObject *Core_frames_skipped(Core *self, void *closure) {
    return PyLong_FromLongLong(self->frames_skipped);
}

static PyObject *Core_pending(Core *self, void *closure) {
    return PyLong_FromSsize_t(self->count);
}

static PyObject *Core_get_max_wait(Core *self, void *closure) {
    return PyFloat_FromDouble(self->max_wait);
}

static int Core_set_max_wait(Core *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "max_wait cannot be deleted");
        return -1;
    }
    double wait = PyFloat_AsDouble(value);
    if (wait == -1.0 && PyErr_Occurred())
        return -1;
    self->max_wait = wait;
    return 0;
}

static PyGetSetDef Core_getset[] = {
    {"max_wait", (getter)Core_get_max_wait, (setter)Core_set_max_wait,
     "seconds a gap may hold the frames behind it (settable between packets)", NULL},
    {"next_sequence", (getter)Core_next_sequence, NULL,
     "the 16-bit sequence number the next frame must start at (None: restarting)", NULL},
    {"frames_skipped", (getter)Core_frames_skipped, NULL, "frames dropped (gaps, resync)", NULL},
    {"pending", (getter)Core_pending, NULL, "packets held", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Core_methods[] = {
    {"push", (PyCFunction)(void (*)(void))Core_push, METH_FASTCALL,
     "push(sequence_number, timestamp, marker, payload, data, now) -> None | (frames, "
     "need_keyframe): frames as (timestamp, payloads, data, arrivals)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.media._reassembly.Reorder",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reorder(video, codec, max_wait, max_packets): the packet-ordering core of "
              "FrameAssembler (reassembly.PyReorder in C).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay.media._reassembly",
    .m_doc = "FrameAssembler's packet ordering in C (see _reassembly.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__reassembly(void) {
    if (PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Reorder", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
