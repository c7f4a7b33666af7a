"""Batched datagram I/O for the node's shared UDP port: ``recv`` reads what a socket holds (up to
a limit), ``send`` sends a list. In C (``_udp_batch.c``: recvmmsg/sendmmsg, one syscall per 64
datagrams) when built, else these recvfrom/sendto loops, which are also the reference."""

from __future__ import annotations

import socket
from typing import Any

try:
    from . import _udp_batch as _native
except ImportError:  # built without a C compiler
    _native = None  # type: ignore[assignment,unused-ignore]

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
