"""A viewer whose link cannot carry the program steps down to the lower rendition on its own,
without renegotiating, and back up once its link has been clean for a while; the other viewers
keep the main one."""

from __future__ import annotations

import pytest

from relay.media.fallback import FallbackPolicy
from tests.mixer_clients import watch_program
from tests.server import run_server
from tests.test_live_path import wait_for
from tests.test_mixer_live import SMALL_STAGE, mode, publish
from tests.test_resilience import lossy_link


def test_policy_steps_down_on_repeated_congestion_only() -> None:
    p = FallbackPolicy(threshold=3, window=10.0)
    assert not p.observe("v", 0, 0.0)
    assert not p.observe("v", 1, 1.0)
    assert not p.observe("v", 1, 2.0)
    assert not p.observe("v", 2, 20.0)  # the first event has aged out
    assert not p.observe("v", 3, 21.0)
    assert p.observe("v", 4, 22.0)
    p.moved("v", 22.0)
    assert not p.observe("v", 5, 23.0)  # judged afresh on the new rendition
    p.forget("v")
    assert not p.observe("v", 100, 24.0)  # a new viewer starts from its current count


def test_policy_steps_back_up_after_a_quiet_hold_and_backs_off() -> None:
    p = FallbackPolicy(threshold=1, window=10.0, hold=5.0, settle=30.0, max_hold=12.0)
    assert not p.observe("v", 0, -1.0)
    assert p.observe("v", 1, 0.0)
    p.moved("v", 0.0)
    assert not p.should_step_up("v", 4.0)
    p.observe("v", 2, 3.0)  # still congested on the lower rendition: the hold restarts
    assert not p.should_step_up("v", 7.0) and p.should_step_up("v", 8.0)
    p.moved("v", 8.0, down=False)
    assert not p.should_step_up("v", 100.0)  # back at the top: nothing above to try
    assert p.observe("v", 3, 10.0)  # falls right back: the link cannot carry it
    p.moved("v", 10.0)
    assert not p.should_step_up("v", 19.0) and p.should_step_up("v", 20.0)  # hold 5 -> 10
    p.moved("v", 20.0, down=False)
    p.observe("v", 4, 21.0)
    p.moved("v", 21.0)
    assert not p.should_step_up("v", 32.0) and p.should_step_up("v", 33.0)  # capped at 12


@pytest.mark.timeout(120)
async def test_lossy_viewer_falls_back_to_the_lower_rendition_and_recovers() -> None:
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
            assert counts["dropped"] > 20
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
