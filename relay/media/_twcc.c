/* A viewer's transport-cc feedback taken in one C call: parse the FCI and match each reported
 * packet against the estimator's send history.
 *
 * In Python, parsing a ~30-packet feedback and walking its packets cost ~25 us (a Chromium
 * viewer sends 10-20 a second: ~0.0003 core per viewer, over issue 17's 10 % budget). This does
 * exactly what relay/media/cc_feedback.py's parse_transport_feedback and the packet loop of
 * relay/media/estimator.py's BandwidthEstimator.on_transport_feedback do (those stay as the
 * fallback and the reference: tests/unit/test_twcc_native.py checks both give the same results),
 * and hands the completed packet groups back. TwccState (below) goes further: the whole of a
 * feedback's work, trendline and targets included, in one call (estimator.py's TwccState is its
 * reference).
 *
 * Nothing is changed unless the whole feedback parses (ValueError otherwise): the arrivals are
 * decoded into a bounded stack array first (MAX_STATUS_COUNT), then matched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stddef.h>
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


/* ---- TwccState: estimator.py's TwccState in C (the reference is the Python class) ----------
 *
 * Everything one transport-cc feedback changes in a viewer's estimator: the rate limit, the
 * matching of its statuses to what was sent, the packet groups and the delay trendline, the acknowledged/received/lost windows
 * and the delay- and loss-based targets, so that take() does a whole feedback in one call.
 * Every expression follows the Python one operand for operand (PYMIN/PYMAX are Python's min/max
 * of two), so both end in the same doubles: tests/unit/test_twcc_native.py compares them. */

#define HISTORY_AGE 5.0
#define DELAY_MIN_SIZE 300
#define BURST 0.005
#define MAX_GAP 5.0
#define BETA 0.85
#define GROWTH 1.08
#define HEADROOM 1.5
#define LOSS_HIGH 0.10
#define LOSS_LOW 0.02
#define LOSS_PERSIST 0.5
#define WINDOW_S 1.0
#define MIN_SPAN 0.25
#define PROBE_FRESH 5.0
#define TREND_WINDOW 20
#define TREND_RESUM 256
#define SMOOTHING 0.9
#define GAIN 4.0
#define K_UP 0.0087
#define K_DOWN 0.039

#define PYMIN(a, b) ((b) < (a) ? (b) : (a))
#define PYMAX(a, b) ((b) > (a) ? (b) : (a))

enum { NORMAL = 0, OVERUSE = 1, UNDERUSE = 2 };
static PyObject *usages[3]; /* estimator.Usage's members (set_usages) */

typedef struct {
    int has;
    double v;
} Opt;

typedef struct {
    double t;
    long long v;
} Event;

typedef struct { /* estimator._Window */
    Event *ev;
    Py_ssize_t cap, head, len;
    long long sum;
    Opt start;
} Window;

static int window_add(Window *w, double now, long long value) {
    if (!w->start.has)
        w->start = (Opt){1, now};
    if (w->len == w->cap) {
        Py_ssize_t cap = w->cap ? 2 * w->cap : 64;
        Event *ev = PyMem_Malloc(cap * sizeof(Event));
        if (ev == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t k = 0; k < w->len; k++)
            ev[k] = w->ev[(w->head + k) % w->cap];
        PyMem_Free(w->ev);
        w->ev = ev;
        w->cap = cap;
        w->head = 0;
    }
    w->ev[(w->head + w->len) % w->cap] = (Event){now, value};
    w->len++;
    w->sum += value;
    while (w->len && now - w->ev[w->head].t >= WINDOW_S) {
        w->sum -= w->ev[w->head].v;
        w->head = (w->head + 1) % w->cap;
        w->len--;
    }
    return 0;
}

static long long window_total(Window *w, double now) {
    while (w->len && now - w->ev[w->head].t >= WINDOW_S) {
        w->sum -= w->ev[w->head].v;
        w->head = (w->head + 1) % w->cap;
        w->len--;
    }
    return w->sum;
}

