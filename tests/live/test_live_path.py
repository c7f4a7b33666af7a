"""End to end over real sockets: aiortc anchor -> uvicorn gateway -> 3 aiortc viewers."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whep_watch, whip_publish
from tests.support.server import RunningServer, live_peer_connections


async def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


@pytest.mark.timeout(90)
@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_720p_stamps_reach_three_viewers(server: RunningServer, codec: str) -> None:
    room = f"live-{codec.lower()}"
    baseline_tasks = server.task_count()
    pub = await whip_publish(
        server.base_url,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(1280, 720, 30),
        audio=ToneAudioTrack(440),
        video_codec=codec,
    )
    assert await wait_for(lambda: server.gateway.stages.live_hub(room) is not None, 5)
    hub = server.gateway.stages.live_hub(room)
    assert hub is not None and hub.codecs["video"].name == codec
    assert await wait_for(lambda: hub.stats.frames_in > 30, 10)  # the anchor is flowing

    viewers = [await whep_watch(server.base_url, room) for _ in range(3)]
    await asyncio.sleep(3.0)
    for v in viewers:
        ttff = v.time_to_first_frame
        assert ttff is not None and ttff < 1.0, f"first frame after {ttff}"
        counters = [s.counter for s in v.samples]
        assert len(counters) >= 45, f"only {len(counters)} stamped frames in 3 s"
        assert counters == sorted(counters) and len(set(counters)) == len(counters)
        assert v.video_frames - len(counters) <= 2  # (almost) every decoded frame is readable
        assert v.audio_frames > 100
        assert max(v.audio_rms) > 1000  # a 0.3 FS tone, not silence
        lat = sorted(s.latency_ms for s in v.samples)
        assert lat[len(lat) // 2] < 500
    assert hub.viewer_count == 3
    assert hub.stats.keyframe_requests >= 1

    # the anchor leaves: every viewer sees its tracks end, the server lets go of everything
    await pub.close()
    for v in viewers:
        await asyncio.wait_for(v.ended.wait(), 10)
    assert await wait_for(lambda: not server.gateway.viewers.sessions, 10)
    assert not server.gateway.anchors.sessions and server.gateway.stages.live_hub(room) is None
    for v in viewers:
        await v.close()
    assert await wait_for(lambda: server.task_count() <= baseline_tasks, 10), server.task_count()
    assert await wait_for(lambda: live_peer_connections() == 0, 10)


@pytest.mark.timeout(60)
async def test_vanished_viewer_is_reaped_and_others_continue(server: RunningServer) -> None:
    room = "reap"
    pub = await whip_publish(
        server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(640, 360, 30)
    )
    stay = await whep_watch(server.base_url, room, kinds=("video",))
    gone = await whep_watch(server.base_url, room, kinds=("video",))
    assert await wait_for(lambda: gone.video_frames > 10 and stay.video_frames > 10, 10)
    # the viewer disappears without DELETE: its peer connection just closes
    await gone.close(delete=False)
    assert await wait_for(lambda: len(server.gateway.viewers.sessions) == 1, 15)
    before = stay.video_frames
    await asyncio.sleep(1.0)
    assert stay.video_frames - before >= 20
    await stay.close()
    await pub.close()
    assert await wait_for(lambda: not server.gateway.anchors.sessions, 10)


@pytest.mark.timeout(60)
async def test_anchor_that_vanishes_ends_stream_after_grace() -> None:
    from tests.support.server import run_server

    with run_server(sessions={"reconnect_grace": 1.0}) as server:
        await _vanish(server)


async def _vanish(server: RunningServer) -> None:
    room = "vanish"
    pub = await whip_publish(
        server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(320, 180, 15)
    )
    viewer = await whep_watch(server.base_url, room, kinds=("video",))
    assert await wait_for(lambda: viewer.video_frames > 5, 10)
    await pub.close(delete=False)  # no DELETE: the gateway must notice on its own
    await asyncio.wait_for(viewer.ended.wait(), 15)
    assert await wait_for(lambda: not server.gateway.anchors.sessions, 5)
    assert await wait_for(lambda: not server.gateway.viewers.sessions, 5)
    await viewer.close()


@pytest.mark.timeout(60)
async def test_silent_anchor_times_out() -> None:
    from tests.support.server import run_server

    with run_server(sessions={"anchor_media_timeout": 1.0, "reconnect_grace": 1.0}) as server:
        room = "silent"
        pub = await whip_publish(
            server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(320, 180, 15)
        )
        viewer = await whep_watch(server.base_url, room, kinds=("video",))
        assert await wait_for(lambda: viewer.video_frames > 5, 10)
        pub.pc.getSenders()[0].replaceTrack(None)  # connection stays up, media stops
        t0 = time.monotonic()
        await asyncio.wait_for(viewer.ended.wait(), 10)
        assert time.monotonic() - t0 < 6  # 1 s of silence + 1 s of grace
        assert await wait_for(lambda: not server.gateway.anchors.sessions, 5)
        await viewer.close()
        await pub.close()
