/* The shared UDP port's batched I/O: recvmmsg and sendmmsg, which Python's socket lacks.
 *
 * The node's one port reads every session's datagrams: one recvfrom per datagram (argument
 * parsing, a syscall, a bytes and an address tuple) was most of its reader's cost. recv(fd, n)
 * reads up to n datagrams in batches of BATCH with one syscall each; send(fd, items) sends a
 * list of (data, address) with sendmmsg. recv(fd, n, True) adds each datagram's arrival, the
 * kernel's receive timestamp (SO_TIMESTAMPNS, enabled on the socket by the caller) moved to
 * CLOCK_MONOTONIC (time.monotonic's clock): a stamp taken when the event loop gets round to the
 * datagram would count the loop's stalls as network queueing (transport-cc feedback).
 * Fallback and reference: relay/rtc/udp_batch.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define DATAGRAM 4096 /* bigger ones are dropped (MSG_TRUNC): WebRTC peers keep under ~1500 */

/* Shared by every call: the GIL is held throughout (the calls never block: MSG_DONTWAIT), so
 * two event loops in two threads never use them at once. */
static unsigned char bufs[BATCH][DATAGRAM];
static struct sockaddr_storage addrs[BATCH];
static union {
    char buf[CMSG_SPACE(sizeof(struct timespec))];
    struct cmsghdr align;
} controls[BATCH];

static double seconds(const struct timespec *t) { return (double)t->tv_sec + t->tv_nsec * 1e-9; }

/* What to add to a CLOCK_REALTIME time to put it on CLOCK_MONOTONIC; `now` gets the monotonic
 * time. The realtime clock is read between two monotonic reads, again if they were far apart
 * (preempted between them on a loaded machine: the offset would be off by that much). */
static double realtime_to_monotonic(double *now) {
    struct timespec m1, real, m2;
    double offset = 0.0;
    for (int i = 0; i < 4; i++) {
        clock_gettime(CLOCK_MONOTONIC, &m1);
        clock_gettime(CLOCK_REALTIME, &real);
        clock_gettime(CLOCK_MONOTONIC, &m2);
        offset = (seconds(&m1) + seconds(&m2)) / 2 - seconds(&real);
        if (seconds(&m2) - seconds(&m1) < 50e-6)
            break;
    }
    *now = seconds(&m2);
    return offset;
}

/* The datagram's SO_TIMESTAMPNS stamp on the monotonic clock; `now` (monotonic) without one. */
static double arrival(struct msghdr *h, double realtime_to_monotonic, double now) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec t;
            memcpy(&t, CMSG_DATA(c), sizeof(t));
            double at = seconds(&t) + realtime_to_monotonic;
            return at < now ? at : now; /* a clock step must not put it in the future */
        }
    }
    return now;
}

static PyObject *address(const struct sockaddr_storage *a) {
    char host[INET6_ADDRSTRLEN];
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)a;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(v4->sin_port));
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(v6->sin6_port));
    }
    return Py_BuildValue("(si)", "", 0);
}

/* An SRTP or SRTCP datagram (RFC 7983: first byte 128..191) from an address with a lane
 * (`lanes`: {(host, port): take}) offered to it (the take tells RTP from RTCP: a viewer's
 * feedback lane takes SRTCP, relay/rtc/_rtcp_reader.c): 1 taken, 0 not,
 * -1 a Python error. A take that raises is reported as unraisable and counted taken (dropped):
 * the rest of the batch still goes on. */
static int offer_lane(PyObject *lanes, const unsigned char *d, unsigned int len, PyObject *addr,
                      PyObject **bytes) {
    if (len < 12 || d[0] < 128 || d[0] > 191)
        return 0;
    PyObject *take = PyDict_GetItemWithError(lanes, addr);
    if (take == NULL)
        return PyErr_Occurred() ? -1 : 0;
    *bytes = PyBytes_FromStringAndSize((const char *)d, (Py_ssize_t)len);
    if (*bytes == NULL)
        return -1;
    Py_INCREF(take);
    PyObject *r = PyObject_CallOneArg(take, *bytes);
    int taken = 1;
    if (r == NULL)
        PyErr_WriteUnraisable(take);
    else
        taken = r == Py_True;
    Py_XDECREF(r);
    Py_DECREF(take);
    return taken;
}

/* recv(fd, limit[, stamped[, lanes]]) -> [(bytes, (host, port)), ...]: what the socket holds, up
 * to limit datagrams; empty when nothing is waiting. With stamped true the items are (bytes,
 * (host, port), arrival): see the top. With lanes (a dict, see offer_lane) the result is (items,
 * taken): the datagrams a lane took are not among the items. Raises OSError for errors other
 * than EAGAIN/EINTR. */
