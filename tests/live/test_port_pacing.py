"""The shared UDP port's read pacing (``SharedUdpPort.max_reads``, ``webrtc.udp_max_reads``, and
``quiet_reads`` while the node is quiet) on real loopback sockets: past the rate, what arrives is
read in fewer, larger batches, nothing is lost, and no datagram waits much longer than one read
interval for its session; a session registering ends the quiet pacing at once."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from aioice import stun

from relay.rtc import shared_port
from relay.rtc.shared_port import READ_BURST, SharedUdpPort

PASSWORD = "p" * 22


class Sink:
    def __init__(self, port: SharedUdpPort) -> None:
        self.port = port
        self.count = 0
        self.waits: list[float] = []

    def datagram_received(self, data: bytes, addr: tuple[Any, ...], local: str) -> None:
        self.count += 1
        if self.port.arrival is not None:
            self.waits.append(time.monotonic() - self.port.arrival)


async def spread(
    max_reads: float,
    datagrams: int = 300,
    gap: float = 0.001,
    *,
    quiet: bool | None = None,
    register_at: int | None = None,
) -> tuple[Any, ...]:
    """``datagrams`` small datagrams from one bound peer, ``gap`` s apart (spread-out feedback):
    (received, reads, paced, elapsed, waits, reads paced after the ``register_at``-th datagram
    came, and whether a paused socket was waiting for its read then).
    ``quiet``: the node's answer to the port's quiet check (None: no check; quiet pacing at
    ``max_reads`` a second), from the first datagram on (the peer's binding registered it)."""
    if quiet is None:
        port = SharedUdpPort(max_reads=max_reads, quiet_reads=0)
    else:
        port = SharedUdpPort(max_reads=0, quiet_reads=max_reads)
    await port.open("127.0.0.1", 0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        sink = Sink(port)
        port.register("pace0001", PASSWORD, sink)
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = "pace0001:peer"
        check.add_message_integrity(PASSWORD.encode())
        peer.sendto(bytes(check), ("127.0.0.1", port.port))
        deadline = time.monotonic() + 10
        while sink.count < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        assert sink.count == 1, "the peer's Binding request did not bind it"
        if quiet is not None:
            port.quiet = lambda: quiet
            port._grace_until = 0.0  # (the registration's grace: over)
        sink.count, sink.waits = 0, []
        reads0 = port.reads
        after: int | None = None
        paused = False
        payload = bytes([0x8F, 205]) + bytes(90)  # an SRTCP feedback's size
        t0 = time.monotonic()
        for i in range(datagrams):
            if i == register_at:
                paused = bool(port._resumes)
                port.register("pace0002", PASSWORD, Sink(port))  # a viewer's offer, say
                after = port.paced
                assert not port._resumes, "a paused socket waits on after a session registered"
            peer.sendto(payload, ("127.0.0.1", port.port))
            await asyncio.sleep(max(0.0, t0 + (i + 1) * gap - time.monotonic()))
        while sink.count < datagrams and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - t0
        later = None if after is None else (port.paced - after, paused)
        return sink.count, port.reads - reads0, port.paced, elapsed, sink.waits, later
    finally:
        peer.close()
        port.close()


@pytest.mark.timeout(60)
async def test_reads_past_the_rate_are_put_off_and_nothing_is_lost() -> None:
    received, reads, paced, elapsed, waits, _ = await spread(max_reads=50)
    assert received == 300
    # the bucket's promise, whatever the machine's load (a starved loop batches by itself)
    assert reads <= READ_BURST + 50 * elapsed + 2
    assert paced > 0 or reads <= READ_BURST + 50 * elapsed
    # a paced datagram waits for its read at most 1 / max_reads (20 ms) plus the loop's own
    # lateness: bounded loosely, the point is that nothing is left behind for long
    assert max(waits) < 1.0


@pytest.mark.timeout(60)
async def test_without_pacing_every_readable_event_is_served() -> None:
    received, reads, paced, _, _, _ = await spread(max_reads=0)
    assert received == 300 and paced == 0
    assert reads > 0


@pytest.mark.timeout(60)
async def test_a_quiet_node_reads_at_the_quiet_rate() -> None:
    received, reads, paced, elapsed, waits, _ = await spread(max_reads=20, quiet=True)
    assert received == 300 and paced > 0
    assert reads <= READ_BURST + 20 * elapsed + 2
    assert max(waits) < 1.0


@pytest.mark.timeout(60)
async def test_a_node_that_is_not_quiet_is_not_paced() -> None:
    received, _, paced, _, _, _ = await spread(max_reads=20, quiet=False)
    assert received == 300 and paced == 0


@pytest.mark.timeout(60)
async def test_a_session_registering_ends_the_quiet_pacing_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Half way through, a session registers: a socket paused at that moment is read at once
    and no read after it is paced (its handshake and first frames), although the node still
    says it is quiet and is asked at every read."""
    monkeypatch.setattr(shared_port, "QUIET_CHECK", 0.0)
    received, _, paced, _, _, later = await spread(max_reads=20, quiet=True, register_at=150)
    assert received == 300 and paced > 0
    assert later is not None
    assert later[0] == 0, f"{later[0]} reads paced after the session registered"
