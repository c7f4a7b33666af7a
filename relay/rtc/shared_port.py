"""The node's one UDP port: every answering session's ICE, DTLS and SRTP over one socket.

``relay.rtc.mux_table`` decides which session a datagram is for; this is its asyncio driver,
opened and closed by the app's lifespan. Sessions register an object with
``datagram_received(data, addr)`` (the adapter's stand-in for aioice's per-candidate socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Protocol

from aioice import stun

from relay.rtc.mux_table import Addr, MuxTable, is_stun

log = logging.getLogger(__name__)

# Every session's packets share this socket's queues (per-peer ports had ~208 KiB each, the
# kernel's default): a keyframe sent to many viewers at once must fit, or the direct sender sees
# BlockingIOError for all of them. Root may go past net.core.[rw]mem_max (the *BUFFORCE options).
RECEIVE_BUFFER = 16 * 1024 * 1024
SEND_BUFFER = 16 * 1024 * 1024
READ_BATCH = 128  # datagrams read per event-loop turn at most
RECEIVE_SIZE = 65536
SO_SNDBUFFORCE = 32  # Linux (the socket module has no names for these)
SO_RCVBUFFORCE = 33


class DatagramSink(Protocol):
    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None: ...


class SharedUdpPort:
    """The socket is read by our own reader, not asyncio's datagram transport: that one takes a
    single datagram per event-loop turn, which is fine for a socket per peer connection but
    would make every session's packets queue behind each other here. Each turn drains up to
    ``READ_BATCH`` datagrams; sends go straight to the socket (a full send buffer drops the
    datagram, as a network would)."""

    def __init__(self) -> None:
        self.table: MuxTable[DatagramSink] = MuxTable()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.errors = 0
        self.send_drops = 0
        self._queries: dict[bytes, tuple[Addr, asyncio.Future[Addr]]] = {}

    async def open(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, SEND_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def sockname(self) -> tuple[str, int]:
        assert self._sock is not None
        name = self._sock.getsockname()
        return (name[0], name[1])

    @property
    def port(self) -> int:
        return self.sockname[1]

    @property
    def socket(self) -> socket.socket:
        assert self._sock is not None
        return self._sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def unused_ufrag(self) -> str:
        return self.table.unused_ufrag()

    def register(self, ufrag: str, password: str, sink: DatagramSink) -> None:
        self.table.add(ufrag, password, sink)

    def unregister(self, ufrag: str) -> None:
        self.table.remove(ufrag)

    def sendto(self, data: bytes, addr: Addr) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.send_drops += 1
        except OSError as exc:  # an unreachable or malformed address: that peer's problem
            log.debug("shared UDP port: sendto %s: %r", addr, exc)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("shared UDP port: recvfrom: %r", exc)
                return
            self.datagram_received(data, addr)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        addr = (addr[0], addr[1])
        if self._queries and is_stun(data) and self._answered(data, addr):
            return
        sink = self.table.route(data, addr)
        if sink is None:
            return
        try:
            sink.datagram_received(data, addr)
        except Exception:  # one session's failure never reaches the others
            self.errors += 1
            if self.errors == 1:
                log.exception("a session failed on a datagram from %s", addr)

    async def mapped_address(self, server: Addr, timeout: float = 3.0) -> Addr | None:
        """This socket's address as a STUN server sees it (None: no answer in ``timeout``)."""
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        future: asyncio.Future[Addr] = asyncio.get_running_loop().create_future()
        self._queries[request.transaction_id] = (server, future)
        try:
            for _ in range(3):
                self.sendto(bytes(request), server)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), timeout / 3)
            return None
        finally:
            del self._queries[request.transaction_id]

    def _answered(self, data: bytes, addr: Addr) -> bool:
        try:
            message = stun.parse_message(data)
        except Exception:
            return False
        query = self._queries.get(message.transaction_id)
        if query is None or query[0] != addr or message.message_class != stun.Class.RESPONSE:
            return False
        mapped = message.attributes.get("XOR-MAPPED-ADDRESS")
        if mapped is not None and not query[1].done():
            query[1].set_result((mapped[0], mapped[1]))
        return True


def _set_buffer(sock: socket.socket, option: int, forced: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except OSError:  # not privileged: capped at net.core.[rw]mem_max
        sock.setsockopt(socket.SOL_SOCKET, option, size)