static int window_rate(Window *w, double now, double *rate) {
    if (!w->start.has || now - w->start.v < MIN_SPAN)
        return 0;
    long long total = window_total(w, now);
    *rate = (double)total / PYMIN(WINDOW_S, now - w->start.v);
    return 1;
}

typedef struct { /* estimator._Trendline */
    double accumulated, smoothed;
    int deltas;
    double px[TREND_WINDOW + 1], py[TREND_WINDOW + 1];
    int head, len;
    Opt origin;
    double sx, sy, sxx, sxy;
    int since_resum;
    double threshold;
    Opt last_threshold_update;
    double over_time;
    int over_count;
    double prev_trend;
    int usage;
} Trend;

static void trend_reset(Trend *t) {
    t->accumulated = t->smoothed = 0.0;
    t->deltas = 0;
    t->head = t->len = 0;
    t->origin.has = 0;
    t->sx = t->sy = t->sxx = t->sxy = 0.0;
    t->since_resum = 0;
    t->threshold = 12.5;
    t->last_threshold_update.has = 0;
    t->over_time = -1.0;
    t->over_count = 0;
    t->prev_trend = 0.0;
    t->usage = NORMAL;
}

#define PX(t, k) ((t)->px[((t)->head + (k)) % (TREND_WINDOW + 1)])
#define PY(t, k) ((t)->py[((t)->head + (k)) % (TREND_WINDOW + 1)])

static double trend_slope(Trend *t) {
    double n = (double)t->len;
    double den = n * t->sxx - t->sx * t->sx;
    return den > 0 ? (n * t->sxy - t->sx * t->sy) / den : 0.0;
}

static void trend_resum(Trend *t) {
    double shift = PX(t, 0);
    t->origin.v += shift;
    for (int k = 0; k < t->len; k++)
        PX(t, k) = PX(t, k) - shift;
    double sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0;
    for (int k = 0; k < t->len; k++)
        sx += PX(t, k);
    for (int k = 0; k < t->len; k++)
        sy += PY(t, k);
    for (int k = 0; k < t->len; k++)
        sxx += PX(t, k) * PX(t, k);
    for (int k = 0; k < t->len; k++)
        sxy += PX(t, k) * PY(t, k);
    t->sx = sx, t->sy = sy, t->sxx = sxx, t->sxy = sxy;
    t->since_resum = 0;
}

static void trend_detect(Trend *t, double trend, double send_delta_ms, double now_ms) {
    if (trend > t->threshold) {
        t->over_time = t->over_time < 0 ? send_delta_ms / 2 : t->over_time;
        t->over_time += send_delta_ms;
        t->over_count += 1;
        if (t->over_time > 10 && t->over_count > 1 && trend >= t->prev_trend) {
            t->over_time = 0.0, t->over_count = 0;
            t->usage = OVERUSE;
        }
    } else if (trend < -t->threshold) {
        t->over_time = -1.0, t->over_count = 0;
        t->usage = UNDERUSE;
    } else {
        t->over_time = -1.0, t->over_count = 0;
        t->usage = NORMAL;
    }
    t->prev_trend = trend;
    Opt last = t->last_threshold_update;
    t->last_threshold_update = (Opt){1, now_ms};
    if (!last.has || fabs(trend) > t->threshold + 15)
        return;
    double k = fabs(trend) < t->threshold ? K_DOWN : K_UP;
    double dt = PYMIN(PYMAX(now_ms - last.v, 0.0), 100.0);
    double threshold = t->threshold + k * (fabs(trend) - t->threshold) * dt;
    t->threshold = PYMIN(600.0, PYMAX(6.0, threshold));
}

