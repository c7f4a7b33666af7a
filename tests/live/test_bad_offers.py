"""Offers, trickle bodies and tokens that aiortc (or the token check) used to raise on inside a
request: each was a 500 that also dropped the keep-alive connection, on the origin's WHIP and
WHEP and on an edge. Now each is a 4xx problem+json on the same connection, and no peer
connection is left behind."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from aiortc import RTCPeerConnection

from relay.errors import Unprocessable
from relay.rtc.peer import rtc_configuration
from tests.live.test_protocol import make_offer
from tests.support.live_bed import ROOM, SDP, TRICKLE, Bed, assert_4xx_problem, live_bed
from tests.support.offers import BAD, drop_lines, fixture, signed
from tests.support.server import SECRET, live_peer_connections, run_server

ISSUE_KINDS = ("no rtcp-mux", "mid not in BUNDLE", "long mid", "duplicate mid", "clock rate 0")


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    with live_bed() as bed:
        yield bed


@pytest.fixture
async def offers() -> dict[str, str]:
    return {"publish": await make_offer("sendonly"), "view": await make_offer("recvonly")}


async def settled(bed: Bed, baseline: tuple[int, int, int], pcs: int) -> None:
    await asyncio.to_thread(bed.settled, baseline, pcs)


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


@pytest.mark.timeout(60)
async def test_edge_passes_on_what_the_upstream_says_of_the_query(
    bed: Bed, offers: dict[str, str]
) -> None:
    """A viewer asking an edge for a rendition or anchor the origin does not have gets the
    origin's 4xx (it was a 503, as if the node were at fault), and nothing stays pulled."""
    await warm_edge(bed)
    baseline, pcs = bed.sessions(), live_peer_connections()
    pulls = set(bed.edge.node.edge.pulls)
    async with httpx.AsyncClient(base_url=bed.edge.base_url, timeout=20) as c:
        for query, status in (
            ({"rendition": "nope"}, 404),
            ({"anchor": "nobody"}, 404),
            ({"rendition": "r" * 17}, 422),
        ):
            resp = await c.post(f"/whep/{ROOM}", content=offers["view"], headers=SDP, params=query)
            assert_4xx_problem(resp, str(query))
            assert resp.status_code == status, (query, resp.text)
    await settled(bed, baseline, pcs)
    assert set(bed.edge.node.edge.pulls) == pulls


@pytest.mark.timeout(60)
async def test_refused_codec_choice_leaves_no_place_taken_on_the_stage() -> None:
    """An anchor offering only codecs the node will not take (``media.video_codecs``) is
    refused before it holds a place on the stage: refusals never fill the room."""
    with run_server(media={"video_codecs": ["H264"]}) as srv:
        vp8_only = re.sub(r"H264/90000", "H265/90000", await make_offer("sendonly"))
        good = await make_offer("sendonly")
        auth = {**SDP, "Authorization": f"Bearer {srv.anchor_token('stage')}"}
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=20) as c:
            for _ in range(srv.settings.stage.max_anchors + 2):
                resp = await c.post("/whip/stage", content=vp8_only, headers=auth)
                assert_4xx_problem(resp, "VP8-only offer")
                assert resp.status_code == 422
            resp = await c.post("/whip/stage", content=good, headers=auth)
            assert resp.status_code == 201, resp.text
            assert (await c.delete(resp.headers["location"], headers=auth)).status_code == 200
            # nor does a refusal leave a room behind
            junk = {**SDP, "Authorization": f"Bearer {srv.anchor_token('junk')}"}
            resp = await c.post("/whip/junk", content=vp8_only, headers=junk)
            assert resp.status_code == 422
            assert srv.call(lambda: srv.gateway.stages.get("junk")) is None


@pytest.mark.timeout(90)
async def test_real_offers_are_answered_on_origin_and_edge(bed: Bed) -> None:
    """The checks refuse none of the real clients' offers: Chromium's, the Firefox-style one
    and aiortc's get an answer from the origin (WHIP, WHEP) and the edge (WHEP)."""
    await warm_edge(bed)
    baseline, pcs = bed.sessions(), live_peer_connections()
    anchor = {"Authorization": f"Bearer {bed.origin.anchor_token('real')}"}
    for client in ("chromium", "firefox", "aiortc"):
        for base, path, name, auth in (
            (bed.origin.base_url, "/whip/real", f"{client}_whip.sdp", anchor),
            (bed.origin.base_url, f"/whep/{ROOM}", f"{client}_whep.sdp", {}),
            (bed.edge.base_url, f"/whep/{ROOM}", f"{client}_whep.sdp", {}),
        ):
            async with httpx.AsyncClient(base_url=base, timeout=20) as c:
                resp = await c.post(path, content=fixture(name), headers={**SDP, **auth})
                assert resp.status_code == 201, (base, name, resp.text)
                assert resp.headers["content-type"] == "application/sdp"
                gone = await c.delete(resp.headers["location"], headers=auth)
                assert gone.status_code in (200, 404), gone.text  # 404: its ICE failed already
    await settled(bed, baseline, pcs)
