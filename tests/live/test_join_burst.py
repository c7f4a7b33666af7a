"""A flash crowd of WHEP viewers is queued and served, not refused (issue 20, joins).

The old overload guard refused every join (503) while the node's loop was late, also the ones
of a burst whose own work made it late. Here the loop is made late in the middle of a burst
(blocked 1 s, past ``max_loop_lag``) while joins wait in line: they are all answered, and every
viewer plays.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.synthetic import StampedVideoTrack, Viewer, whep_watch, whip_publish
from relay.rtc.join_queue import JoinQueue
from tests.live.test_live_path import wait_for
from tests.support.edge_server import FAST_POSTS
from tests.support.server import run_server

BURST = 30
MAX_LAG = 0.3  # s: the overload guard's threshold here (the loop is blocked 1 s mid-burst)


async def watch_once_admitted(base_url: str, room: str) -> Viewer:
    """The viewer already watching: a node busy starting (loop late) refuses for a while."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await whep_watch(base_url, room, kinds=("video",), decode=False, timeout=30)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.mark.timeout(150)
async def test_a_burst_past_the_overload_guard_is_queued_and_every_viewer_plays() -> None:
    limits = {"max_loop_lag": MAX_LAG, "max_loop_busy": None, **FAST_POSTS}
    with run_server(limits=limits) as server:
        room = "crowd"
        pub = await whip_publish(
            server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(320, 180, 15)
        )
        watching = await watch_once_admitted(server.base_url, room)
        # two places (not the default eight): the test's own clients, on the server's GIL,
        # POST too slowly for a line to form reliably in front of more
        joins = server.gateway.viewers.joins = server.call(lambda: JoinQueue(concurrency=2))
        lag = server.gateway.lag
        viewers: list[Viewer] = []
        try:
            assert await wait_for(lambda: watching.first_frame_at is not None, 20)
            # the burst's first POST finds the node calm (no burst under way yet, the guard
            # would refuse it); the others find a line and wait in it
            assert await wait_for(lambda: server.call(lambda: not lag.lagging(MAX_LAG)), 60)

            async def join() -> Viewer | int:
                try:
                    return await whep_watch(
                        server.base_url, room, kinds=("video",), decode=False, timeout=60
                    )
                except httpx.HTTPStatusError as exc:
                    return exc.response.status_code

            before = watching.video_frames
            burst = [asyncio.ensure_future(join()) for _ in range(BURST)]
            # once a line has formed, the loop falls behind (1 s > max_loop_lag): the old
            # guard refused every join still waiting then
            assert await wait_for(lambda: server.call(lambda: joins.waiting) >= 3, 60)
            server.loop.call_soon_threadsafe(time.sleep, 1.0)
            results = await asyncio.wait_for(asyncio.gather(*burst), 120)
            viewers = [r for r in results if isinstance(r, Viewer)]
            assert [r for r in results if not isinstance(r, Viewer)] == []  # no 503
            assert lag.max_lag > MAX_LAG  # the loop was late during the burst
            assert joins.max_waiting >= 3 and joins.refused == 0
            assert watching.video_frames > before
            assert await wait_for(lambda: all(v.first_frame_at for v in viewers), 60)
            seen = watching.video_frames  # the viewer already watching still plays
            assert await wait_for(lambda: watching.video_frames > seen + 5, 20)
        finally:
            await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)
            await watching.close()
            await pub.close()
