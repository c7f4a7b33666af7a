"""A viewer whose link cannot carry the program steps down to the lower rendition on its own,
without renegotiating, and back up once its link has been clean for a while; the other viewers
keep the main one. The viewers start over at a keyframe past a lost packet, as browsers do:
aiortc's jitter buffer otherwise holds every frame behind a packet whose retransmission was
refused as too late for 512 packets (relay.rtc.adapter.keyframe_resync_buffer)."""

from __future__ import annotations

import pytest
from aiortc import rtcrtpreceiver

from bench.netbed.peer import starts_keyframe
from relay.rtc.adapter import keyframe_resync_buffer
from tests.live.test_live_path import wait_for
from tests.live.test_mixer_live import SMALL_STAGE, mode, publish
from tests.live.test_resilience import lossy_link
from tests.support.mixer_clients import watch_program
from tests.support.server import run_server


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_lossy_viewer_falls_back_to_the_lower_rendition_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rtcrtpreceiver, "JitterBuffer", keyframe_resync_buffer(starts_keyframe))
    with run_server(stage={**SMALL_STAGE, "fallback_hold": 3.0}) as server:
        room = "ladder"
        red = await publish(server, room, "red")
        green = await publish(server, room, "green")
        viewers = []
        try:
            assert await wait_for(lambda: mode(server, room) == "mixed", 10)
            clean = await watch_program(server.base_url, f"/whep/{room}", kinds=("video",))
            bad = await watch_program(server.base_url, f"/whep/{room}", kinds=("video",))
            viewers = [clean, bad]

            def width(v: object) -> int | None:
                pic = getattr(v, "picture", None)
                return None if pic is None else int(pic.shape[1])

            assert await wait_for(lambda: width(clean) == 320 and width(bad) == 320, 15)
            share = {"loss": 0.3}
            counts = lossy_link(bad, share)
            assert await wait_for(lambda: width(bad) == 160, 30), "no fall back"
            sessions = list(server.gateway.viewers.sessions.values())
            assert sorted(s.fallbacks for s in sessions) == [0, 1]
            assert counts["dropped"] > 10  # the link was lossy (the move down comes within ~1 s)
            frames = clean.video_frames
            assert await wait_for(lambda: clean.video_frames > frames + 10, 5)
            assert width(clean) == 320  # the clean viewer keeps the main rendition
            share["loss"] = 0.0  # the link heals: after the hold, one step back up
            # Judged at the server: under 30 % loss aiortc's own receiver (the test's viewer)
            # now and then stops decoding for good, which says nothing about the gateway.
            moved = next(x for x in sessions if x.fallbacks)
            main_hub = server.gateway.stages.live_hub(room)
            assert await wait_for(lambda: moved.hub is main_hub, 30), "never stepped back up"
            q = moved.viewer.queues["video"]
            assert await wait_for(lambda: not q.waiting_keyframe, 10)  # on its keyframe
            sent = q.sent
            assert await wait_for(lambda: q.sent > sent + 10, 10)  # and the frames flow
            assert sorted(s.step_ups for s in sessions) == [0, 1]
        finally:
            for v in viewers:
                await v.close()
            await red.close()
            await green.close()
