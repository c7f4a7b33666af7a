"""WHIP (RFC 9725) and WHEP status codes, headers and problem details over a real uvicorn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiortc import RTCPeerConnection

from gateway.synthetic import StampedVideoTrack, whip_publish
from relay.rtc.peer import close_quietly, rtc_configuration
from tests.support.server import RunningServer

SDP = {"Content-Type": "application/sdp"}


async def make_offer(direction: str, kinds: tuple[str, ...] = ("video", "audio")) -> str:
    pc = RTCPeerConnection(rtc_configuration(()))
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await close_quietly(pc)
    return sdp


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body  # type: ignore[no-any-return]


async def test_whip_post_creates_session_and_delete_ends_it(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    offer = await make_offer("sendonly")
    resp = await client.post(
        "/whip/p1", content=offer, headers={**SDP, **auth(server.anchor_token("p1"))}
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["content-type"].startswith("application/sdp")
    assert resp.text.startswith("v=0") and "a=recvonly" in resp.text
    # where a browser's bandwidth estimate starts: not for aiortc (no transport-cc offered;
    # tests/unit/test_anchor_answer.py and tests/live/test_anchor_cc.py: Chromium gets it)
    assert "x-google-start-bitrate" not in resp.text
    assert "usedtx=1" in resp.text  # Opus DTX: a silent anchor sends (and costs) little
    location = resp.headers["location"]
    assert location.startswith("/whip/p1/") and len(location.rsplit("/", 1)[1]) >= 22
    assert resp.headers["etag"].startswith('"')
    # a second anchor in the same room: co-hosting (stage.max_anchors, default 9) takes it
    other = server.gateway.tokens.mint("p1", "anchor", "another-anchor", 60)
    second = await client.post(
        "/whip/p1", content=await make_offer("sendonly"), headers={**SDP, **auth(other)}
    )
    assert second.status_code == 201, second.text
    assert (await client.delete(second.headers["location"], headers=auth(other))).status_code == 200
    # DELETE needs the token too, then the session is gone
    assert_problem(await client.delete(location), 401)
    assert (
        await client.delete(location, headers=auth(server.anchor_token("p1")))
    ).status_code == 200
    assert_problem(await client.delete(location, headers=auth(server.anchor_token("p1"))), 404)
    assert not server.gateway.anchors.sessions


async def test_whip_refusals(server: RunningServer, client: httpx.AsyncClient) -> None:
    offer = await make_offer("sendonly")
    tok = auth(server.anchor_token("p2"))
    assert_problem(await client.post("/whip/p2", content=offer, headers=SDP), 401)
    assert_problem(
        await client.post(
            "/whip/p2", content=offer, headers={**SDP, "Authorization": "Bearer nope"}
        ),
        401,
    )
    expired = server.gateway.tokens.mint("p2", "anchor", "x", 10, now=time.time() - 3600)
    body = assert_problem(
        await client.post("/whip/p2", content=offer, headers={**SDP, **auth(expired)}), 401
    )
    assert "expired" in str(body["detail"])
    assert_problem(
        await client.post(
            "/whip/p2", content=offer, headers={**SDP, **auth(server.anchor_token("other"))}
        ),
        403,
    )
    assert_problem(
        await client.post(
            "/whip/p2", content=offer, headers={**SDP, **auth(server.audience_token("p2"))}
        ),
        403,
    )
    resp = await client.post(
        "/whip/p2", content=offer, headers={**tok, "Content-Type": "text/plain"}
    )
    assert_problem(resp, 415)
    assert_problem(
        await client.post("/whip/p2", content=b"v=0\r\nbogus", headers={**SDP, **tok}), 400
    )
    assert_problem(
        await client.post("/whip/p2", content=b"\xff\xfe\x00", headers={**SDP, **tok}), 400
    )
    big = b"v=0\r\n" + b"a=x\r\n" * 20000
    assert_problem(await client.post("/whip/p2", content=big, headers={**SDP, **tok}), 413)
    recv_offer = await make_offer("recvonly")
    assert_problem(await client.post("/whip/p2", content=recv_offer, headers={**SDP, **tok}), 422)
    assert_problem(
        await client.post("/whip/bad%20room", content=offer, headers={**SDP, **tok}), 422
    )
    assert not server.gateway.anchors.sessions and len(server.gateway.stages) == 0


async def test_whip_options_cors(client: httpx.AsyncClient) -> None:
    resp = await client.options(
        "/whip/p3",
        headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status_code == 204
    assert resp.headers["accept-post"] == "application/sdp"
    assert resp.headers["access-control-allow-origin"] in ("*", "http://example.test")
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "Authorization" in resp.headers["access-control-allow-headers"]
    assert "Location" in resp.headers["access-control-expose-headers"]


async def test_whip_patch_trickle_and_refusals(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    tok = auth(server.anchor_token("p4"))
    resp = await client.post(
        "/whip/p4", content=await make_offer("sendonly"), headers={**SDP, **tok}
    )
    location, etag = resp.headers["location"], resp.headers["etag"]
    ufrag = next(
        line.split(":", 1)[1]
        for line in (await make_offer("sendonly")).splitlines()
        if line.startswith("a=ice-ufrag:")
    )
    offer_ufrag = None
    # the fragment must carry the ufrag of the session's offer (same ICE session)
    remote = server.call(
        lambda: server.gateway.anchors.sessions[location.rsplit("/", 1)[1]].pc.remoteDescription.sdp
    )
    offer_ufrag = next(
        line.split(":", 1)[1] for line in remote.splitlines() if line.startswith("a=ice-ufrag:")
    )
    frag = (
        f"a=ice-ufrag:{offer_ufrag}\na=ice-pwd:whatever\nm=video 9 UDP/TLS/RTP/SAVPF 0\na=mid:0\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\n"
    )
    trickle = {"Content-Type": "application/trickle-ice-sdpfrag", **tok}
    assert (
        await client.patch(location, content=frag, headers={**trickle, "If-Match": etag})
    ).status_code == 204
    assert_problem(await client.patch(location, content=frag, headers=trickle), 428)
    assert_problem(
        await client.patch(location, content=frag, headers={**trickle, "If-Match": '"wrong"'}), 412
    )
    restart = frag.replace(offer_ufrag, ufrag)
    assert_problem(
        await client.patch(location, content=restart, headers={**trickle, "If-Match": "*"}), 422
    )
    assert_problem(
        await client.patch(location, content=frag, headers={**tok, "If-Match": etag, **SDP}), 415
    )
    assert_problem(
        await client.patch(location, content="nonsense", headers={**trickle, "If-Match": etag}), 400
    )
    assert_problem(
        await client.patch("/whip/p4/nosuch", content=frag, headers={**trickle, "If-Match": etag}),
        404,
    )
    assert (await client.delete(location, headers=tok)).status_code == 200


async def test_whep_not_live_then_live(server: RunningServer, client: httpx.AsyncClient) -> None:
    offer = await make_offer("recvonly")
    resp = await client.post("/whep/w1", content=offer, headers=SDP)
    assert_problem(resp, 409)
    assert int(resp.headers["retry-after"]) >= 1
    head = await client.head("/whep/w1")
    assert head.status_code == 409 and "retry-after" in head.headers

    pub = await whip_publish(
        server.base_url, "w1", server.anchor_token("w1"), video=StampedVideoTrack(320, 180, 15)
    )
    try:
        head = await client.head("/whep/w1")
        assert head.status_code == 200 and head.headers["content-type"] == "application/sdp"
        resp = await client.post("/whep/w1", content=offer, headers=SDP)
        assert resp.status_code == 201, resp.text
        assert "a=sendonly" in resp.text and resp.headers["location"].startswith("/whep/w1/")
        assert_problem(
            await client.post("/whep/w1", content=offer, headers={"Content-Type": "text/plain"}),
            415,
        )
        assert_problem(await client.post("/whep/w1", content="v=0\nnope", headers=SDP), 400)
        send_offer = await make_offer("sendonly")
        assert_problem(await client.post("/whep/w1", content=send_offer, headers=SDP), 422)
        # audience token for another room is refused even though anonymous pulls are allowed
        assert_problem(
            await client.post(
                "/whep/w1", content=offer, headers={**SDP, **auth(server.audience_token("x"))}
            ),
            403,
        )
        assert (await client.delete(resp.headers["location"])).status_code == 200
        assert_problem(await client.delete(resp.headers["location"]), 404)
    finally:
        await pub.close()


async def test_whep_requires_token_when_anonymous_off() -> None:
    from tests.support.server import run_server

    with run_server(auth={"anonymous_audience": False}) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            offer = await make_offer("recvonly")
            assert_problem(await client.post("/whep/w2", content=offer, headers=SDP), 401)
            ok = await client.post(
                "/whep/w2", content=offer, headers={**SDP, **auth(server.audience_token("w2"))}
            )
            assert_problem(ok, 409)  # authorised, but nothing is live


async def test_viewer_that_never_connects_is_reaped() -> None:
    from tests.support.server import run_server

    with run_server(sessions={"connect_timeout": 1.0}) as server:
        pub = await whip_publish(
            server.base_url, "w3", server.anchor_token("w3"), video=StampedVideoTrack(320, 180, 15)
        )
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            # an offer whose peer never does ICE
            resp = await client.post("/whep/w3", content=await make_offer("recvonly"), headers=SDP)
            assert resp.status_code == 201
            assert len(server.gateway.viewers.sessions) == 1
            for _ in range(60):
                if not server.gateway.viewers.sessions:
                    break
                await asyncio.sleep(0.1)
            assert not server.gateway.viewers.sessions
        await pub.close()


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json()["status"] == "ready"
    assert_problem(await client.get("/nowhere"), 404)
