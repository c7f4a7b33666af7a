"""The shared UDP port's read pacing (``SharedUdpPort.max_reads``, ``webrtc.udp_max_reads``) on
real loopback sockets: past the rate, what arrives is read in fewer, larger batches, nothing is
lost, and no datagram waits much longer than one read interval for its session."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from aioice import stun

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


async def spread(max_reads: float, datagrams: int = 300, gap: float = 0.001) -> tuple[Any, ...]:
    """``datagrams`` small datagrams from one bound peer, ``gap`` s apart (spread-out feedback):
    (received, reads, paced, elapsed, waits)."""
    port = SharedUdpPort(max_reads=max_reads)
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
        sink.count, sink.waits = 0, []
        reads0 = port.reads
        payload = bytes([0x8F, 205]) + bytes(90)  # an SRTCP feedback's size
        t0 = time.monotonic()
        for i in range(datagrams):
            peer.sendto(payload, ("127.0.0.1", port.port))
            await asyncio.sleep(max(0.0, t0 + (i + 1) * gap - time.monotonic()))
        while sink.count < datagrams and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - t0
        return sink.count, port.reads - reads0, port.paced, elapsed, sink.waits
    finally:
        peer.close()
        port.close()


@pytest.mark.timeout(60)
async def test_reads_past_the_rate_are_put_off_and_nothing_is_lost() -> None:
    received, reads, paced, elapsed, waits = await spread(max_reads=50)
    assert received == 300
    # the bucket's promise, whatever the machine's load (a starved loop batches by itself)
    assert reads <= READ_BURST + 50 * elapsed + 2
    assert paced > 0 or reads <= READ_BURST + 50 * elapsed
    # a paced datagram waits for its read at most 1 / max_reads (20 ms) plus the loop's own
    # lateness: bounded loosely, the point is that nothing is left behind for long
    assert max(waits) < 1.0


@pytest.mark.timeout(60)
async def test_without_pacing_every_readable_event_is_served() -> None:
    received, reads, paced, _, _ = await spread(max_reads=0)
    assert received == 300 and paced == 0
    assert reads > 0
