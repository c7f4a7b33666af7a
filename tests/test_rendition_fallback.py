"""A viewer whose link cannot carry the program steps down to the lower rendition on its own,
without renegotiating; the other viewers keep the main one."""

from __future__ import annotations

import pytest

from relay.fallback import FallbackPolicy
from tests.mixer_clients import watch_program
from tests.server import run_server
from tests.test_live_path import wait_for
from tests.test_mixer_live import SMALL_STAGE, mode, publish
from tests.test_resilience import make_lossy


def test_policy_steps_down_on_repeated_congestion_only() -> None:
    p = FallbackPolicy(threshold=3, window=10.0)
    assert not p.observe("v", 0, 0.0)
    assert not p.observe("v", 1, 1.0)
    assert not p.observe("v", 1, 2.0)
    assert not p.observe("v", 2, 20.0)  # the first event has aged out
    assert not p.observe("v", 3, 21.0)
    assert p.observe("v", 4, 22.0)
    p.moved("v")
    assert not p.observe("v", 5, 23.0)  # judged afresh on the new rendition
    p.forget("v")
    assert not p.observe("v", 100, 24.0)  # a new viewer starts from its current count


@pytest.mark.timeout(120)
async def test_lossy_viewer_falls_back_to_the_lower_rendition() -> None:
    with run_server(stage=SMALL_STAGE) as server:
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
            counts = make_lossy(bad, 0.3)  # type: ignore[arg-type]
            assert await wait_for(lambda: width(bad) == 160, 30), "no fall back"
            sessions = list(server.gateway.viewers.sessions.values())
            assert sorted(s.fallbacks for s in sessions) == [0, 1]
            assert counts["dropped"] > 20
            frames = clean.video_frames
            assert await wait_for(lambda: clean.video_frames > frames + 10, 5)
            assert width(clean) == 320  # the clean viewer keeps the main rendition
        finally:
            for v in viewers:
                await v.close()
            await red.close()
            await green.close()
