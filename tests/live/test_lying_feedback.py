"""Issue 17's bad input: a viewer whose feedback lies (absurd REMB, receiver reports that claim
everything or nothing was lost, NACK and PLI floods, malformed and unasked-for transport-cc)
never crashes a loop or starves the other viewers of the stream, over a real uvicorn with real
aiortc peers; its own estimate stays clamped."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import struct
import time
from collections.abc import Iterator

import pytest
from aiortc.rtp import (
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    pack_remb_fci,
)

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whep_watch, whip_publish
from relay.media.estimator import MAX_BPS, MIN_BPS
from relay.rtc.adapter import receiver_rtcp_ssrc, send_rtcp
from tests.live.test_live_path import wait_for
from tests.support.server import RunningServer, run_server

LIE_SECONDS = 4.0
PACKETS_PER_SECOND = 100


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """Admission control off: on a loaded machine it would refuse these viewers (503)."""
    with run_server(limits={"max_loop_lag": None, "max_loop_busy": None}) as srv:
        yield srv


def lies(rtcp_ssrc: int, media_ssrc: int, rng: random.Random) -> list[bytes]:
    """One of every kind of lie, each its own datagram (a compound one would be dropped whole
    at its first bad part)."""
    remb_huge = RtcpPsfbPacket(15, rtcp_ssrc, 0, pack_remb_fci((1 << 18) - 1 << 63, [media_ssrc]))
    remb_zero = RtcpPsfbPacket(15, rtcp_ssrc, 0, pack_remb_fci(0, [media_ssrc]))
    all_lost = RtcpReceiverInfo(media_ssrc, 255, 0x7FFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 1, 1)
    none_lost = RtcpReceiverInfo(media_ssrc, 0, -0x800000, rng.getrandbits(32), 0, 0, 0)
    stranger = RtcpReceiverInfo(rng.getrandbits(32), 255, 0x7FFFFF, 0, 0xFFFFFFFF, 7, 7)
    nack = RtcpRtpfbPacket(1, rtcp_ssrc, media_ssrc, lost=sorted(rng.sample(range(65536), 64)))
    pli = RtcpPsfbPacket(1, rtcp_ssrc, media_ssrc)
    twcc = (  # transport-cc feedback nobody negotiated, with an absurd status count
        struct.pack("!BBHII", 0x80 | 15, 205, 5, rtcp_ssrc, media_ssrc)
        + struct.pack("!HHI", 1, 0xFFFF, 0)
        + rng.randbytes(4)
    )
    truncated = struct.pack("!BBH", 0x81, 201, 7) + rng.randbytes(8)  # says 32 bytes, has 12
    # at least an RTCP header's 8 bytes: libsrtp will not protect less, so no client can send it
    garbage = bytes([0x80, 200 + rng.randrange(8)]) + rng.randbytes(rng.randrange(6, 60))
    return [
        bytes(remb_huge),
        bytes(remb_zero),
        bytes(RtcpRrPacket(rtcp_ssrc, [all_lost])),
        bytes(RtcpRrPacket(rtcp_ssrc, [none_lost, stranger])),
        bytes(nack),
        bytes(pli),
        twcc,
        truncated,
        garbage,
    ]


def video_ssrc(sdp: str) -> int:
    video = next(s for s in sdp.split("m=")[1:] if s.startswith("video"))
    found = re.search(r"a=ssrc:(\d+) ", video)
    assert found is not None, video
    return int(found.group(1))


@pytest.mark.timeout(60)
async def test_lying_feedback_crashes_nothing_and_starves_no_other_viewer(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    room = "liars"
    pub = await whip_publish(
        server.base_url,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(640, 360, 30),
        audio=ToneAudioTrack(),
    )
    honest = await whep_watch(server.base_url, room, decode=False)
    liar = await whep_watch(server.base_url, room, decode=False)
    try:
        assert await wait_for(lambda: honest.video_frames > 30 and liar.video_frames > 30, 15)
        receiver = next(t.receiver for t in liar.pc.getTransceivers() if t.kind == "video")
        rtcp_ssrc = receiver_rtcp_ssrc(receiver)
        assert rtcp_ssrc is not None
        assert liar.pc.remoteDescription is not None
        media_ssrc = video_ssrc(liar.pc.remoteDescription.sdp)
        session = server.gateway.viewers.sessions[liar.location.rsplit("/", 1)[1]]
        rng = random.Random(17)

        # the same span before the lies: what this machine delivers now, as the yardstick
        start = honest.video_frames
        await asyncio.sleep(LIE_SECONDS)
        before = honest.video_frames - start
        caplog.set_level(logging.WARNING)
        caplog.clear()
        start, sent, began = honest.video_frames, 0, time.monotonic()
        while time.monotonic() - began < LIE_SECONDS:
            for packet in lies(rtcp_ssrc, media_ssrc, rng):
                assert await send_rtcp(receiver, packet)
                sent += 1
            await asyncio.sleep(9 / PACKETS_PER_SECOND)
        during = honest.video_frames - start
        print(f"honest viewer: {before} frames in {LIE_SECONDS:.0f} s before the lies, "
              f"{during} while {sent} lying packets came in")  # fmt: skip
        assert during >= 0.6 * before, (before, during)
        assert sent >= 0.5 * PACKETS_PER_SECOND * LIE_SECONDS

        estimate = session.estimate
        print("the liar's estimate:", estimate)
        assert estimate.rembs > 0 and estimate.clamped > 0, estimate
        assert estimate.target_bps is None or MIN_BPS <= estimate.target_bps <= MAX_BPS
        assert estimate.target_bps is None or estimate.target_bps <= 2 * estimate.sent_bps + 50_000
        # nothing raised on the node's side: no traceback logged, every loop still runs
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert not tracebacks, [r.getMessage() for r in tracebacks]
        start = honest.video_frames
        assert await wait_for(lambda: honest.video_frames > start + 30, 10)
        assert len(server.gateway.viewers.sessions) == 2
    finally:
        await liar.close()
        await honest.close()
        await pub.close()
