"""The 307/503 routing of WHEP POSTs at the origin and the codecs an edge answers with."""

from __future__ import annotations

import time

import httpx
import pytest

from relay.cluster.registry import NodeRecord
from tests.support.server import run_server

OFFER_HEADERS = {"Content-Type": "application/sdp"}


def edge(nid: str, viewers: int = 0, cap: int | None = 100, **kw: object) -> NodeRecord:
    return NodeRecord(
        id=nid, url=f"http://{nid}:8080", role="edge", viewers=viewers, max_viewers=cap, **kw
    )  # type: ignore[arg-type]


@pytest.mark.timeout(30)
async def test_origin_redirects_viewers_to_edges_and_503_when_full() -> None:
    with run_server() as server:
        cluster = server.gateway.cluster
        assert cluster is not None
        reg = cluster.registry
        now = time.time()

        async def seed(*nodes: NodeRecord) -> None:
            for n in nodes:
                await reg.heartbeat(n, ttl=30)
            cluster.view = await reg.nodes()

        async with httpx.AsyncClient(base_url=server.base_url) as client:
            # alone: the origin serves (409: nothing live, but not routed)
            r = await client.post("/whep/r", content="v=0", headers=OFFER_HEADERS)
            assert r.status_code in (400, 409)
            full = edge("full", viewers=100, updated_at=now)
            server.call(lambda: None)
            import asyncio

            fut = asyncio.run_coroutine_threadsafe(seed(full), server.loop)
            fut.result(5)
            # routing comes after authorization: a viewer's token (query form) rides the 307
            token = server.audience_token("r")
            r = await client.post(
                f"/whep/r?access_token={token}", content="v=0", headers=OFFER_HEADERS
            )
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert r.headers["content-type"] == "application/problem+json"
            spare = edge("spare", viewers=3, updated_at=now)
            asyncio.run_coroutine_threadsafe(seed(full, spare), server.loop).result(5)
            r = await client.post(
                f"/whep/r?access_token={token}", content="v=0", headers=OFFER_HEADERS
            )
            assert r.status_code == 307
            assert r.headers["location"] == f"http://spare:8080/whep/r?access_token={token}"
            r = await client.post(
                "/whep/r?access_token=forged", content="v=0", headers=OFFER_HEADERS
            )
            assert r.status_code == 401  # never routed: a forged token learns nothing
            # session resources and other methods are never routed
            assert (await client.options("/whep/r")).status_code == 204
            assert (await client.delete("/whep/r/nope")).status_code == 404


async def test_answer_codecs_reads_what_the_upstream_sends() -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from relay.cluster.link import answer_codecs
    from relay.rtc.peer import close_quietly, codec_preferences, rtc_configuration

    offerer = RTCPeerConnection(rtc_configuration(()))
    answerer = RTCPeerConnection(rtc_configuration(()))
    try:
        offerer.addTransceiver("video", direction="recvonly")
        offerer.addTransceiver("audio", direction="recvonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        from aiortc.mediastreams import VideoStreamTrack

        t = answerer.addTransceiver(VideoStreamTrack(), direction="sendonly")
        t.setCodecPreferences(codec_preferences("video", "VP8", receiving=False))
        await answerer.setRemoteDescription(
            RTCSessionDescription(offerer.localDescription.sdp, "offer")
        )
        await answerer.setLocalDescription(await answerer.createAnswer())
        codecs = answer_codecs(answerer.localDescription.sdp)
        assert {k: (c.name, c.clock_rate) for k, c in codecs.items()} == {"video": ("VP8", 90000)}
    finally:
        await close_quietly(offerer)
        await close_quietly(answerer)