static int trend_update(Trend *t, double delay_ms, double send_delta_ms, double arrival_ms) {
    t->deltas = t->deltas + 1 < 1000 ? t->deltas + 1 : 1000;
    t->accumulated += delay_ms;
    double y = t->smoothed = SMOOTHING * t->smoothed + (1 - SMOOTHING) * t->accumulated;
    if (!t->origin.has)
        t->origin = (Opt){1, arrival_ms};
    double x = arrival_ms - t->origin.v;
    PX(t, t->len) = x;
    PY(t, t->len) = y;
    t->len++;
    t->sx += x;
    t->sy += y;
    t->sxx += x * x;
    t->sxy += x * y;
    if (t->len > TREND_WINDOW) {
        double ox = PX(t, 0), oy = PY(t, 0);
        t->head = (t->head + 1) % (TREND_WINDOW + 1);
        t->len--;
        t->sx -= ox;
        t->sy -= oy;
        t->sxx -= ox * ox;
        t->sxy -= ox * oy;
    }
    t->since_resum += 1;
    if (t->since_resum >= TREND_RESUM)
        trend_resum(t);
    if (t->len == TREND_WINDOW) {
        double trend = (double)(t->deltas < 60 ? t->deltas : 60) * trend_slope(t) * GAIN;
        trend_detect(t, trend, send_delta_ms, arrival_ms);
    }
    return t->usage;
}

typedef struct {
    PyObject_HEAD
    Py_buffer seqs, times, sizes, acked; /* the estimator's send history */
    long mask;
    double rate, burst;
    Trend trend;
    Window acked_bytes, received, lost;
    double group[3];
    Opt prev_send, prev_arrival;
    Opt delay_target, loss_target;
    int increasing;
    Opt last_update;
    double last_loss_decrease;
    Opt loss_high_since, twcc_at;
    long long feedbacks, unknown, clamped, lost_packets, refused;
    double tokens;
    Opt tokens_at;
} State;

