/* A viewer's transport-cc feedback taken in one C call: parse the FCI and match each reported
 * packet against the estimator's send history.
 *
 * In Python, parsing a ~30-packet feedback and walking its packets cost ~25 us (a Chromium
 * viewer sends 10-20 a second: ~0.0003 core per viewer, over issue 17's 10 % budget). This does
 * exactly what relay/media/cc_feedback.py's parse_transport_feedback and the packet loop of
 * relay/media/estimator.py's BandwidthEstimator.on_transport_feedback do (those stay as the
 * fallback and the reference: tests/unit/test_twcc_native.py checks both give the same results),
 * and hands the completed packet groups back for the trendline, which stays in Python.
 *
 * Nothing is changed unless the whole feedback parses (ValueError otherwise): the arrivals are
 * decoded into a bounded stack array first (MAX_STATUS_COUNT), then matched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define MAX_STATUS_COUNT 1024 /* relay/media/cc_feedback.py */
#define DELTA_UNIT 250e-6
#define REFERENCE_UNIT 0.064

static PyObject *malformed(const char *what) {
    PyErr_SetString(PyExc_ValueError, what);
    return NULL;
}

/* Decode the FCI into base/fb_count and per-packet (status, arrival); NULL with ValueError. */
static int parse(const unsigned char *p, Py_ssize_t end, unsigned *base_out, unsigned *fb_out,
                 unsigned *count_out, unsigned char *status, double *arrival) {
    if (end < 8) {
        malformed("transport-cc feedback shorter than its header");
        return -1;
    }
    unsigned base = ((unsigned)p[0] << 8) | p[1];
    unsigned count = ((unsigned)p[2] << 8) | p[3];
    long reference = ((long)p[4] << 16) | ((long)p[5] << 8) | p[6];
    if (reference & 0x800000)
        reference -= 1L << 24;
    unsigned fb_count = p[7];
    if (count == 0) {
        malformed("transport-cc feedback reports no packet");
        return -1;
    }
    if (count > MAX_STATUS_COUNT) {
        PyErr_Format(PyExc_ValueError, "transport-cc feedback reports %u packets", count);
        return -1;
    }
    unsigned n = 0;
    Py_ssize_t pos = 8;
    while (n < count) {
        if (pos + 2 > end) {
            malformed("transport-cc status chunks truncated");
            return -1;
        }
        unsigned chunk = ((unsigned)p[pos] << 8) | p[pos + 1];
        pos += 2;
        if (chunk & 0x8000) {
            if (chunk & 0x4000) { /* seven 2-bit symbols */
                for (int shift = 12; shift >= 0 && n < count; shift -= 2)
                    status[n++] = (chunk >> shift) & 0x3;
            } else { /* fourteen 1-bit symbols */
                for (int shift = 13; shift >= 0 && n < count; shift--)
                    status[n++] = (chunk >> shift) & 0x1;
            }
        } else {
            unsigned run = chunk & 0x1FFF;
            if (run == 0) {
                malformed("transport-cc run-length chunk of length 0");
                return -1;
            }
            unsigned char symbol = (chunk >> 13) & 0x3;
            for (unsigned k = 0; k < run && n < count; k++)
                status[n++] = symbol;
        }
    }
    double time = (double)reference * REFERENCE_UNIT;
    for (unsigned i = 0; i < count; i++) {
        unsigned char symbol = status[i];
        if (symbol == 0)
            continue;
        if (symbol == 1) {
            if (pos + 1 > end) {
                malformed("transport-cc receive deltas truncated");
                return -1;
            }
            time += (double)p[pos] * DELTA_UNIT;
            pos += 1;
        } else if (symbol == 2) {
            if (pos + 2 > end) {
                malformed("transport-cc receive deltas truncated");
                return -1;
            }
            int16_t delta = (int16_t)(((unsigned)p[pos] << 8) | p[pos + 1]);
            time += (double)delta * DELTA_UNIT;
            pos += 2;
        } else {
            malformed("transport-cc reserved status symbol");
            return -1;
        }
        arrival[i] = time;
    }
    if (end - pos > 3) {
        malformed("transport-cc feedback longer than its packets");
        return -1;
    }
    *base_out = base;
    *fb_out = fb_count;
    *count_out = count;
    return 0;
}

