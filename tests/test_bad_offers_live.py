"""Offers, trickle bodies and tokens that aiortc (or the token check) used to raise on inside a
request: each was a 500 that also dropped the keep-alive connection, on the origin's WHIP and
WHEP and on an edge. Now each is a 4xx problem+json on the same connection, and no peer
connection is left behind."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from gateway.synthetic import Publisher, StampedVideoTrack, whip_publish
from relay.errors import Unprocessable
from relay.rtc.peer import rtc_configuration
from tests.edge_server import RunningEdge, run_edge
from tests.server import SECRET, RunningServer, live_peer_connections, run_server
from tests.test_offer_checks import BAD, drop_lines, fixture, signed
from tests.test_protocol import make_offer

ROOM = "live"
SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}
ISSUE_KINDS = ("no rtcp-mux", "mid not in BUNDLE", "long mid", "duplicate mid", "clock rate 0")


@dataclass
class Bed:
    origin: RunningServer
    edge: RunningEdge
    publisher: Publisher

    def sessions(self) -> tuple[int, int, int]:
        gw = self.origin.gateway
        return (
            len(gw.anchors.sessions),
            len(gw.viewers.sessions),
            len(self.edge.node.viewers.sessions),
        )


def on_loop(srv: RunningServer, coro: object, timeout: float = 20) -> object:
    return asyncio.run_coroutine_threadsafe(coro, srv.loop).result(timeout)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    """Origin (in-process uvicorn), an edge pulling from it, and a live anchor (publishing
    from the origin's own loop, so the module's tests can share it)."""
    fast = {"session_posts_per_second": 10_000, "session_post_burst": 10_000}
    with (
        run_server(limits={**fast, "max_loop_lag": None}) as origin,
        run_edge(
            origin.base_url, limits={"max_loop_lag": None}, cluster={"idle_grace": 600}
        ) as edge,
    ):
        pub = on_loop(
            origin,
            whip_publish(
                origin.base_url,
                ROOM,
                origin.anchor_token(ROOM),
                video=StampedVideoTrack(160, 90, 15),
                audio=AudioStreamTrack(),
            ),
        )
        assert isinstance(pub, Publisher)
        try:
            yield Bed(origin, edge, pub)
        finally:
            on_loop(origin, pub.close())


@pytest.fixture
async def offers() -> dict[str, str]:
    return {"publish": await make_offer("sendonly"), "view": await make_offer("recvonly")}


async def settled(bed: Bed, baseline: tuple[int, int, int], pcs: int, timeout: float = 10) -> None:
    """Sessions and open peer connections back to ``baseline``/``pcs`` (closing is async)."""
    deadline = time.monotonic() + timeout
    while True:
        now_pcs = live_peer_connections()
        if bed.sessions() == baseline and now_pcs <= pcs:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"left behind: sessions {bed.sessions()} vs {baseline}, pcs {now_pcs} vs {pcs}"
            )
        await asyncio.sleep(0.1)


def assert_4xx_problem(resp: httpx.Response, what: str) -> None:
    assert 400 <= resp.status_code < 500, (what, resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/problem+json"), what
    assert resp.headers.get("connection", "").lower() != "close", what
    body = resp.json()
    assert body["status"] == resp.status_code and body["detail"], what


async def warm_edge(bed: Bed) -> None:
    """One good pull through the edge first, so its link's peer connection is in the baseline."""
    async with httpx.AsyncClient(base_url=bed.edge.base_url, timeout=20) as c:
        resp = await c.post(f"/whep/{ROOM}", content=await make_offer("recvonly"), headers=SDP)
        assert resp.status_code == 201, resp.text
        assert (await c.delete(resp.headers["location"])).status_code == 200


