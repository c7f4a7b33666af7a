"""RFC 9725: DELETE ends a session, even one whose client already closed its peer connection
(Medooze's whip.js closes first, then DELETEs): 200, and the stream ends for viewers at once
instead of after the reconnect grace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from gateway.synthetic import StampedVideoTrack, whep_watch, whip_publish
from relay.http.sessions import remote_ufrag
from relay.rtc.peer import close_quietly
from tests.support.server import RunningServer, run_server


async def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def close_then_delete(server: RunningServer, room: str, when: str) -> float:
    """Publish, let a viewer watch, close the anchor's peer connection, then DELETE: at once,
    when the gateway has marked the connection gone but not torn the session down yet
    ("dropped"), or after the teardown ("settled"). Seconds until the viewer's session ends
    after the DELETE."""
    gw = server.gateway
    token = server.anchor_token(room)
    pub = await whip_publish(server.base_url, room, token, video=StampedVideoTrack(160, 96, 15))
    viewer = await whep_watch(server.base_url, room, kinds=("video",), decode=False)
    try:
        assert await wait_for(lambda: viewer.video_frames > 5, 10)
        sid = pub.location.rsplit("/", 1)[1]
        if when == "dropped":
            # the state between the connection's end and the session's teardown (the client's
            # close is not seen yet: the DELETE comes first)
            session = gw.anchors.sessions[sid]
            server.call(lambda: session.life.timers.end("connection closed"))
        else:
            await close_quietly(pub.pc)
        if when == "settled":  # the gateway saw it: the session is gone, the room in its grace
            assert await wait_for(lambda: not gw.anchors.sessions, 5)
            assert gw.stages.live_hub(room) is not None
            # still a resource: a trickle PATCH on it is refused as such, not a server error
            session = gw.anchors.get(room, sid)
            ufrag, etag = remote_ufrag(session.pc), session.etag
            frag = (
                f"a=ice-ufrag:{ufrag}\na=ice-pwd:y\nm=video 9 UDP/TLS/RTP/SAVPF 0\na=mid:0\n"
                "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\n"
            )
            patch = {**pub.headers, "Content-Type": "application/trickle-ice-sdpfrag"}
            r = await pub.client.patch(
                pub.location, content=frag, headers={**patch, "If-Match": etag}
            )
            assert r.status_code == 409, r.text
        resp = await pub.client.delete(pub.location, headers=pub.headers)
        assert resp.status_code == 200, resp.text
        t0 = time.monotonic()
        assert await wait_for(lambda: not gw.viewers.sessions, 5), "viewers kept for the grace"
        ended = time.monotonic() - t0
        async with httpx.AsyncClient(base_url=server.base_url) as c:
            assert (await c.head(f"/whep/{room}")).status_code == 409
        # the session is over now: a second DELETE finds nothing
        again = await pub.client.delete(pub.location, headers=pub.headers)
        assert again.status_code == 404
        return ended
    finally:
        await viewer.close(delete=False)
        await close_quietly(pub.pc)
        await pub.client.aclose()


@pytest.mark.timeout(60)
async def test_delete_after_the_peer_connection_closed_ends_the_stream_at_once() -> None:
    with run_server(sessions={"reconnect_grace": 10.0}) as server:
        for when in ("at once", "dropped", "settled"):
            ended = await close_then_delete(server, "closed-" + when.replace(" ", "-"), when)
            print(f"{when}: viewer session ended {ended:.2f} s after DELETE")
            assert ended < 2.0
