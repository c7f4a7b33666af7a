"""Staying up: an anchor that drops and publishes again keeps its audience."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, Viewer, whep_watch, whip_publish
from relay.rtc.adapter import install_ingest_tap
from tests.live.test_live_path import wait_for
from tests.support.server import run_server


class RtpLog:
    """What a viewer's receiver saw on the wire: (arrival, seq, timestamp, marker) per packet."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, int, int, int]] = []

    def __call__(self, packet, codec) -> None:  # type: ignore[no-untyped-def]
        self.packets.append(
            (time.monotonic(), packet.sequence_number, packet.timestamp, packet.marker)
        )


def video_log(viewer: Viewer) -> RtpLog:
    log = RtpLog()
    video = next(t for t in viewer.pc.getTransceivers() if t.kind == "video")
    install_ingest_tap(video.receiver, log)
    return log


@pytest.mark.timeout(90)
async def test_anchor_reconnect_keeps_viewers_with_continuous_rtp() -> None:
    with run_server(sessions={"reconnect_grace": 5.0}) as server:
        room = "again"
        token = server.anchor_token(room)
        pub = await whip_publish(
            server.base_url,
            room,
            token,
            video=StampedVideoTrack(640, 360, 30),
            audio=ToneAudioTrack(),
        )
        watcher = await whep_watch(server.base_url, room)
        wire = await whep_watch(server.base_url, room, decode=False)
        log = video_log(wire)
        assert await wait_for(lambda: len(watcher.samples) > 30 and len(log.packets) > 50, 10)
        hub = server.gateway.stages.live_hub(room)

        # the anchor's network drops: no DELETE, its peer connection is just gone
        await pub.close(delete=False)
        assert await wait_for(lambda: not server.gateway.anchors.sessions, 10)
        assert server.gateway.stages.live_hub(room) is hub  # program kept for the grace period
        assert len(server.gateway.viewers.sessions) == 2
        await asyncio.sleep(1.0)
        frozen_at = len(watcher.samples)

        # it publishes again (new WHIP session, same token) and the same viewers get the picture
        t0 = time.monotonic()
        pub2 = await whip_publish(
            server.base_url,
            room,
            token,
            video=StampedVideoTrack(640, 360, 30),
            audio=ToneAudioTrack(),
        )
        assert await wait_for(lambda: len(watcher.samples) > frozen_at + 15, 10)
        resumed_after = next(s.received_at for s in watcher.samples[frozen_at:])
        assert resumed_after - (time.time() - (time.monotonic() - t0)) < 2.0
        assert not watcher.ended.is_set() and wire.pc.connectionState == "connected"
        assert server.gateway.stages.live_hub(room) is hub and hub.sources == 2

        # on the wire: sequence numbers continue without a gap, timestamps move forward by about
        # the wall-clock pause (no jump backwards, no jump far ahead)
        await asyncio.sleep(0.5)
        seqs = [p[1] for p in log.packets]
        steps = [(b - a) % 65536 for a, b in itertools.pairwise(seqs)]
        assert max(steps) <= 2, f"sequence gap {max(steps)}"
        pairs = list(itertools.pairwise(log.packets))
        gap = max(pairs, key=lambda ab: ab[1][0] - ab[0][0])
        wall = gap[1][0] - gap[0][0]
        ts_step = ((gap[1][2] - gap[0][2]) % (1 << 32)) / 90000
        # forward by about the pause: never backwards, never far ahead (the anchor's first frames
        # after a reconnect can reach the viewer later than they were captured)
        assert wall > 1.0 and wall - 1.0 < ts_step < wall + 0.5, (wall, ts_step)
        for a, b in pairs:
            assert (b[2] - a[2]) % (1 << 32) < (1 << 31)  # never backwards

        await pub2.close()
        await asyncio.wait_for(watcher.ended.wait(), 10)
        assert await wait_for(lambda: not server.gateway.viewers.sessions, 10)
        for v in (watcher, wire):
            await v.close()


@pytest.mark.timeout(60)
async def test_same_anchor_takes_over_before_timeout_and_strangers_get_409() -> None:
    # a one-anchor stage (co-hosting off): a stranger finds the room full
    with run_server(sessions={"reconnect_grace": 5.0}, stage={"max_anchors": 1}) as server:
        room = "takeover"
        pub = await whip_publish(
            server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(320, 180, 30)
        )
        viewer = await whep_watch(server.base_url, room, kinds=("video",))
        assert await wait_for(lambda: viewer.video_frames > 10, 10)
        other = server.gateway.tokens.mint(room, "anchor", "someone-else", 60)
        with pytest.raises(Exception, match="409"):
            await whip_publish(server.base_url, room, other, video=StampedVideoTrack(320, 180, 30))
        # the same subject publishes again while its first session still looks alive
        pub2 = await whip_publish(
            server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(320, 180, 30)
        )
        assert await wait_for(lambda: len(server.gateway.anchors.sessions) == 1, 5)
        before = viewer.video_frames
        assert await wait_for(lambda: viewer.video_frames > before + 20, 10)
        assert not viewer.ended.is_set()
        await pub.close(delete=False)
        await pub2.close()
        await asyncio.wait_for(viewer.ended.wait(), 10)
        await viewer.close()


def lossy_link(viewer: Any, share: dict[str, float], seed: int = 1) -> dict[str, int]:
    """A lossy link at the edge: the viewer's ICE transport drops ``share["loss"]`` of incoming
    RTP (DTLS, STUN and RTCP pass, so the session itself stays up); the test may change the share
    as it goes."""
    import random

    rng = random.Random(seed)
    counts = {"rtp": 0, "dropped": 0}
    ice = viewer.pc.getTransceivers()[0].receiver.transport.transport
    inner = ice._recv

    async def lossy_recv() -> bytes:
        while True:
            data: bytes = await inner()
            is_rtp = len(data) > 12 and 128 <= data[0] < 192 and 96 <= (data[1] & 0x7F) <= 127
            if not is_rtp:
                return data
            counts["rtp"] += 1
            if rng.random() >= share["loss"]:
                return data
            counts["dropped"] += 1

    ice._recv = lossy_recv
    return counts


def make_lossy(viewer: Viewer, loss: float, seed: int = 1) -> dict[str, int]:
    return lossy_link(viewer, {"loss": loss}, seed)


@pytest.mark.timeout(90)
async def test_lossy_viewer_degrades_alone() -> None:
    with run_server() as server:
        room = "lossy"
        pub = await whip_publish(
            server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(640, 360, 30)
        )
        clean = await whep_watch(server.base_url, room, kinds=("video",))
        bad = await whep_watch(server.base_url, room, kinds=("video",))
        assert await wait_for(lambda: len(clean.samples) > 20 and len(bad.samples) > 20, 10)
        counts = make_lossy(bad, 0.2)
        c0, b0 = len(clean.samples), len(bad.samples)
        await asyncio.sleep(4.0)
        clean_fps = (len(clean.samples) - c0) / 4.0
        assert counts["dropped"] > 20  # the link really is lossy
        assert clean_fps >= 24, f"clean viewer fell to {clean_fps} fps"
        counters = [s.counter for s in clean.samples[c0:]]
        assert (
            max(b - a for a, b in itertools.pairwise(counters)) <= 3
        )  # no freeze on the clean one
        # the lossy viewer is served too (NACK/RTX, PLI) and keeps getting pictures
        assert len(bad.samples) > b0
        hub = server.gateway.stages.live_hub(room)
        assert hub is not None and hub.viewer_count == 2
        await clean.close()
        await bad.close()
        await pub.close()
