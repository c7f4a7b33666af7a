"""One viewer's send loop: number, encrypt and send a frame's RTP packets, in C when built.

This is where the fan-out spends its CPU: every packet of every frame, for every viewer. The C
loop (``_srtp_writer.c`` beside it, built by ``pip install`` with a compiler) and the Python
one below do the same work; the Python one is the fallback and the reference the tests hold the
C one to. Both encrypt with the viewer's own pylibsrtp session (its C context and pylibsrtp's
``srtp_protect``), so keys never leave aiortc's DTLS transport. That reaches into pylibsrtp
(``Session._srtp``, ``pylibsrtp._binding``; pinned with aiortc): ``tests/live/test_srtp_writer.py``
fails loudly if an upgrade moves them.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import struct
from typing import Any, Protocol

from pylibsrtp import Session as SrtpSession
from pylibsrtp._binding import ffi as srtp_ffi  # type: ignore[import-not-found]
from pylibsrtp._binding import lib as srtp_lib

from relay.media.estimator import SendLog, record_sent
from relay.rtc.rtp_rewrite import SEQ_TS_SSRC

try:
    from . import _srtp_writer as _native
except ImportError:  # built without a C compiler: the Python loop below
    _native = None  # type: ignore[assignment]

PROTECT_SIGNATURE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
"""libsrtp 2's ``srtp_protect``, which the C loop calls through a bare pointer (libsrtp 3
changed it): any other signature in pylibsrtp's binding and the C loop stays unused."""


def borrowable(name: str) -> bool:
    """libsrtp's function ``name`` has ``srtp_protect``'s libsrtp 2 signature, the one our C
    code (this writer, the RTP and RTCP readers) calls it through."""
    return bool(srtp_ffi.getctype(srtp_ffi.typeof(getattr(srtp_lib, name))) == PROTECT_SIGNATURE)


def borrowed(name: str, session: SrtpSession) -> tuple[int, int]:
    """(the address of libsrtp's ``name``, ``session``'s libsrtp context): what our C code
    needs to call it on that session's keys."""
    function = int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, name)))
    return function, int(srtp_ffi.cast("uintptr_t", session._srtp[0]))


NATIVE = _native is not None and borrowable("srtp_protect")
"""The C loop is built, importable and matches the libsrtp pylibsrtp carries."""

log = logging.getLogger(__name__)

UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # Linux >= 4.18: one sendmsg, many datagrams
_U16_NATIVE = struct.Struct("=H")
_U16_NETWORK = struct.Struct("!H")
GSO_REFUSALS = frozenset({errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT})
"""A GSO send's errors that mean "not on this path" (kernel, device, socket option); the
others (a full buffer, an unreachable network) are the send's own, as for one datagram."""
Address = tuple[str, int] | tuple[str, int, int, int]


class DatagramOut(Protocol):
    """What the Python loop sends on: a UDP socket, or an ICE-TCP stream
    (``relay.rtc.tcp_port.TcpStream``: a frame per datagram, no GSO)."""

    def sendto(self, data: bytes | memoryview, addr: Address, /) -> int: ...

    def sendmsg(
        self, buffers: list[memoryview], ancdata: Any, flags: int, addr: Address, /
    ) -> int: ...


class SrtpWriter(Protocol):
    gso_refused: bool

    def send(
        self,
        templates: tuple[bytes, ...],
        runs: tuple[tuple[int, int], ...],
        seq: int,
        ts: int,
        ssrc: int,
        gso: bool,
        twcc_offset: int = 0,
        twcc_seq: int = 0,
        /,
    ) -> int:
        """Number, encrypt and send a frame's packets: each run of two or more as one UDP GSO
        send (``gso``), the rest one datagram per call. With ``twcc_offset`` (the offset of the
        transport-wide sequence number extension's value in every template), packet i also
        gets transport-wide sequence number ``(twcc_seq + i) & 0xFFFF`` there. Returns the GSO
        sends made; a kernel that refuses GSO sets ``gso_refused`` (that frame still goes out,
        datagram by datagram); ``BlockingIOError`` and other socket errors propagate."""
        ...

    def record_into(self, log: SendLog, /) -> None:
        """Bind an estimator's ``SendLog`` for ``send_recorded``."""
        ...

    def send_recorded(
        self,
        templates: tuple[bytes, ...],
        runs: tuple[tuple[int, int], ...],
        seq: int,
        ts: int,
        ssrc: int,
        gso: bool,
        twcc_offset: int,
        now: float,
        size: int,
        /,
    ) -> int:
        """``send`` numbered from the bound log's next transport-wide number: every packet is
        recorded in its history (sent at ``now``) before the send, and ``size`` bytes go to
        its meter after it; what ``estimator.record``, ``send`` and ``estimator.add_sent`` did
        in three calls per frame (``relay.media.estimator.record_sent`` is the reference)."""
        ...


def new_srtp_writer(
    session: SrtpSession, sock: socket.socket, addr: Address, *, native: bool = True
) -> SrtpWriter:
    """The C writer when built and ``native``, else the Python one (also for an address the C
    one does not parse, e.g. a link-local IPv6 address with a zone: ``fe80::1%eth0``)."""
    if native and NATIVE:
        protect, ctx = borrowed("srtp_protect", session)
        try:
            return _native.SrtpWriter(sock, addr, protect, ctx, session)
        except ValueError:
            log.info("address %r: sending through the Python loop", addr[0])
    return PySrtpWriter(session, sock, addr)