@pytest.mark.timeout(90)
async def test_issue_offers_get_4xx_on_origin_and_edge(bed: Bed, offers: dict[str, str]) -> None:
    await warm_edge(bed)
    baseline, pcs = bed.sessions(), live_peer_connections()
    anchor = {"Authorization": f"Bearer {bed.origin.anchor_token('other')}"}
    targets = [
        (bed.origin.base_url, "/whip/other", "publish", anchor),
        (bed.origin.base_url, f"/whep/{ROOM}", "view", {}),
        (bed.edge.base_url, f"/whep/{ROOM}", "view", {}),
    ]
    chromium = {"publish": fixture("chromium_whip.sdp"), "view": fixture("chromium_whep.sdp")}
    for base, path, role, auth in targets:
        # one connection for all: a 500 used to close it
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=20, limits=limits) as c:
            for kind in ISSUE_KINDS:
                for source, text in (("aiortc", offers[role]), ("chromium", chromium[role])):
                    bad = BAD[kind][0](text)
                    resp = await c.post(path, content=bad, headers={**SDP, **auth})
                    assert_4xx_problem(resp, f"{base}{path} {kind} ({source})")
    await settled(bed, baseline, pcs)


@pytest.mark.timeout(60)
async def test_token_claims_that_cannot_be_encoded_get_401(
    bed: Bed, offers: dict[str, str]
) -> None:
    """A token signed with the real secret whose room (or subject) is a lone surrogate."""

    exp = int(time.time()) + 60
    bad_room = json.dumps(
        {"iss": "stagecast", "sub": "a", "room": "\ud800", "role": "anchor", "exp": exp}
    )
    bad_sub = json.dumps(
        {"iss": "stagecast", "sub": "\ud800", "room": ROOM, "role": "audience", "exp": exp}
    )
    cases = [
        (bed.origin.base_url, "/whip/other", offers["publish"], signed(bad_room, SECRET)),
        (bed.origin.base_url, f"/whep/{ROOM}", offers["view"], signed(bad_sub, SECRET)),
        (bed.edge.base_url, f"/whep/{ROOM}", offers["view"], signed(bad_sub, SECRET)),
        (bed.origin.base_url, f"/whep/{ROOM}", offers["view"], signed(bad_room, SECRET)),
    ]
    for base, path, offer, token in cases:
        async with httpx.AsyncClient(base_url=base, timeout=20) as c:
            resp = await c.post(
                path, content=offer, headers={**SDP, "Authorization": f"Bearer {token}"}
            )
            assert_4xx_problem(resp, f"{base}{path}")
            assert resp.status_code in (401, 403)


@pytest.mark.timeout(90)
async def test_trickle_that_aiortc_refuses_gets_4xx(bed: Bed, offers: dict[str, str]) -> None:
    """PATCH bodies on a live session with candidates whose numbers are out of range."""
    await warm_edge(bed)
    baseline, pcs = bed.sessions(), live_peer_connections()
    bodies = [
        "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 70000 typ host\r\n",
        "a=mid:0\r\na=candidate:1 1 udp 99999999999 127.0.0.1 5000 typ host\r\n",
        "a=mid:0\r\na=candidate:1 300 udp 2130706431 127.0.0.1 5000 typ host\r\n",
        "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ srflx raddr x rport 1e6\r\n",
        "a=ice-ufrag:\u00e9\u00e9\u00e9\u00e9\r\n",
    ]
    trickling = drop_lines(r"a=(candidate:|end-of-candidates)")(offers["view"])
    for base in (bed.origin.base_url, bed.edge.base_url):
        async with httpx.AsyncClient(base_url=base, timeout=20) as c:
            resp = await c.post(f"/whep/{ROOM}", content=trickling, headers=SDP)
            assert resp.status_code == 201, resp.text
            where, etag = resp.headers["location"], resp.headers["etag"]
            for body in bodies:
                resp = await c.patch(
                    where, content=body.encode(), headers={**TRICKLE, "If-Match": etag}
                )
                assert_4xx_problem(resp, f"{base} PATCH {body!r}")
            assert (await c.delete(where)).status_code == 200
    await settled(bed, baseline, pcs)


@pytest.mark.timeout(30)
async def test_answer_offer_turns_what_aiortc_raises_into_422_and_closes() -> None:
    """The net under check_offer: an offer aiortc refuses (here one check_offer would have
    stopped) ends as Unprocessable with the peer connection closed."""
    from relay.rtc.peer import answer_offer

    offer = drop_lines(r"a=rtcp-mux\r?$")(await make_offer("recvonly"))
    pc = RTCPeerConnection(rtc_configuration(()))
    pc.addTransceiver("video", direction="sendonly")
    with pytest.raises(Unprocessable):
        await answer_offer(pc, offer)
    assert pc.connectionState == "closed"
