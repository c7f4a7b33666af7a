"""The adapter's hooks at work between real peers on loopback: the ingest tap and PLI hook, and
DirectSender's frames and NACK answers. The attribute guards are in tests/unit."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamTrack

from gateway.synthetic import StampedVideoTrack
from relay.media.frames import EncodedFrame
from relay.media.retransmit import FOLLOW_UP_AFTER
from relay.media.viewer_queue import ViewerQueue
from relay.rtc.adapter import (
    install_ingest_tap,
    install_prepacked_sender,
)
from relay.rtc.direct_sender import DirectSender, new_template_cache
from relay.rtc.peer import close_quietly, codec_preferences, rtc_configuration
from relay.rtc.tracks import HubTrack


async def test_tap_sees_packets_and_pli_reaches_hook() -> None:
    """Two real peers: the tap gets depayloaded packets with marker bits, a PLI from the
    receiving side reaches a pre-packed sender's hook."""
    a, b = RTCPeerConnection(rtc_configuration(())), RTCPeerConnection(rtc_configuration(()))
    markers: list[int] = []
    try:
        a.addTransceiver(StampedVideoTrack(320, 180, 30), direction="sendonly")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        receiver = b.getTransceivers()[0].receiver
        install_ingest_tap(receiver, lambda p, c: markers.append(p.marker) if p._data else None)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        for _ in range(100):
            if sum(markers) >= 5:
                break
            await asyncio.sleep(0.05)
        assert sum(markers) >= 5
        hits: list[int] = []
        install_prepacked_sender(a.getSenders()[0], lambda: hits.append(1))
        ssrc = a.getSenders()[0]._ssrc
        await receiver._send_rtcp_pli(ssrc)
        for _ in range(40):
            if hits:
                break
            await asyncio.sleep(0.05)
        assert hits
    finally:
        await close_quietly(a)
        await close_quietly(b)


SO_NO_CHECK = 11  # Linux: a UDP socket without checksums, on which the kernel refuses GSO


@dataclass
class DirectPair:
    """Two real peers on loopback: ``a`` sends VP8 through a DirectSender fed by ``queue``,
    ``b`` receives; its decoded frames land in ``got``."""

    a: RTCPeerConnection
    b: RTCPeerConnection
    queue: ViewerQueue
    transceiver: RTCRtpTransceiver
    direct: DirectSender
    got: asyncio.Queue[object]


@pytest.fixture
async def direct_pair() -> AsyncIterator[Callable[..., Awaitable[DirectPair]]]:
    """Connects a ``DirectPair`` (``DirectSender`` keyword arguments passed on) once its
    sender is ready and bound to the queue; both peers are closed after the test."""
    pcs: list[RTCPeerConnection] = []

    async def connect(**sender_options: Any) -> DirectPair:
        a, b = RTCPeerConnection(rtc_configuration(())), RTCPeerConnection(rtc_configuration(()))
        pcs.extend((a, b))
        queue = ViewerQueue("video", 30, direct=True)
        ready = asyncio.Event()
        transceiver = a.addTransceiver(HubTrack("video", queue), direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences("video", "VP8", receiving=False))
        direct = DirectSender(
            transceiver.sender,
            new_template_cache(),
            on_keyframe_request=lambda: None,
            on_ready=ready.set,
            **sender_options,
        )
        got: asyncio.Queue[object] = asyncio.Queue()
        b.on("track", lambda t: asyncio.ensure_future(_drain(t, got)))
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(ready.wait(), 10)
        assert queue.bind(direct.send_frame)
        return DirectPair(a, b, queue, transceiver, direct, got)

    try:
        yield connect
    finally:
        for pc in pcs:
            await close_quietly(pc)