/* parse(fci) -> (base_sequence, feedback_count, arrivals): as cc_feedback's parser. */
static PyObject *py_parse(PyObject *mod, PyObject *arg) {
    Py_buffer fci;
    if (PyObject_GetBuffer(arg, &fci, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned char status[MAX_STATUS_COUNT];
    double arrival[MAX_STATUS_COUNT];
    unsigned base, fb_count, count;
    int bad = parse(fci.buf, fci.len, &base, &fb_count, &count, status, arrival);
    PyBuffer_Release(&fci);
    if (bad)
        return NULL;
    PyObject *arrivals = PyTuple_New(count);
    if (arrivals == NULL)
        return NULL;
    for (unsigned i = 0; i < count; i++) {
        PyObject *item = status[i] ? PyFloat_FromDouble(arrival[i]) : Py_NewRef(Py_None);
        if (item == NULL) {
            Py_DECREF(arrivals);
            return NULL;
        }
        PyTuple_SET_ITEM(arrivals, i, item);
    }
    return Py_BuildValue("(IIN)", base, fb_count, arrivals);
}

/* scan(fci, seqs, times, sizes, acked, now, history_age, min_size, burst,
 *      g_first, g_send, g_arrival)
 * -> (received, lost, acked_bytes, unknown, groups, g_first, g_send, g_arrival)
 *
 * seqs/sizes: array('l'), times: array('d'), acked: bytearray, all of one power-of-two length
 * (the history). groups: the packet groups completed, ((last send, latest arrival), ...) in
 * order, for the trendline. acked is updated in place. */
static PyObject *py_scan(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError,
                        "scan(fci, seqs, times, sizes, acked, now, history_age, min_size, burst, "
                        "g_first, g_send, g_arrival)");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[5]), history_age = PyFloat_AsDouble(args[6]);
    long min_size = PyLong_AsLong(args[7]);
    double burst = PyFloat_AsDouble(args[8]);
    double g_first = PyFloat_AsDouble(args[9]), g_send = PyFloat_AsDouble(args[10]);
    double g_arrival = PyFloat_AsDouble(args[11]);
    if (PyErr_Occurred())
        return NULL;
    /* zeroed: PyBuffer_Release does nothing for a buffer never taken */
    Py_buffer fci = {0}, seqs = {0}, times = {0}, sizes = {0}, acked = {0};
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[0], &fci, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[1], &seqs, PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(args[2], &times, PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(args[3], &sizes, PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(args[4], &acked, PyBUF_WRITABLE) < 0)
        goto release_all;
    Py_ssize_t history = acked.len;
    if (strcmp(seqs.format, "l") || strcmp(sizes.format, "l") || strcmp(times.format, "d") ||
        seqs.len != history * (Py_ssize_t)sizeof(long) ||
        sizes.len != history * (Py_ssize_t)sizeof(long) ||
        times.len != history * (Py_ssize_t)sizeof(double) || history == 0 ||
        (history & (history - 1))) {
        PyErr_SetString(PyExc_ValueError, "history arrays of one power-of-two length");
        goto release_all;
    }
    {
        unsigned char status[MAX_STATUS_COUNT];
        double arrival[MAX_STATUS_COUNT];
        unsigned base, fb_count, count;
        if (parse(fci.buf, fci.len, &base, &fb_count, &count, status, arrival))
            goto release_all;
        const long *seq_of = seqs.buf, *size_of = sizes.buf;
        const double *time_of = times.buf;
        unsigned char *acked_of = acked.buf;
        long mask = (long)history - 1;
        long received = 0, lost = 0, acked_bytes = 0, unknown = 0;
        double group_send[MAX_STATUS_COUNT], group_arrival[MAX_STATUS_COUNT];
        Py_ssize_t groups = 0;
        for (unsigned offset = 0; offset < count; offset++) {
            long seq = (long)((base + offset) & 0xFFFF);
            long i = seq & mask;
            double send = time_of[i];
            if (seq_of[i] != seq || now - send > history_age) {
                unknown++;
                continue;
            }
            if (!status[offset]) {
                if (!acked_of[i])
                    lost++;
                continue;
            }
            if (acked_of[i])
                continue; /* reported twice */
            acked_of[i] = 1;
            received++;
            long size = size_of[i];
            acked_bytes += size;
            if (size < min_size)
                continue;
            double a = arrival[offset];
            if (g_first >= 0 && send - g_first <= burst) {
                g_send = send;
                if (a > g_arrival)
                    g_arrival = a;
                continue;
            }
            if (g_first >= 0) {
                group_send[groups] = g_send;
                group_arrival[groups] = g_arrival;
                groups++;
            }
            g_first = g_send = send;
            g_arrival = a;
        }
        PyObject *done = PyTuple_New(groups);
        if (done == NULL)
            goto release_all;
        for (Py_ssize_t k = 0; k < groups; k++) {
            PyObject *pair = Py_BuildValue("(dd)", group_send[k], group_arrival[k]);
            if (pair == NULL) {
                Py_DECREF(done);
                goto release_all;
            }
            PyTuple_SET_ITEM(done, k, pair);
        }
        result = Py_BuildValue("(llllNddd)", received, lost, acked_bytes, unknown, done, g_first,
                               g_send, g_arrival);
    }
release_all:
    PyBuffer_Release(&acked);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&times);
    PyBuffer_Release(&seqs);
    PyBuffer_Release(&fci);
    return result;
}