PYLIBSRTP_LIMIT = 1500 - (16 + 128)
"""The longest RTP packet ``pylibsrtp.Session.protect`` takes (its buffer is 1500 bytes, less
room for the longest trailer)."""


def protect_rtp(session: SrtpSession, packet: bytes) -> bytes:
    """``session.protect(packet)``, also for a packet longer than pylibsrtp's buffer allows: a
    ULPFEC parity packet (relay/media/ulpfec.py) is ~35 bytes longer than the media packets it
    covers (1300-byte payloads: ~1365 bytes), and its retransmission raised ValueError inside
    aiortc's RTCP loop, which ended the viewer's DTLS transport."""
    if len(packet) <= PYLIBSRTP_LIMIT:
        return bytes(session.protect(packet))
    size = len(packet) + 16 + 128
    cdata = srtp_ffi.new("char[]", size)
    srtp_ffi.buffer(cdata)[: len(packet)] = packet
    length = srtp_ffi.new("int *", len(packet))
    status = srtp_lib.srtp_protect(session._srtp[0], cdata, length)
    if status:
        raise RuntimeError(f"srtp_protect failed: {status}")
    return bytes(srtp_ffi.buffer(cdata, length[0]))


@functools.lru_cache(maxsize=64)
def _gso_cmsg(segment: int) -> tuple[tuple[int, int, bytes], ...]:
    """The ``UDP_SEGMENT`` control message for a segment size (a handful of sizes recur)."""
    return ((socket.SOL_UDP, UDP_SEGMENT, _U16_NATIVE.pack(segment)),)


class PySrtpWriter:
    """The send loop in Python, in one C buffer of the viewer's SRTP session.

    pylibsrtp's ``protect`` allocates and copies the packet twice per call; this writes the
    template once, patches the header in place and hands the socket a view of the result. A run
    of equal-sized packets is written back to back for one UDP GSO send: the kernel splits it
    into datagrams, which costs about half of one ``sendto`` per packet.
    """

    SIZE = 65536
    LIMIT = SIZE - (16 + 128)  # room for the longest SRTP trailer: a GCM tag and an MKI

    def __init__(self, session: SrtpSession, sock: DatagramOut, addr: Address) -> None:
        self._session = session  # keeps the C context alive
        self._ctx = session._srtp[0]
        self._sock = sock
        self._addr = addr
        self._cdata = srtp_ffi.new("char[]", self.SIZE)
        self._buf = srtp_ffi.buffer(self._cdata)
        self._view = memoryview(self._buf)
        self._len = srtp_ffi.new("int *")
        self.gso_refused = False
        self._log: SendLog | None = None

    def record_into(self, log: SendLog, /) -> None:
        self._log = log

    def send_recorded(
        self,
        templates: tuple[bytes, ...],
        runs: tuple[tuple[int, int], ...],
        seq: int,
        ts: int,
        ssrc: int,
        gso: bool,
        twcc_offset: int,
        now: float,
        size: int,
        /,
    ) -> int:
        log = self._log
        if log is None:
            raise RuntimeError("send_recorded before record_into")
        if not twcc_offset:
            raise ValueError("send_recorded needs the transport-wide number's offset")
        first = record_sent(log, tuple(map(len, templates)), now)
        sends = self.send(templates, runs, seq, ts, ssrc, gso, twcc_offset, first)
        log.meter.add(now, size)
        return sends

    def send(
        self,
        templates: tuple[bytes, ...],
        runs: tuple[tuple[int, int], ...],
        seq: int,
        ts: int,
        ssrc: int,
        gso: bool,
        twcc_offset: int = 0,
        twcc_seq: int = 0,
        /,
    ) -> int:
        buf, cdata, length_p, ctx, view = self._buf, self._cdata, self._len, self._ctx, self._view
        sock, addr = self._sock, self._addr
        protect = srtp_lib.srtp_protect
        pack = SEQ_TS_SSRC.pack_into
        pack_u16 = _U16_NETWORK.pack_into
        limit = self.LIMIT
        sends = 0
        for start, end in runs:
            offset = n = 0  # the run's packets, encrypted back to back
            for template in templates[start:end]:
                n = len(template)
                if offset + n > limit:
                    raise ValueError("RTP packets too large for the SRTP buffer")
                buf[offset : offset + n] = template
                pack(buf, offset + 2, seq, ts, ssrc)
                seq = (seq + 1) & 0xFFFF
                if twcc_offset:
                    if twcc_offset + 2 > n:
                        raise ValueError("transport-wide sequence number beyond the packet")
                    pack_u16(buf, offset + twcc_offset, twcc_seq)
                    twcc_seq = (twcc_seq + 1) & 0xFFFF
                length_p[0] = n
                status = protect(ctx, cdata + offset, length_p)
                if status:
                    raise RuntimeError(f"srtp_protect failed: {status}")
                offset += length_p[0]
            tag = length_p[0] - n  # every packet gets the same tag
            if end - start > 1 and gso:
                try:
                    sock.sendmsg([view[:offset]], _gso_cmsg(len(templates[start]) + tag), 0, addr)
                    sends += 1
                    continue
                except OSError as exc:
                    if exc.errno not in GSO_REFUSALS:
                        raise  # BlockingIOError (this viewer is behind), or another failure
                    self.gso_refused, gso = True, False  # no UDP GSO on this path
            at = 0
            for template in templates[start:end]:
                size = len(template) + tag
                sock.sendto(view[at : at + size], addr)
                at += size
        return sends
