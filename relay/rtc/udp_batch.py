"""Batched datagram I/O for the node's shared UDP port: ``recv`` reads what a socket holds (up to
a limit), ``send`` sends a list. In C (``_udp_batch.c``: recvmmsg/sendmmsg, one syscall per 64
datagrams) when built, else these recvfrom/sendto loops, which are also the reference.

``recv_stamped`` adds each datagram's arrival as the kernel stamped it (``enable_stamps`` on the
socket first: SO_TIMESTAMPNS), on ``time.monotonic``'s clock: the shared port's reader may get
to a datagram late (an event loop busy elsewhere), and a stamp taken then would read as network
queueing to a sender's delay-based congestion control (transport-cc feedback)."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

try:
    from . import _udp_batch as _native
except ImportError:  # built without a C compiler
    _native = None  # type: ignore[assignment,unused-ignore]

log = logging.getLogger(__name__)
NATIVE = _native is not None
DATAGRAM = 4096  # bigger datagrams are dropped (the C reader's buffer; WebRTC stays under 1500)

Addr = tuple[str, int]


def recv(sock: socket.socket, limit: int, *, native: bool = True) -> list[tuple[bytes, Addr]]:
    """Up to ``limit`` waiting datagrams with their sources (empty: none waiting). An error
    other than "nothing waiting" is raised unless some datagrams were read first."""
    if native and _native is not None:
        got: list[tuple[bytes, Addr]] = _native.recv(sock.fileno(), limit)
        return got
    out: list[tuple[bytes, Addr]] = []
    while len(out) < limit:
        try:
            data, addr = sock.recvfrom(DATAGRAM + 1)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            if out:
                break
            raise
        if len(data) <= DATAGRAM:
            out.append((data, (addr[0], addr[1])))
    return out


Stamped = tuple[bytes, Addr, float]
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_CONTROL = socket.CMSG_SPACE(_TIMESPEC.size)
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux (SCM_TIMESTAMPNS: the same)


def enable_stamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each datagram's arrival (False: this system will not)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def recv_stamped(sock: socket.socket, limit: int, *, native: bool = True) -> list[Stamped]:
    """As ``recv``, each datagram with its arrival (``time.monotonic``'s clock; the time of this
    call where the kernel gave no stamp)."""
    if native and _native is not None:
        got: list[Stamped] = _native.recv(sock.fileno(), limit, True)
        return got
    out: list[Stamped] = []
    while len(out) < limit:
        try:
            data, ancillary, _, addr = sock.recvmsg(DATAGRAM + 1, _CONTROL)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            if out:
                break
            raise
        now = time.monotonic()
        at = now
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(value)
                now, offset = _realtime_to_monotonic()
                at = min(now, sec + nsec * 1e-9 + offset)
        if len(data) <= DATAGRAM:
            out.append((data, (addr[0], addr[1]), at))
    return out


Take = Callable[[bytes], bool]


def lane_candidate(data: bytes) -> bool:
    """SRTP or SRTCP (RFC 7983: first byte 128..191); the lane's take tells them apart."""
    return len(data) >= 12 and 127 < data[0] < 192


def recv_laned(
    sock: socket.socket, limit: int, lanes: dict[Addr, Take], *, native: bool = True
) -> tuple[list[Stamped], int]:
    """As ``recv_stamped``, with each SRTP or SRTCP datagram from an address in ``lanes`` first
    offered to its ``take`` (a C lane of the receive path: relay/rtc/_rtp_reader.c for an
    anchor's media, _rtcp_reader.c for a viewer's feedback), which handles it whole or leaves it
    (False); returns the datagrams left and how many were taken."""
    if native and _native is not None:
        got: tuple[list[Stamped], int] = _native.recv(sock.fileno(), limit, True, lanes)
        return got
    out: list[Stamped] = []
    taken = 0
    for item in recv_stamped(sock, limit, native=False):
        take = lanes.get(item[1]) if lane_candidate(item[0]) else None
        try:
            took = take is not None and take(item[0])
        except Exception:  # counted taken (dropped), as the C one does; the batch goes on
            log.exception("a receive lane failed")
            took = True
        if took:
            taken += 1
        else:
            out.append(item)
    return out, taken


def _realtime_to_monotonic() -> tuple[float, float]:
    """(now on the monotonic clock, what to add to a wall-clock time to put it there); the wall
    clock read between two monotonic reads, again if they were far apart (preempted)."""
    for _ in range(4):
        m1 = time.monotonic()
        real = time.time()
        m2 = time.monotonic()
        if m2 - m1 < 50e-6:
            break
    return m2, (m1 + m2) / 2 - real


def send(sock: socket.socket, items: list[tuple[Any, Addr]], *, native: bool = True) -> int:
    """Send each (data, address); returns how many the kernel refused (full buffer, bad
    address): those are dropped, as a network would."""
    if native and _native is not None:
        _, dropped = _native.send(sock.fileno(), items)
        return int(dropped)
    dropped = 0
    for data, addr in items:
        try:
            sock.sendto(data, addr)
        except OSError:
            dropped += 1
    return dropped