/* record(seqs, times, sizes, acked, first, packet_sizes, now) -> the next sequence number:
 * estimator.record's loop (packet i gets (first + i) & 0xFFFF, sent at now). */
static PyObject *py_record(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "record(seqs, times, sizes, acked, first, packet_sizes, now)");
        return NULL;
    }
    unsigned long first = PyLong_AsUnsignedLong(args[4]);
    double now = PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (first > 0xFFFF)
        return malformed("first sequence number out of range");
    PyObject *packet_sizes = PySequence_Fast(args[5], "packet sizes must be a sequence");
    if (packet_sizes == NULL)
        return NULL;
    Py_buffer seqs = {0}, times = {0}, sizes = {0}, acked = {0};
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[0], &seqs, PyBUF_FORMAT | PyBUF_WRITABLE) < 0 ||
        PyObject_GetBuffer(args[1], &times, PyBUF_FORMAT | PyBUF_WRITABLE) < 0 ||
        PyObject_GetBuffer(args[2], &sizes, PyBUF_FORMAT | PyBUF_WRITABLE) < 0 ||
        PyObject_GetBuffer(args[3], &acked, PyBUF_WRITABLE) < 0)
        goto done;
    Py_ssize_t history = acked.len;
    if (strcmp(seqs.format, "l") || strcmp(sizes.format, "l") || strcmp(times.format, "d") ||
        seqs.len != history * (Py_ssize_t)sizeof(long) ||
        sizes.len != history * (Py_ssize_t)sizeof(long) ||
        times.len != history * (Py_ssize_t)sizeof(double) || history == 0 ||
        (history & (history - 1))) {
        PyErr_SetString(PyExc_ValueError, "history arrays of one power-of-two length");
        goto done;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(packet_sizes);
    PyObject **items = PySequence_Fast_ITEMS(packet_sizes);
    long *seq_of = seqs.buf, *size_of = sizes.buf;
    double *time_of = times.buf;
    unsigned char *acked_of = acked.buf;
    long mask = (long)history - 1;
    long seq = (long)first;
    for (Py_ssize_t k = 0; k < count; k++) {
        long size = PyLong_AsLong(items[k]);
        if (size == -1 && PyErr_Occurred())
            goto done;
        long i = seq & mask;
        seq_of[i] = seq;
        time_of[i] = now;
        size_of[i] = size;
        acked_of[i] = 0;
        seq = (seq + 1) & 0xFFFF;
    }
    result = PyLong_FromLong(seq);
done:
    PyBuffer_Release(&acked);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&times);
    PyBuffer_Release(&seqs);
    Py_DECREF(packet_sizes);
    return result;
}

static PyMethodDef methods[] = {
    {"record", (PyCFunction)(void (*)(void))py_record, METH_FASTCALL,
     "record(seqs, times, sizes, acked, first, packet_sizes, now) -> next sequence number"},
    {"parse", py_parse, METH_O,
     "parse(fci) -> (base_sequence, feedback_count, arrivals); ValueError when malformed"},
    {"scan", (PyCFunction)(void (*)(void))py_scan, METH_FASTCALL,
     "scan(fci, seqs, times, sizes, acked, now, history_age, min_size, burst, g_first, g_send,\n"
     "g_arrival) -> (received, lost, acked_bytes, unknown, groups, g_first, g_send, g_arrival)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay.media._twcc", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__twcc(void) { return PyModule_Create(&module); }
