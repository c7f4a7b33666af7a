"""Quiet read pacing on a real node (``webrtc.udp_quiet_reads``): with one anchor and nobody
watching, the shared port is read in batches; a viewer's offer ends that at once and the port
is not paced while it watches; once it leaves, the node is quiet again."""

from __future__ import annotations

import asyncio

import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whep_watch, whip_publish
from relay.rtc.shared_port import QUIET_GRACE
from tests.live.test_live_path import wait_for
from tests.live.test_shared_port import shared_port_server
from tests.support.server import RunningServer

ROOM = "quiet"


def paced(server: RunningServer) -> int:
    port = server.gateway.transport.port
    assert port is not None
    return port.paced


@pytest.mark.timeout(90)
async def test_an_anchor_alone_is_read_in_batches_until_a_viewer_comes() -> None:
    with shared_port_server() as server:
        publisher = await whip_publish(
            server.base_url,
            ROOM,
            server.anchor_token(ROOM),
            video=StampedVideoTrack(320, 180, 30),
            audio=ToneAudioTrack(440),
        )
        try:
            gateway = server.gateway
            assert await wait_for(lambda: gateway.stages.live_hub(ROOM) is not None, 15)
            assert server.call(gateway.media_quiet)
            # after the anchor's own grace, its audio and video (~80 readable events a second)
            # are read at 20 a second at most: reads are put off
            assert await wait_for(lambda: paced(server) > 20, QUIET_GRACE + 15)
            viewer = await whep_watch(server.base_url, ROOM, decode=False)
            try:
                assert not server.call(gateway.media_quiet)
                before = paced(server)
                frames = viewer.video_frames
                await asyncio.sleep(QUIET_GRACE + 2)  # past the viewer's registration grace
                assert paced(server) == before, "reads paced while a viewer watched"
                assert viewer.video_frames > frames
            finally:
                await viewer.close()
            assert await wait_for(lambda: server.call(gateway.media_quiet), 10)
        finally:
            await publisher.close()
