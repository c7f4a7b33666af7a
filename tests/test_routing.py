"""Node selection (pure) and the 307/503 routing of WHEP POSTs at the origin."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from relay.cluster.registry import NodeRecord
from relay.cluster.routing import Full, Redirect, Serve, choose_edge, route
from tests.server import run_server

OFFER_HEADERS = {"Content-Type": "application/sdp"}


def edge(nid: str, viewers: int = 0, cap: int | None = 100, **kw: object) -> NodeRecord:
    return NodeRecord(
        id=nid, url=f"http://{nid}:8080", role="edge", viewers=viewers, max_viewers=cap, **kw
    )  # type: ignore[arg-type]


ORIGIN = NodeRecord(id="o", url="http://o", role="origin")


def test_origin_alone_serves() -> None:
    assert route(ORIGIN, [ORIGIN], "r", rng=random.Random(1)) == Serve()


def test_edge_with_room_serves_itself_and_full_edge_redirects() -> None:
    me = edge("a", viewers=5)
    assert route(me, [ORIGIN, me], "r", rng=random.Random(1)) == Serve()
    full = edge("a", viewers=100)
    other = edge("b", viewers=1)
    assert route(full, [ORIGIN, full, other], "r", rng=random.Random(1)) == Redirect(other)
    assert isinstance(route(full, [ORIGIN, full], "r", rng=random.Random(1)), Full)


def test_prefers_an_edge_already_pulling_then_least_loaded_of_two() -> None:
    rng = random.Random(7)
    busy_pulling = edge("p", viewers=60, rooms=("r",))
    idle = [edge(f"e{i}", viewers=i) for i in range(5)]
    assert choose_edge([busy_pulling, *idle], "r", rng=rng) == busy_pulling
    picks = {choose_edge(idle, "other", rng=rng).id for _ in range(200)}  # type: ignore[union-attr]
    assert "e4" not in picks  # the most loaded never wins a pair
    assert len(picks) >= 3  # randomness spreads viewers
    drained = [
        edge("d", draining=True),
        edge("f", viewers=100),
        edge("x", max_egress_bps=1e6, egress_bps=2e6),
    ]
    assert choose_edge(drained, "r", rng=rng) is None


def test_load_uses_the_tighter_limit() -> None:
    n = edge("a", viewers=10, cap=100, egress_bps=8e8, max_egress_bps=1e9)
    assert n.load == pytest.approx(0.8)
    assert n.has_capacity


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
            r = await client.post("/whep/r?access_token=abc", content="v=0", headers=OFFER_HEADERS)
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert r.headers["content-type"] == "application/problem+json"
            spare = edge("spare", viewers=3, updated_at=now)
            asyncio.run_coroutine_threadsafe(seed(full, spare), server.loop).result(5)
            r = await client.post("/whep/r?access_token=abc", content="v=0", headers=OFFER_HEADERS)
            assert r.status_code == 307
            assert r.headers["location"] == "http://spare:8080/whep/r?access_token=abc"
            # session resources and other methods are never routed
            assert (await client.options("/whep/r")).status_code == 204
            assert (await client.delete("/whep/r/nope")).status_code == 404


def test_pull_key_per_selection() -> None:
    from relay.cluster.edge import pull_key
    from relay.http.whep import HubSelection

    assert pull_key("r", HubSelection()) == "r"
    assert pull_key("r", HubSelection("360p", None)) == "r?rendition=360p"
    assert pull_key("r", HubSelection(None, "a b")) == "r?anchor=a+b"


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


async def test_default_settings_take_a_dead_edge_out_within_5_s() -> None:
    from gateway.settings import Settings
    from relay.cluster.registry import MemoryRegistry

    c = Settings().cluster
    now = [0.0]
    reg = MemoryRegistry(clock=lambda: now[0])
    await reg.heartbeat(edge("dead"), ttl=c.node_ttl)  # its last heartbeat, then SIGKILL
    now[0] = c.node_ttl + c.heartbeat  # expired, and every node re-read the view since
    assert now[0] <= 5.0
    assert await reg.nodes() == []