@pytest.mark.parametrize("native", [True, False], ids=["c-loop", "python-loop"])
async def test_direct_sender_delivers_decodable_frames_and_answers_nacks(
    native: bool,
    monkeypatch: pytest.MonkeyPatch,
    direct_pair: Callable[..., Awaitable[DirectPair]],
) -> None:
    """A real receiver decodes VP8 frames sent by a DirectSender (multi-packet frames as UDP
    GSO runs) with either send loop; sender reports carry its counters and a NACKed packet goes
    out again over RTX, twice to a receiver not seen repeating its NACKs; a kernel that refuses
    GSO gets the frames datagram by datagram."""
    pair = await direct_pair(native=native)
    queue, transceiver, direct, got = pair.queue, pair.transceiver, pair.direct, pair.got
    writer = direct._route()
    assert writer is not None
    assert (type(writer).__module__ == "relay.rtc._srtp_writer") is native
    encoder = Vp8Encoder()
    source = StampedVideoTrack(640, 360, 30)
    for i in range(30):
        vframe = await source.recv()
        payloads, ts = encoder.encode(vframe, force_keyframe=i == 0)
        frame = EncodedFrame("video", "VP8", ts, tuple(payloads), b"", i == 0, 0.0)
        assert queue.offer(frame)
    decoded = await asyncio.wait_for(got.get(), 10)
    assert getattr(decoded, "width", None) == 640
    assert direct.gso and direct.gso_sends >= 1  # multi-packet frames went out as GSO runs
    assert direct.rewriter is not None and direct.rewriter.packets >= 30
    stats = await transceiver.sender.getStats()
    outbound = [s for s in stats.values() if s.type == "outbound-rtp"]
    assert outbound and outbound[0].packetsSent == direct.rewriter.packets
    await transceiver.sender._retransmit((direct.rewriter.sequence - 1) & 0xFFFF)
    assert direct.rewriter.retransmissions == 1
    # this receiver was never seen asking again on its own: a second copy follows
    assert not direct.budget.asks_again
    await asyncio.sleep(FOLLOW_UP_AFTER + 0.2)
    assert direct.budget.follow_ups == 1 and direct.rewriter.retransmissions == 2

    # no descriptor left to duplicate the socket with: this viewer loses the frame, and the
    # hub's loop (the other viewers) goes on
    def no_fd(fd: int) -> int:
        raise OSError(errno.EMFILE, "too many open files")

    direct._pair = None
    monkeypatch.setattr("relay.rtc.direct_sender.os.dup", no_fd)
    payloads, ts = encoder.encode(await source.recv())
    assert queue.offer(EncodedFrame("video", "VP8", ts, tuple(payloads), b"", False, 0.0))
    assert direct.errors == 1
    monkeypatch.undo()
    writer = direct._route()
    assert writer is not None and direct._sock is not None
    # a full send buffer: that frame is an overflow and the viewer waits for a keyframe
    direct._writer = _FullWriter()
    payloads, ts = encoder.encode(await source.recv())
    assert not queue.offer(EncodedFrame("video", "VP8", ts, tuple(payloads), b"", False, 0.0))
    assert direct.congested == 1 and queue.overflows == 1 and queue.waiting_keyframe
    direct._writer = writer
    sent = direct.rewriter.packets
    payloads, ts = encoder.encode(await source.recv())
    assert not queue.offer(EncodedFrame("video", "VP8", ts, tuple(payloads), b"", False, 0.0))
    assert direct.rewriter.packets == sent  # dropped: not a keyframe
    payloads, ts = encoder.encode(await source.recv(), force_keyframe=True)
    assert queue.offer(EncodedFrame("video", "VP8", ts, tuple(payloads), b"", True, 0.0))
    assert direct.rewriter.packets > sent
    # a kernel without UDP GSO: the run goes out datagram by datagram, and so does the rest
    direct._sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    while not got.empty():
        got.get_nowait()
    grainy = StampedVideoTrack(640, 360, 30, grain=30)  # frames of several packets
    for i in range(5):
        payloads, ts = encoder.encode(await grainy.recv(), force_keyframe=i == 0)
        assert len(payloads) > 1 or i > 0
        assert queue.offer(EncodedFrame("video", "VP8", ts, tuple(payloads), b"", i == 0, 0.0))
    assert not direct.gso and direct.errors == 1  # the EMFILE frame only
    decoded = await asyncio.wait_for(got.get(), 10)
    assert getattr(decoded, "width", None) == 640


class _FullWriter:
    """A send loop whose socket's send buffer is full (loopback never fills one: the kernel
    hands each datagram to the receiver at once)."""

    gso_refused = False

    def send(self, *_: object) -> int:
        raise BlockingIOError


async def _drain(track: MediaStreamTrack, out: asyncio.Queue[object]) -> None:
    with contextlib.suppress(Exception):
        while True:
            await out.put(await track.recv())


async def test_own_sender_reports_replace_aiortcs_rtcp_task(
    direct_pair: Callable[..., Awaitable[DirectPair]],
) -> None:
    """A DirectSender with ``own_reports``: aiortc's RTCP task sends nothing, the reports the
    caller sends reach the receiver (its stats show the sender's counters), the receiver's
    reports answer them with the round trip, and the sender still stops at once."""
    pair = await direct_pair(own_reports=True)
    b, queue, transceiver, direct = pair.b, pair.queue, pair.transceiver, pair.direct
    received: list[str] = []
    receiver = b.getTransceivers()[0].receiver
    original = receiver._handle_rtcp_packet

    async def seen(packet: object) -> None:
        received.append(type(packet).__name__)
        await original(packet)

    receiver._handle_rtcp_packet = seen
    encoder = Vp8Encoder()
    source = StampedVideoTrack(320, 180, 30)
    await asyncio.sleep(2.0)  # aiortc's task would have sent one or two by now
    assert "RtcpSrPacket" not in received
    for i in range(60):
        vframe = await source.recv()
        payloads, ts = encoder.encode(vframe, force_keyframe=i == 0)
        queue.offer(EncodedFrame("video", "VP8", ts, tuple(payloads), b"", i == 0, i / 30))
        if i % 15 == 14:
            assert direct.send_reports(direct.sender_report())
        await asyncio.sleep(1 / 30)
    for _ in range(60):  # the receiver's reports come every 0.5-1.5 s
        if direct.round_trip_time() is not None:
            break
        await asyncio.sleep(0.05)
    assert received.count("RtcpSrPacket") >= 3
    assert direct.round_trip_time() is not None
    stats = await b.getStats()
    remote = [s for s in stats.values() if s.type == "remote-outbound-rtp"]
    assert remote and remote[0].packetsSent > 0
    await asyncio.wait_for(transceiver.sender.stop(), 2)  # no task left to wait for
