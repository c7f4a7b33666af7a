"""The node's one ICE-TCP port (RFC 6544 passive candidates, RFC 4571 framing), beside its UDP port.

For viewers whose networks block UDP. A connection is nobody's until its first frame, a STUN
Binding request, names a session by its USERNAME's local ufrag and passes that session's
MESSAGE-INTEGRITY (``relay.rtc.mux_table``); from then on every frame on it, STUN, DTLS or SRTP,
is that session's, and the session answers on the same stream. A connection that sends anything
else first, an unknown ufrag, a frame longer than a Binding request can be, or no complete frame
within ``handshake_timeout`` is closed: it is answered nothing and keeps nothing but its socket
until then. At most ``max_pending_per_address`` of those per client address exist at once (one
more is closed at accept), and at most ``max_pending`` in all: past it the oldest is dropped
for the newcomer, so a flood from many addresses delays a real viewer's handshake by a retry at
worst instead of locking ICE-TCP out. Frames shorter than any STUN, DTLS, RTP or RTCP packet
(``MIN_FRAME``) close the connection: framing overhead would otherwise cost us more than the
sender.
Sessions register (through ``relay.rtc.adapter``) an object whose ``stream_opened(stream)`` gives
the sink for that stream's frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any, Protocol, cast

from relay.media.framing import FrameDecoder, FramingError, encode_frame
from relay.rtc.mux_table import Addr, MuxTable, is_stun

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 3.0  # s from accept to an authenticated first frame (browsers: at once)
MAX_PENDING = 256  # connections not yet authenticated, at once
MAX_PENDING_PER_ADDRESS = 8
MIN_FRAME = 8  # the smallest RTCP packet; nothing on an ICE-TCP stream is shorter
FIRST_FRAME = 1500  # bytes a first frame (a Binding request) may announce
WRITE_LIMIT = 1 << 20  # bytes queued for one connection; beyond it frames are dropped
BACKLOG = 128


class StreamSink(Protocol):
    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class StreamSession(Protocol):
    def stream_opened(self, stream: TcpStream) -> StreamSink | None:
        """The sink for an authenticated stream's frames (None: refused, e.g. too many)."""
        ...


class TcpStream(asyncio.Protocol):
    """One accepted connection. Sends are whole frames or nothing: a frame that would take the
    connection's queue past ``WRITE_LIMIT`` is dropped (as a full UDP buffer drops a
    datagram), so a reader that stops reading costs at most that much memory."""

    def __init__(self, port: SharedTcpPort) -> None:
        self._port = port
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(FIRST_FRAME)
        self._sink: StreamSink | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.peer: Addr = ("", 0)
        self.drops = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's TCP transport is no asyncio.Transport subclass, but has its methods)
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):  # media: no Nagle delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        port = self._port
        port.streams.add(self)
        host = self.peer[0]
        if port.pending_by_address.get(host, 0) >= port.max_pending_per_address:
            port.refused += 1
            self.close()
            return
        if port.pending >= port.max_pending:  # the oldest waiting one makes room
            oldest = next(iter(port.waiting))
            port.evicted += 1
            oldest._settle()
            oldest.close()
        port.pending += 1
        port.waiting[self] = None
        port.pending_by_address[host] = port.pending_by_address.get(host, 0) + 1
        self._timer = asyncio.get_running_loop().call_later(port.handshake_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except FramingError:
            self._port.garbage += 1
            self.close()
            return
        for frame in frames:
            if len(frame) < MIN_FRAME:
                self._port.garbage += 1
                self.close()
                return
            sink = self._sink
            if sink is None:
                sink = self._authenticate(frame)
                if sink is None:
                    self._port.garbage += 1
                    self.close()
                    return
            try:
                sink.datagram_received(frame, self.peer)
            except Exception:  # one session's failure never reaches the port
                self._port.errors += 1
                if self._port.errors == 1:
                    log.exception("a session failed on a frame from %s", self.peer)
            if self.closed:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._settle()
        self._port.streams.discard(self)
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.connection_lost(exc)

    # what a session sends with
    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def write_frame(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue one framed datagram; False when dropped (closed, or the queue is full)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() + len(data) > self._port.write_limit:
            self.drops += 1
            self._port.send_drops += 1
            return False
        transport.write(encode_frame(data))
        return True

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> int:
        """A socket's ``sendto`` for the viewers' send loop (``srtp_writer``): a full queue
        raises BlockingIOError, as a full UDP send buffer would."""
        del addr
        if not self.write_frame(data):
            raise BlockingIOError(errno.EAGAIN, "ICE-TCP stream queue full or closed")
        return len(data)

    def sendmsg(self, *_: Any) -> int:
        raise OSError(errno.EOPNOTSUPP, "no UDP GSO on an ICE-TCP stream")

    def close(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.close()

    # internals
    def _authenticate(self, frame: bytes) -> StreamSink | None:
        if not is_stun(frame):
            return None
        session = self._port.table.route(frame, self.peer)
        if session is None:
            return None
        sink = session.stream_opened(self)
        if sink is None:
            return None
        self._sink = sink
        self._decoder.max_frame = 0xFFFF
        self._settle()
        self._port.attached += 1
        return sink

    def _settle(self) -> None:
        """Leave the pending state (authenticated, or gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._unpend()

    def _unpend(self) -> None:
        port = self._port
        port.pending -= 1
        port.waiting.pop(self, None)
        host = self.peer[0]
        left = port.pending_by_address.get(host, 1) - 1
        if left > 0:
            port.pending_by_address[host] = left
        else:
            port.pending_by_address.pop(host, None)

    def _expire(self) -> None:
        self._timer = None
        self._unpend()
        self._port.timeouts += 1
        transport = self._transport
        if transport is not None:
            transport.abort()


class SharedTcpPort:
    """The listener and its sessions, opened and closed by the app's lifespan."""

    def __init__(
        self,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_pending: int = MAX_PENDING,
        max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
        write_limit: int = WRITE_LIMIT,
    ) -> None:
        self.table: MuxTable[StreamSession] = MuxTable()
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.write_limit = write_limit
        self.streams: set[TcpStream] = set()
        self.pending = 0
        self.waiting: dict[TcpStream, None] = {}  # pending connections, oldest first
        self.pending_by_address: dict[str, int] = {}
        self.evicted = 0  # pending connections dropped for newer ones (max_pending reached)
        self.attached = 0  # connections ever handed to a session
        self.refused = 0  # closed at accept: too many pending from its address
        self.garbage = 0  # closed for what they sent first
        self.timeouts = 0  # closed for sending no whole first frame in time
        self.errors = 0
        self.send_drops = 0
        self._server: asyncio.Server | None = None

    async def open(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = await asyncio.get_running_loop().create_server(
            lambda: TcpStream(self), host, port, family=family, backlog=BACKLOG, reuse_address=True
        )

    @property
    def sockname(self) -> tuple[str, int]:
        assert self._server is not None and self._server.sockets
        name = self._server.sockets[0].getsockname()
        return (name[0], name[1])

    @property
    def port(self) -> int:
        return self.sockname[1]

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for stream in list(self.streams):
            with contextlib.suppress(Exception):
                stream.close()

    def register(self, ufrag: str, password: str, session: StreamSession) -> None:
        self.table.add(ufrag, password, session)

    def unregister(self, ufrag: str) -> None:
        self.table.remove(ufrag)
