"""Hostile input at the endpoints: 4xx problem+json while a live stream keeps flowing."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.synthetic import StampedVideoTrack, whep_watch, whip_publish
from tests.live.test_live_path import wait_for
from tests.live.test_protocol import SDP, make_offer
from tests.support.server import RunningServer


@pytest.mark.timeout(120)
async def test_endpoints_refuse_junk_while_a_stream_flows(server: RunningServer) -> None:
    room = "steady"
    pub = await whip_publish(
        server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(320, 180, 30)
    )
    viewer = await whep_watch(server.base_url, room, kinds=("video",), decode=False)
    assert await wait_for(lambda: viewer.video_frames > 10, 10)
    good = await make_offer("sendonly")
    tok = {"Authorization": f"Bearer {server.anchor_token('junk')}"}
    junk: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("POST", "/whip/junk", good[: good.index("m=video") + 40].encode(), {**SDP, **tok}),
        ("POST", "/whip/junk", b"\x00\xff" * 500, {**SDP, **tok}),
        (
            "POST",
            "/whip/junk",
            ("v=0\r\n" + "m=video 9 RTP/AVP 0\r\n" * 500).encode(),
            {**SDP, **tok},
        ),
        (
            "POST",
            "/whip/junk",
            good.replace("H264", "AV1X").replace("VP8", "VP9X").encode(),
            {**SDP, **tok},
        ),
        (
            "POST",
            "/whip/junk",
            good.encode(),
            {"Content-Type": "application/sdpx", **tok},
        ),
        ("POST", "/whip/junk", good.encode(), {**SDP, "Authorization": "Bearer " + "A" * 5000}),
        ("POST", "/whip/junk", good.encode(), {**SDP, "Authorization": "Digest x"}),
        ("POST", "/whip/" + "r" * 300, good.encode(), {**SDP, **tok}),
        ("POST", "/whip/..%2F..%2Fetc", good.encode(), {**SDP, **tok}),
        (
            "PATCH",
            "/whip/junk/x" * 20,
            b"a=candidate:1",
            {"Content-Type": "application/trickle-ice-sdpfrag"},
        ),
        ("POST", "/whep/steady", b"v=0\r\n\x00", SDP),
        ("POST", "/v1/rooms", b"[]" * 1000, {"Content-Type": "application/json"}),
        ("DELETE", "/whep/steady/%00", b"", {}),
    ]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        for method, path, body, headers in junk:
            resp = await c.request(method, path, content=body, headers=headers)
            assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text[:200])
            if resp.status_code != 404 or path.startswith(("/whip", "/whep")):
                assert resp.headers["content-type"].startswith("application/problem+json"), path
    before = viewer.video_frames
    await asyncio.sleep(1.0)
    assert viewer.video_frames - before >= 15  # the live stream never noticed
    assert not server.gateway.anchors.sessions.keys() - {
        s.id for s in server.gateway.anchors.in_room(room)
    }
    await viewer.close()
    await pub.close()