static PyObject *udp_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "recv(fd, limit[, stamped[, lanes]])");
        return NULL;
    }
    PyObject *lanes = nargs == 4 ? args[3] : NULL;
    if (lanes != NULL && !PyDict_Check(lanes)) {
        PyErr_SetString(PyExc_TypeError, "lanes must be a dict");
        return NULL;
    }
    Py_ssize_t taken = 0;
    int fd = (int)PyLong_AsLong(args[0]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    int stamped = nargs >= 3 ? PyObject_IsTrue(args[2]) : 0;
    if (stamped < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    while (PyList_GET_SIZE(out) + taken < limit) {
        unsigned int want = (unsigned int)(limit - PyList_GET_SIZE(out) - taken);
        if (want > BATCH)
            want = BATCH;
        memset(msgs, 0, sizeof(msgs[0]) * want);
        for (unsigned int i = 0; i < want; i++) {
            iovs[i].iov_base = bufs[i];
            iovs[i].iov_len = DATAGRAM;
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &addrs[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
            if (stamped) {
                msgs[i].msg_hdr.msg_control = controls[i].buf;
                msgs[i].msg_hdr.msg_controllen = sizeof(controls[i].buf);
            }
        }
        int got = recvmmsg(fd, msgs, want, MSG_DONTWAIT, NULL);
        double now = 0.0, offset = 0.0;
        if (stamped && got > 0)
            offset = realtime_to_monotonic(&now);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            if (PyList_GET_SIZE(out) > 0)
                break; /* deliver what was read; the error comes back on the next call */
            Py_DECREF(out);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        for (int i = 0; i < got; i++) {
            unsigned int len = msgs[i].msg_len;
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
                continue;
            PyObject *item;
            if (lanes != NULL && PyDict_GET_SIZE(lanes) > 0) {
                PyObject *addr = address(&addrs[i]), *bytes = NULL;
                int r = addr == NULL ? -1 : offer_lane(lanes, bufs[i], len, addr, &bytes);
                if (r != 0) {
                    Py_XDECREF(addr);
                    Py_XDECREF(bytes);
                    if (r < 0) {
                        Py_DECREF(out);
                        return NULL;
                    }
                    taken++;
                    continue;
                }
                if (bytes == NULL)
                    bytes = PyBytes_FromStringAndSize((const char *)bufs[i], (Py_ssize_t)len);
                item = bytes == NULL ? NULL
                       : stamped     ? Py_BuildValue("(NNd)", bytes, addr,
                                                     arrival(&msgs[i].msg_hdr, offset, now))
                                     : Py_BuildValue("(NN)", bytes, addr);
                if (bytes == NULL)
                    Py_DECREF(addr);
            } else
                item = stamped
                           ? Py_BuildValue("(y#Nd)", (const char *)bufs[i], (Py_ssize_t)len,
                                           address(&addrs[i]), arrival(&msgs[i].msg_hdr, offset, now))
                           : Py_BuildValue("(y#N)", (const char *)bufs[i], (Py_ssize_t)len,
                                           address(&addrs[i]));
            if (item == NULL || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(item);
        }
        if ((unsigned int)got < want)
            break; /* drained */
    }
    if (lanes != NULL)
        return Py_BuildValue("(Nn)", out, taken);
    return out;
}

/* Fills `out` from a (host, port) tuple; -1 with an exception set on a bad address. */
static int parse_addr(PyObject *addr, struct sockaddr_storage *out, socklen_t *len) {
    const char *host;
    int port;
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be (host, port)");
        return -1;
    }
    host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    port = (int)PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (host == NULL || PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*v6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
    return -1;
}

/* send(fd, [(data, (host, port)), ...]) -> (sent, dropped): one sendmmsg per BATCH. A datagram
 * the kernel refuses (a full buffer, an unreachable address) is counted as dropped and the rest
 * still go, as separate sendto calls would. */
static PyObject *udp_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "send(fd, list)");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *items = args[1];
    Py_ssize_t n = PyList_GET_SIZE(items), sent = 0, dropped = 0;
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    Py_buffer views[BATCH];
    Py_ssize_t at = 0;
    while (at < n) {
        unsigned int count = 0;
        memset(msgs, 0, sizeof(msgs));
        while (count < BATCH && at < n) {
            PyObject *item = PyList_GET_ITEM(items, at++);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                PyErr_SetString(PyExc_TypeError, "items must be (data, address)");
                goto fail;
            }
            socklen_t len = 0;
            if (parse_addr(PyTuple_GET_ITEM(item, 1), &addrs[count], &len) < 0) {
                PyErr_Clear(); /* a malformed address is that peer's problem */
                dropped++;
                continue;
            }
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &views[count], PyBUF_SIMPLE) < 0)
                goto fail;
            iovs[count].iov_base = views[count].buf;
            iovs[count].iov_len = (size_t)views[count].len;
            msgs[count].msg_hdr.msg_iov = &iovs[count];
            msgs[count].msg_hdr.msg_iovlen = 1;
            msgs[count].msg_hdr.msg_name = &addrs[count];
            msgs[count].msg_hdr.msg_namelen = len;
            count++;
        }
        unsigned int done = 0;
        while (done < count) {
            int r = sendmmsg(fd, msgs + done, count - done, MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                dropped++; /* this one failed: skip it, send the rest */
                done++;
            }
            else {
                sent += r;
                done += (unsigned int)r;
            }
        }
        for (unsigned int i = 0; i < count; i++)
            PyBuffer_Release(&views[i]);
        continue;
    fail:
        for (unsigned int i = 0; i < count; i++)
            PyBuffer_Release(&views[i]);
        return NULL;
    }
    return Py_BuildValue("(nn)", sent, dropped);
}

static PyMethodDef methods[] = {
    {"recv", (PyCFunction)(void (*)(void))udp_recv, METH_FASTCALL,
     "recv(fd, limit[, stamped[, lanes]]) -> list of (data, (host, port)[, arrival]): up to "
     "limit datagrams, recvmmsg; arrival: the kernel's receive time on the monotonic clock; "
     "with lanes ({address: take}) (list, taken): SRTP a lane took is not listed"},
    {"send", (PyCFunction)(void (*)(void))udp_send, METH_FASTCALL,
     "send(fd, items) -> (sent, dropped): items are (data, (host, port)), sendmmsg"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay.rtc._udp_batch", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__udp_batch(void) { return PyModule_Create(&module); }