static void State_dealloc(State *self) {
    PyBuffer_Release(&self->seqs);
    PyBuffer_Release(&self->times);
    PyBuffer_Release(&self->sizes);
    PyBuffer_Release(&self->acked);
    PyMem_Free(self->acked_bytes.ev);
    PyMem_Free(self->received.ev);
    PyMem_Free(self->lost.ev);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int State_init(State *self, PyObject *args, PyObject *kwds) {
    PyObject *seqs, *times, *sizes, *acked;
    double rate, burst;
    if (self->acked.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "TwccState is initialized once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOOOdd", &seqs, &times, &sizes, &acked, &rate, &burst))
        return -1;
    if (PyObject_GetBuffer(seqs, &self->seqs, PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(times, &self->times, PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(sizes, &self->sizes, PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(acked, &self->acked, PyBUF_WRITABLE) < 0)
        return -1;
    Py_ssize_t history = self->acked.len;
    if (strcmp(self->seqs.format, "l") || strcmp(self->sizes.format, "l") ||
        strcmp(self->times.format, "d") ||
        self->seqs.len != history * (Py_ssize_t)sizeof(long) ||
        self->sizes.len != history * (Py_ssize_t)sizeof(long) ||
        self->times.len != history * (Py_ssize_t)sizeof(double) || history == 0 ||
        (history & (history - 1))) {
        PyErr_SetString(PyExc_ValueError, "history arrays of one power-of-two length");
        return -1;
    }
    self->mask = (long)history - 1;
    self->rate = rate;
    self->burst = burst;
    trend_reset(&self->trend);
    self->group[0] = self->group[1] = self->group[2] = -1.0;
    self->increasing = 1;
    self->last_loss_decrease = -INFINITY;
    self->tokens = burst;
    return 0;
}

static int admit(State *self, double now) {
    Opt last = self->tokens_at;
    self->tokens_at = (Opt){1, now};
    if (last.has)
        self->tokens = PYMIN(self->burst, self->tokens + (now - last.v) * self->rate);
    if (self->tokens < 1.0) {
        self->refused++;
        return 0;
    }
    self->tokens -= 1.0;
    return 1;
}

static double loss_of(State *self, double now) {
    long long lost = window_total(&self->lost, now);
    long long total = lost + window_total(&self->received, now);
    return total ? (double)lost / (double)total : 0.0;
}

static int group_done(State *self, double group_send, double group_arrival) {
    Opt prev_send = self->prev_send, prev_arrival = self->prev_arrival;
    self->prev_send = (Opt){1, group_send};
    self->prev_arrival = (Opt){1, group_arrival};
    if (!prev_send.has)
        return self->trend.usage;
    double send_delta = group_send - prev_send.v;
    double arrival_delta = group_arrival - prev_arrival.v;
    if (fabs(arrival_delta) > MAX_GAP || send_delta < 0) {
        self->clamped++;
        trend_reset(&self->trend);
        return self->trend.usage;
    }
    if (arrival_delta < 0)
        return self->trend.usage;
    return trend_update(&self->trend, (arrival_delta - send_delta) * 1000, send_delta * 1000,
                        group_arrival * 1000);
}

static void update(State *self, int usage, double now, double probe_bps, double probe_at,
                   double rtt) {
    double acked_rate;
    if (!window_rate(&self->acked_bytes, now, &acked_rate))
        return;
    double acked = 8 * acked_rate;
    double dt = self->last_update.has
                    ? PYMIN(PYMAX(now - self->last_update.v, 0.0), 1.0)
                    : 0.0;
    self->last_update = (Opt){1, now};
    double growth = pow(GROWTH, dt);
    double cap = HEADROOM * acked + 10000;
    if (probe_bps >= 0 && now - probe_at <= PROBE_FRESH)
        cap = PYMAX(cap, probe_bps);
    double loss = loss_of(self, now);
    double target = self->delay_target.has ? self->delay_target.v : acked;
    if (usage == OVERUSE) {
        target = PYMIN(target, BETA * acked);
        self->increasing = 0;
    } else if (usage == UNDERUSE) {
        self->increasing = 0;
    } else if (!self->increasing) {
        self->increasing = 1;
    } else {
        target = PYMAX(target * growth, acked);
    }
    self->delay_target = (Opt){1, PYMIN(target, cap)};
    double loss_target = self->loss_target.has ? self->loss_target.v : acked;
    if (loss > LOSS_HIGH) {
        if (!self->loss_high_since.has)
            self->loss_high_since = (Opt){1, now};
        int persistent = now - self->loss_high_since.v >= LOSS_PERSIST;
        if ((persistent || usage != NORMAL) && (now - self->last_loss_decrease >= 0.3 + rtt)) {
            self->last_loss_decrease = now;
            loss_target = PYMAX(loss_target * (1 - 0.5 * loss), BETA * acked);
        }
    } else {
        self->loss_high_since.has = 0;
        if (loss < LOSS_LOW || usage == NORMAL)
            loss_target = PYMAX(loss_target * growth, acked);
    }
    self->loss_target = (Opt){1, PYMIN(loss_target, cap)};
}

/* TwccState.apply's work: -1 with an exception (out of memory) */
static int apply(State *self, double now, long long received, long long lost,
                 long long acked_bytes, long long unknown, const double *group_send,
                 const double *group_arrival, Py_ssize_t groups, const double *group,
                 double probe_bps, double probe_at, double rtt) {
    self->feedbacks++;
    self->twcc_at = (Opt){1, now};
    self->unknown += unknown;
    int usage = self->trend.usage;
    for (Py_ssize_t k = 0; k < groups; k++)
        usage = group_done(self, group_send[k], group_arrival[k]);
    self->group[0] = group[0], self->group[1] = group[1], self->group[2] = group[2];
    if (received) {
        if (window_add(&self->acked_bytes, now, acked_bytes) < 0 ||
            window_add(&self->received, now, received) < 0)
            return -1;
    }
    if (lost) {
        if (window_add(&self->lost, now, lost) < 0)
            return -1;
        self->lost_packets += lost;
    }
    update(self, usage, now, probe_bps, probe_at, rtt);
    return 0;
}

/* take(fci, now, probe_bps, probe_at, rtt) -> 0 taken, 1 malformed, 2 refused */
static PyObject *State_take(State *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "take(fci, now, probe_bps, probe_at, rtt)");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[1]), probe_bps = PyFloat_AsDouble(args[2]);
    double probe_at = PyFloat_AsDouble(args[3]), rtt = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (!admit(self, now))
        return PyLong_FromLong(2);
    Py_buffer fci;
    if (PyObject_GetBuffer(args[0], &fci, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned char status[MAX_STATUS_COUNT];
    double arrival[MAX_STATUS_COUNT];
    unsigned base, fb_count, count;
    int bad = parse(fci.buf, fci.len, &base, &fb_count, &count, status, arrival);
    PyBuffer_Release(&fci);
    if (bad) {
        PyErr_Clear();
        return PyLong_FromLong(1);
    }
    const long *seq_of = self->seqs.buf, *size_of = self->sizes.buf;
    const double *time_of = self->times.buf;
    unsigned char *acked_of = self->acked.buf;
    long mask = self->mask;
    long long received = 0, lost = 0, acked_bytes = 0, unknown = 0;
    double group_send[MAX_STATUS_COUNT], group_arrival[MAX_STATUS_COUNT];
    Py_ssize_t groups = 0;
    double g_first = self->group[0], g_send = self->group[1], g_arrival = self->group[2];
    for (unsigned offset = 0; offset < count; offset++) {
        long seq = (long)((base + offset) & 0xFFFF);
        long i = seq & mask;
        double send = time_of[i];
        if (seq_of[i] != seq || now - send > HISTORY_AGE) {
            unknown++;
            continue;
        }
        if (!status[offset]) {
            if (!acked_of[i])
                lost++;
            continue;
        }
        if (acked_of[i])
            continue;
        acked_of[i] = 1;
        received++;
        long size = size_of[i];
        acked_bytes += size;
        if (size < DELAY_MIN_SIZE)
            continue;
        double a = arrival[offset];
        if (g_first >= 0 && send - g_first <= BURST) {
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
    double group[3] = {g_first, g_send, g_arrival};
    if (apply(self, now, received, lost, acked_bytes, unknown, group_send, group_arrival, groups,
              group, probe_bps, probe_at, rtt) < 0)
        return NULL;
    return PyLong_FromLong(0);
}

/* apply(now, received, lost, acked_bytes, unknown, groups, group, probe_bps, probe_at, rtt) */
static PyObject *State_apply(State *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "apply(now, received, lost, acked_bytes, unknown, "
                                         "groups, group, probe_bps, probe_at, rtt)");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[0]);
    long long received = PyLong_AsLongLong(args[1]), lost = PyLong_AsLongLong(args[2]);
    long long acked_bytes = PyLong_AsLongLong(args[3]), unknown = PyLong_AsLongLong(args[4]);
    double probe_bps = PyFloat_AsDouble(args[7]), probe_at = PyFloat_AsDouble(args[8]);
    double rtt = PyFloat_AsDouble(args[9]);
    double group[3];
    if (PyErr_Occurred())
        return NULL;
    if (!PyArg_ParseTuple(args[6], "ddd", &group[0], &group[1], &group[2]))
        return NULL;
    PyObject *seq = PySequence_Fast(args[5], "groups must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t groups = PySequence_Fast_GET_SIZE(seq);
    double *send = PyMem_Malloc((groups + 1) * sizeof(double));
    double *arrival = PyMem_Malloc((groups + 1) * sizeof(double));
    PyObject *result = NULL;
    if (send == NULL || arrival == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < groups; k++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "dd", &send[k], &arrival[k]))
            goto done;
    }
    if (apply(self, now, received, lost, acked_bytes, unknown, send, arrival, groups, group,
              probe_bps, probe_at, rtt) == 0)
        result = Py_NewRef(Py_None);
done:
    PyMem_Free(send);
    PyMem_Free(arrival);
    Py_DECREF(seq);
    return result;
}

static PyObject *State_admit(State *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(admit(self, now));
}

static PyObject *State_acked_rate(State *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg), rate;
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (!window_rate(&self->acked_bytes, now, &rate))
        Py_RETURN_NONE;
    return PyFloat_FromDouble(rate);
}

static PyObject *State_loss(State *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return PyFloat_FromDouble(loss_of(self, now));
}

static PyObject *opt(Opt o) { return o.has ? PyFloat_FromDouble(o.v) : Py_NewRef(Py_None); }

static PyObject *State_get_usage(State *self, void *closure) {
    PyObject *u = usages[self->trend.usage];
    if (u == NULL)
        return PyLong_FromLong(self->trend.usage);
    return Py_NewRef(u);
}

static PyObject *State_get_group(State *self, void *closure) {
    return Py_BuildValue("(ddd)", self->group[0], self->group[1], self->group[2]);
}

static PyObject *State_get_prev(State *self, void *closure) {
    if (!self->prev_send.has)
        Py_RETURN_NONE;
    return Py_BuildValue("(dd)", self->prev_send.v, self->prev_arrival.v);
}

/* inner(now): every field, for the tests (TwccState.inner in Python gives the same):
 * ((accumulated, smoothed, deltas, points, origin, sx, sy, sxx, sxy, since_resum, threshold,
 *   last_threshold_update, over_time, over_count, prev_trend, usage),
 *  group, prev, delay_target, loss_target, increasing, last_update, last_loss_decrease,
 *  loss_high_since, twcc_at, feedbacks, unknown, clamped, lost_packets, refused, tokens,
 *  tokens_at, (acked bytes, received, lost) over the window) */
static PyObject *State_inner(State *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    Trend *t = &self->trend;
    PyObject *points = PyList_New(t->len);
    if (points == NULL)
        return NULL;
    for (int k = 0; k < t->len; k++) {
        PyObject *p = Py_BuildValue("(dd)", PX(t, k), PY(t, k));
        if (p == NULL) {
            Py_DECREF(points);
            return NULL;
        }
        PyList_SET_ITEM(points, k, p);
    }
    PyObject *trend = Py_BuildValue(
        "(ddiNNddddidNdidi)", t->accumulated, t->smoothed, t->deltas, points, opt(t->origin),
        t->sx, t->sy, t->sxx, t->sxy, t->since_resum, t->threshold,
        opt(t->last_threshold_update), t->over_time, t->over_count, t->prev_trend, t->usage);
    if (trend == NULL)
        return NULL;
    PyObject *prev = State_get_prev(self, NULL);
    if (prev == NULL) {
        Py_DECREF(trend);
        return NULL;
    }
    long long acked = window_total(&self->acked_bytes, now);
    long long received = window_total(&self->received, now);
    long long lost = window_total(&self->lost, now);
    return Py_BuildValue("(N(ddd)NNNiNdNNLLLLLdN(LLL))", trend, self->group[0], self->group[1],
                         self->group[2], prev, opt(self->delay_target), opt(self->loss_target),
                         self->increasing, opt(self->last_update), self->last_loss_decrease,
                         opt(self->loss_high_since), opt(self->twcc_at), self->feedbacks,
                         self->unknown, self->clamped, self->lost_packets, self->refused,
                         self->tokens, opt(self->tokens_at), acked, received, lost);
}

static PyObject *get_opt(State *self, void *closure) {
    return opt(*(Opt *)((char *)self + (Py_ssize_t)closure));
}

static int set_opt(State *self, PyObject *value, void *closure) {
    Opt *o = (Opt *)((char *)self + (Py_ssize_t)closure);
    if (value == NULL || value == Py_None) {
        o->has = 0;
        return 0;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    *o = (Opt){1, v};
    return 0;
}

static PyObject *get_count(State *self, void *closure) {
    return PyLong_FromLongLong(*(long long *)((char *)self + (Py_ssize_t)closure));
}

#define OPT(name, doc)                                                                         \
    {#name, (getter)get_opt, (setter)set_opt, doc, (void *)offsetof(State, name)}
#define COUNT(name, doc) {#name, (getter)get_count, NULL, doc, (void *)offsetof(State, name)}

static PyGetSetDef State_getset[] = {
    {"usage", (getter)State_get_usage, NULL, "the delay detector's state", NULL},
    {"group", (getter)State_get_group, NULL, "the open group (first send, last send, arrival)",
     NULL},
    {"prev", (getter)State_get_prev, NULL, "the last completed group (send, arrival)", NULL},
    OPT(delay_target, "the delay-based target (bits/s) or None"),
    OPT(loss_target, "the loss-based target (bits/s) or None"),
    OPT(twcc_at, "when the last feedback was taken or None"),
    COUNT(feedbacks, "feedback packets taken"),
    COUNT(unknown, "packets reported that were not sent (or too long ago)"),
    COUNT(clamped, "delay filter resets (clock jumps, lies)"),
    COUNT(lost_packets, "packets reported lost"),
    COUNT(refused, "feedback packets over the rate limit"),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef State_methods[] = {
    {"take", (PyCFunction)(void (*)(void))State_take, METH_FASTCALL,
     "take(fci, now, probe_bps, probe_at, rtt) -> 0 taken, 1 malformed, 2 refused"},
    {"apply", (PyCFunction)(void (*)(void))State_apply, METH_FASTCALL,
     "apply(now, received, lost, acked_bytes, unknown, groups, group, probe_bps, probe_at, rtt)"},
    {"admit", (PyCFunction)State_admit, METH_O, "admit(now) -> within the rate limit"},
    {"acked_rate", (PyCFunction)State_acked_rate, METH_O, "acked_rate(now) -> bytes/s or None"},
    {"loss", (PyCFunction)State_loss, METH_O, "loss(now) -> the share reported lost"},
    {"inner", (PyCFunction)State_inner, METH_O, "inner(now) -> every field (tests)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.media._twcc.TwccState",
    .tp_basicsize = sizeof(State),
    .tp_dealloc = (destructor)State_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TwccState(seqs, times, sizes, acked, feedback_rate, feedback_burst)",
    .tp_methods = State_methods,
    .tp_getset = State_getset,
    .tp_init = (initproc)State_init,
    .tp_new = PyType_GenericNew,
};

/* set_usages(normal, overuse, underuse): what TwccState.usage returns */
static PyObject *py_set_usages(PyObject *mod, PyObject *args) {
    PyObject *n, *o, *u;
    if (!PyArg_ParseTuple(args, "OOO", &n, &o, &u))
        return NULL;
    Py_XSETREF(usages[NORMAL], Py_NewRef(n));
    Py_XSETREF(usages[OVERUSE], Py_NewRef(o));
    Py_XSETREF(usages[UNDERUSE], Py_NewRef(u));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"record", (PyCFunction)(void (*)(void))py_record, METH_FASTCALL,
     "record(seqs, times, sizes, acked, first, packet_sizes, now) -> next sequence number"},
    {"parse", py_parse, METH_O,
     "parse(fci) -> (base_sequence, feedback_count, arrivals); ValueError when malformed"},
    {"set_usages", py_set_usages, METH_VARARGS,
     "set_usages(normal, overuse, underuse): what TwccState.usage returns"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay.media._twcc", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__twcc(void) {
    if (PyType_Ready(&StateType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *constants = Py_BuildValue(
        "{sdsisdsdsdsdsdsdsdsdsdsdsdsisisdsdsdsd}", "HISTORY_AGE", HISTORY_AGE, "DELAY_MIN_SIZE",
        DELAY_MIN_SIZE, "BURST", BURST, "MAX_GAP", MAX_GAP, "BETA", BETA, "GROWTH", GROWTH,
        "HEADROOM", HEADROOM, "LOSS_HIGH", LOSS_HIGH, "LOSS_LOW", LOSS_LOW, "LOSS_PERSIST",
        LOSS_PERSIST, "WINDOW", WINDOW_S, "PROBE_FRESH", PROBE_FRESH, "MIN_SPAN", MIN_SPAN,
        "TREND_WINDOW", TREND_WINDOW, "TREND_RESUM", TREND_RESUM, "SMOOTHING", SMOOTHING, "GAIN",
        GAIN, "K_UP", K_UP, "K_DOWN", K_DOWN);
    Py_INCREF(&StateType);
    if (constants == NULL || PyModule_AddObject(m, "CONSTANTS", constants) < 0 ||
        PyModule_AddObject(m, "TwccState", (PyObject *)&StateType) < 0) {
        Py_XDECREF(constants);
        Py_DECREF(&StateType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
