"""The node's one UDP port: every answering session's ICE, DTLS and SRTP over one socket.

``relay.rtc.mux_table`` decides which session a datagram is for; this is its asyncio driver,
opened and closed by the app's lifespan. Sessions register an object with
``datagram_received(data, addr)`` (the adapter's stand-in for aioice's per-candidate socket).

Each time the socket is readable, the reader takes everything waiting (up to ``READ_LIMIT``,
recvmmsg in ``relay.rtc.udp_batch``) and hands each datagram to its session at once: a STUN
check is answered there and then, media goes to the session's own bounded queue. An earlier
reader took at most 128 datagrams per event-loop turn: under load (100 viewers joining while
the loop was busy) the kernel queue behind it grew to ~10 MiB, a FIFO shared by every session,
so an anchor's consent checks waited seconds; the anchor's ICE agent (aioice: one try, 0.5 s,
six failures) gave up on the node and stopped sending, and the node ended it on "media
timeout" (issue 16). Per-peer ports never had this: the kernel kept a queue per session.
Sends are gathered per event-loop turn and leave in one sendmmsg.

Reads may be paced (``max_reads``, off by default): a readable event costs a wake-up of the loop
whatever it brings, and an audience of Chromium viewers sends its transport-cc feedback spread
over time (~20 small datagrams a second each, at its own phase): 100 such viewers woke the
reader ~750-1,500 times a second for one or two datagrams each, 8-29 us per datagram against
2-4 us when they came in bursts (``bench.port_pacing``, loaded machine). With ``max_reads``
set, past that many reads a second a socket is left unread until a read is due again (at most
1 / ``max_reads`` s later: what came meanwhile is one recvmmsg); below it, as at an idle node
or a small room, every readable event is served at once.

While the node is quiet (``quiet``, asked at most once a second: nobody takes media as it
arrives, e.g. one ingest and no viewer) reads are paced at ``quiet_reads`` a second: an ffmpeg
anchor's audio and video wake the loop ~80 times a second, and each wake-up costs the node
more than most of what it brings (``bench.idle``, loaded: 20 reads a second -30 %, 10 -45 %;
quiet, paired: 10 a second 0.0110 core, 5 a second 0.0085).
The wait it adds (up to 1 / ``quiet_reads`` s) is seen by nobody; a session registering (a
viewer's or an anchor's offer) ends it at once and for ``QUIET_GRACE`` s, so handshakes and
first frames are never paced. Quiet reads fall due on multiples of 1 / ``quiet_reads`` s of the
loop's clock, where the node's once-a-second timers fall too (``relay.ops.timer_grid``): those
then cost no wake-up of their own.

While a datagram is handed on, ``arrival`` holds when the kernel received it (SO_TIMESTAMPNS,
``time.monotonic``'s clock): transport-cc feedback reports that, not when this reader got round
to it.

Sockets: ``open`` once per local address offered, all on the same port number (a socket bound
to "0.0.0.0" or "::" serves every address of its family; IPv6 ones are IPV6_V6ONLY). A socket
bound to the very address a peer sent to answers from it: a wildcard socket answers from
whichever address the route picks, which a peer (or a TURN server's permission) may not know.
One mux table for all; each datagram is handed on with the socket it came in on, and a session
sends on the socket of its local candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from aioice import stun

from relay.ops.timer_grid import first_tick
from relay.rtc import udp_batch
from relay.rtc.mux_table import Addr, MuxTable, is_stun

log = logging.getLogger(__name__)
Socket = socket.socket  # (the class's ``socket`` property hides the module in annotations)
Family = socket.AddressFamily

# Every session's packets share this socket's queues (per-peer ports had ~208 KiB each, the
# kernel's default): a keyframe sent to many viewers at once must fit, or the direct sender sees
# BlockingIOError for all of them. Root may go past net.core.[rw]mem_max (the *BUFFORCE options).
RECEIVE_BUFFER = 16 * 1024 * 1024
SEND_BUFFER = 16 * 1024 * 1024
READ_LIMIT = 4096  # datagrams taken per readable event at most (a flood cannot hold the loop)
MAX_READS = 0.0
"""Readable events served per second and socket, sustained (0: every one, the default: the
saving could not be shown on the loaded 2-core test machine, see BENCHMARKS.md
``bench.port_pacing``; 500 caps the wait it adds to an anchor's packet at 2 ms)."""
READ_BURST = 20.0  # ... and in a burst before the pacing starts
QUIET_READS = 5.0
"""Reads a second while the node is quiet (0: read every readable event then too). 5: an anchor's
packets wait up to 0.2 s, well within a sender's retransmission history (aiortc keeps 128
packets, ~0.85 s of 720p) should one be lost while nobody watches."""
QUIET_CHECK = 1.0  # s between looks at ``quiet``
QUIET_GRACE = 5.0  # s unpaced after a session registers: its handshake and first frames
SO_SNDBUFFORCE = 32  # Linux (the socket module has no names for these)
SO_RCVBUFFORCE = 33


class DatagramSink(Protocol):
    def datagram_received(self, data: bytes, addr: tuple[Any, ...], local: str) -> None:
        """``local``: the address the socket it came in on is bound to."""


class SharedUdpPort:
    """The socket is read by our own reader, not asyncio's datagram transport: that one takes a
    single datagram per event-loop turn, fine for a socket per peer connection, but here every
    session's packets would queue behind each other. ``native`` False: the Python
    recvfrom/sendto loops instead of recvmmsg/sendmmsg (tests and benchmarks compare them)."""

    def __init__(
        self, *, native: bool = True, max_reads: float = MAX_READS, quiet_reads: float = QUIET_READS
    ) -> None:
        self.table: MuxTable[DatagramSink] = MuxTable()
        self.max_reads = max_reads
        self.quiet_reads = quiet_reads
        # set by the app: True while nobody takes media as it arrives (None: never quiet)
        self.quiet: Callable[[], bool] | None = None
        self._quiet_now = False
        self._quiet_due = 0.0  # when to ask ``quiet`` again
        self._grace_until = 0.0  # no quiet pacing before (a session registered)
        self._resumes: dict[str, asyncio.TimerHandle] = {}  # paused sockets' next reads
        self._read_tokens: dict[str, tuple[float, float]] = {}  # per socket: (tokens, when)
        self.paced = 0  # reads put off (a socket left unread until its next read is due)
        self._socks: dict[str, socket.socket] = {}  # by the address bound
        self._loop: asyncio.AbstractEventLoop | None = None
        self._native = native
        self._pending: dict[str, list[tuple[bytes, Addr]]] = {}
        self.errors = 0
        self.send_drops = 0
        self.received = 0
        self.reads = 0  # readable events served (received / reads: the batch size)
        self.arrival: float | None = None  # the datagram being handed on: its kernel stamp
        self._queries: dict[bytes, tuple[Addr, asyncio.Future[Addr]]] = {}
        # C lanes of the receive path (relay/rtc/_rtp_reader.c): SRTP from a session's
        # addresses offered to its reader's ``take`` in the read call itself (set_lane)
        self.lanes: dict[Addr, udp_batch.Take] = {}
        self._lane_takes: dict[str, udp_batch.Take] = {}  # by ufrag
        self.laned = 0  # datagrams a lane took

    async def open(self, host: str, port: int) -> None:
        """Bind ``host`` (an IPv4 or IPv6 address, or a family's wildcard) on ``port``; ``port``
        0 takes the number of the first socket opened."""
        family = family_of(host)
        if host in self._socks:
            raise ValueError(f"the shared port has a socket on {host} already")
        if port == 0 and self._socks:
            port = self.port
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, SEND_BUFFER)
            udp_batch.enable_stamps(sock)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._socks[host] = sock
        self._loop.add_reader(sock.fileno(), self._readable, sock, host)

    @property
    def sockname(self) -> tuple[str, int]:
        name = self.socket.getsockname()
        return (name[0], name[1])

    @property
    def port(self) -> int:
        return self.sockname[1]

    @property
    def socket(self) -> socket.socket:
        """The first socket opened (IPv4 unless only IPv6 was)."""
        assert self._socks
        return next(iter(self._socks.values()))

    @property
    def families(self) -> list[Family]:
        return sorted({family_of(h) for h in self._socks})

    def local_for(self, host: str) -> str | None:
        """The bound address whose socket serves local address ``host`` (None: none does)."""
        if host in self._socks:
            return host
        wildcard = "::" if family_of(host) == socket.AF_INET6 else "0.0.0.0"
        return wildcard if wildcard in self._socks else None

    def socket_for(self, local: str) -> Socket | None:
        return self._socks.get(local)

    def close(self) -> None:
        socks: dict[str, Socket]
        socks, self._socks = self._socks, {}
        self._pending.clear()
        for handle in self._resumes.values():
            handle.cancel()
        self._resumes.clear()
        for sock in socks.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def unused_ufrag(self) -> str:
        return self.table.unused_ufrag()

    def register(self, ufrag: str, password: str, sink: DatagramSink) -> None:
        self.table.add(ufrag, password, sink)
        self._end_quiet()

    def _end_quiet(self) -> None:
        """A session is coming: no quiet pacing for ``QUIET_GRACE`` s, paused sockets read now."""
        self._grace_until = time.monotonic() + QUIET_GRACE
        self._quiet_now, self._quiet_due = False, 0.0
        self._read_tokens.clear()
        resumes, self._resumes = self._resumes, {}
        for local, handle in resumes.items():
            handle.cancel()
            sock = self._socks.get(local)
            if sock is not None:
                self._resume(sock, local)

    def unregister(self, ufrag: str) -> None:
        self.set_lane(ufrag, None)
        self.table.remove(ufrag)

    def set_lane(self, ufrag: str, take: udp_batch.Take | None) -> None:
        """Offer the session's SRTP (from the addresses it is known by now) to ``take`` before
        anything else sees it (None: no more)."""
        old = self._lane_takes.pop(ufrag, None)
        if old is not None:
            self.lanes = {a: t for a, t in self.lanes.items() if t is not old}
        if take is not None:
            self._lane_takes[ufrag] = take
            self.lanes.update(dict.fromkeys(self.table.addresses(ufrag), take))

    def sendto(self, data: bytes, addr: Addr, local: str | None = None) -> None:
        """Queued until the end of this event-loop turn, then sent with the turn's others, on
        the socket bound to ``local`` (None: the first of the destination's family)."""
        if local is None:
            family = family_of(addr[0])
            local = next((h for h in self._socks if family_of(h) == family), None)
        if local is None or local not in self._socks or self._loop is None:
            return  # no socket for it: unreachable from here
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.setdefault(local, []).append((data, (addr[0], addr[1])))

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for local, items in pending.items():
            sock = self._socks.get(local)
            if sock is not None:
                self.send_drops += udp_batch.send(sock, items, native=self._native)

    def _readable(self, sock: Socket, local: str) -> None:
        if sock.fileno() < 0:
            return
        taken = 0
        try:
            if self.lanes:
                batch, taken = udp_batch.recv_laned(
                    sock, READ_LIMIT, self.lanes, native=self._native
                )
            else:
                batch = udp_batch.recv_stamped(sock, READ_LIMIT, native=self._native)
        except OSError as exc:
            log.debug("shared UDP port: recv: %r", exc)
            return
        self.reads += 1
        self.received += len(batch) + taken
        self.laned += taken
        try:
            for data, addr, self.arrival in batch:
                self.datagram_received(data, addr, local)
        finally:
            self.arrival = None
            rate = self._read_rate()
            if rate > 0:
                self._pace(sock, local, rate)

    def _read_rate(self) -> float:
        """Reads a second the socket is paced to now (0: none): ``max_reads``, or while the
        node is quiet ``quiet_reads`` if lower."""
        quiet, rate = self.quiet, self.max_reads
        if quiet is None or self.quiet_reads <= 0:
            return rate
        now = time.monotonic()
        if now >= self._quiet_due:
            self._quiet_due = now + QUIET_CHECK
            try:
                self._quiet_now = now >= self._grace_until and quiet()
            except Exception:
                log.exception("shared UDP port: the quiet check failed")
                self._quiet_now = False
        if not self._quiet_now:
            return rate
        return min(rate, self.quiet_reads) if rate > 0 else self.quiet_reads

    def _pace(self, sock: Socket, local: str, rate: float) -> None:
        """A read was served: when reads come faster than ``rate`` a second (past a burst of
        ``READ_BURST``), the socket is not watched until the next one is due."""
        now = time.monotonic()
        tokens, at = self._read_tokens.get(local, (READ_BURST, now))
        tokens = min(READ_BURST, tokens + (now - at) * rate) - 1.0
        self._read_tokens[local] = (tokens, now)
        if tokens >= 0.0 or self._loop is None:
            return
        self.paced += 1
        self._loop.remove_reader(sock.fileno())
        at = self._loop.time() - tokens / rate
        if self._quiet_now:  # on the grid of the node's other timers: one wake-up with them
            at = first_tick(at, 1.0 / rate)
        self._resumes[local] = self._loop.call_at(at, self._resume, sock, local)

    def _resume(self, sock: Socket, local: str) -> None:
        """Watch the socket again (the loop's poll in this same turn finds what waits)."""
        self._resumes.pop(local, None)
        if self._socks.get(local) is sock and sock.fileno() >= 0 and self._loop is not None:
            self._loop.add_reader(sock.fileno(), self._readable, sock, local)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...], local: str = "") -> None:
        addr = (addr[0], addr[1])
        if self._queries and is_stun(data) and self._answered(data, addr):
            return
        sink = self.table.route(data, addr)
        if sink is None:
            return
        try:
            sink.datagram_received(data, addr, local)
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


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _set_buffer(sock: socket.socket, option: int, forced: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except OSError:  # not privileged: capped at net.core.[rw]mem_max
        sock.setsockopt(socket.SOL_SOCKET, option, size)
