"""TURN through a real coturn (``use-auth-secret``) on loopback: a viewer whose only candidates are
relayed plays with the credential the gateway handed it (OPTIONS / 201 Link headers, RFC 9725
4.6); a wrong or an expired credential gets no allocation from coturn, so no candidate at all."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import re
import shutil
import time
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from gateway.settings import AuthSettings, ClusterSettings, Settings, TurnSettings
from gateway.synthetic import StampedVideoTrack, whip_publish
from relay.auth.tokens import TokenAuthority
from relay.auth.turn import turn_rest_password, turn_rest_username
from relay.cluster.registry import RoomPolicy
from relay.rtc.peer import close_quietly
from relay.server.edge import build_edge_node, create_edge_app
from tests.support.coturn import Coturn, run_coturn
from tests.support.server import run_server

SECRET = "turn-shared-secret-" + "y" * 24
SDP = {"Content-Type": "application/sdp"}
# the admission check's loop-lag gate off: a Chromium or coturn starting beside the in-process
# server on this 2-core machine can make one POST a 503, which is not what these tests are about
CALM = {"max_loop_lag": None}
_PARAM = re.compile(r';\s*([a-z-]+)="((?:[^"\\]|\\.)*)"')


def parse_ice_links(header: str) -> list[RTCIceServer]:
    """What a WHIP/WHEP client does with the Link header: one RTCIceServer per ice-server link."""
    servers = []
    for entry in re.split(r",\s*(?=<)", header):
        url = re.match(r"\s*<([^>]+)>", entry)
        params = dict(_PARAM.findall(entry))
        if url and params.get("rel") == "ice-server":
            servers.append(RTCIceServer(url[1], params.get("username"), params.get("credential")))
    return servers


def relay_only(server: RTCIceServer) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[server], iceTransportPolicy=RTCIceTransportPolicy.RELAY)


async def watch(
    base_url: str, room: str, config: RTCConfiguration
) -> tuple[RTCPeerConnection, str]:
    """A recvonly viewer; returns it once its POST is answered, and its offer's SDP."""
    pc = RTCPeerConnection(config)
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        resp = await client.post(f"/whep/{room}", content=offer, headers=SDP)
    assert resp.status_code == 201, resp.text
    # the 201 carries a fresh credential too, for this viewer's subject
    assert any(s.username for s in parse_ice_links(resp.headers["link"]))
    await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    return pc, offer


def candidate_types(sdp: str) -> set[str]:
    return set(re.findall(r"a=candidate:.* typ (\w+)", sdp))


def turn_settings(turn: Coturn) -> dict[str, object]:
    return {"urls": (turn.url,), "secret": turn.secret, "ttl": 600}


async def first_frame(pc: RTCPeerConnection, timeout: float) -> object:
    track = next(t.receiver.track for t in pc.getTransceivers() if t.receiver.track)
    return await asyncio.wait_for(track.recv(), timeout)


async def test_relay_only_viewer_plays_through_coturn() -> None:
    with run_coturn(SECRET) as turn, run_server(turn=turn_settings(turn), limits=CALM) as srv:
        pub = await whip_publish(
            srv.base_url, "turn1", srv.anchor_token("turn1"), video=StampedVideoTrack(320, 180, 15)
        )
        pc: RTCPeerConnection | None = None
        try:
            # RFC 9725 4.6: the endpoint's OPTIONS tells the ICE servers before the offer is made
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as client:
                options = await client.options("/whep/turn1")
            assert options.status_code == 204
            assert SECRET not in str(options.headers)
            (server,) = parse_ice_links(options.headers["link"])
            assert server.urls == turn.url and server.username and server.credential
            expiry, subject = str(server.username).split(":", 1)
            assert 590 <= int(expiry) - time.time() <= 601 and subject.startswith("anonymous-")

            pc, offer = await watch(srv.base_url, "turn1", relay_only(server))
            assert candidate_types(offer) == {"relay"}
            frame = await first_frame(pc, timeout=15)
            assert frame is not None
            assert pc.connectionState == "connected"
            assert "ALLOCATE processed, success" in turn.log_text()
        finally:
            if pc is not None:
                await close_quietly(pc)
            await pub.close()


async def test_wrong_or_expired_credentials_get_no_relay() -> None:
    with run_coturn(SECRET) as turn, run_server(turn=turn_settings(turn), limits=CALM) as srv:
        expired = turn_rest_username("late", int(time.time()) - 60)
        bad = [
            RTCIceServer(turn.url, expired, turn_rest_password(SECRET, expired)),
            RTCIceServer(turn.url, turn_rest_username("x", int(time.time()) + 600), "wrong"),
        ]
        for server in bad:
            pc = RTCPeerConnection(relay_only(server))
            try:
                pc.addTransceiver("video", direction="recvonly")
                await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 15)
                # coturn refused the allocation: a relay-only agent has no candidate to offer
                assert candidate_types(pc.localDescription.sdp) == set()
            finally:
                await close_quietly(pc)
        log = turn.log_text()
        assert "ALLOCATE processed, success" not in log
        for server in bad:  # coturn's own words: it refused each of them
            assert f"user <{server.username}>: incoming packet message processed, error 401" in log
        assert not srv.gateway.viewers.sessions


async def test_options_without_a_credential_for_a_private_endpoint_gets_no_turn() -> None:
    """An anchor endpoint's OPTIONS (a CORS preflight has no token) names the fixed URLs only:
    TURN credentials go to callers a POST would admit."""
    settings = {"urls": ("turn:127.0.0.1:3478",), "secret": SECRET}
    with run_server(turn=settings, ice_servers=("stun:127.0.0.1:3478",)) as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as client:
            anon = await client.options("/whip/r1")
            assert anon.headers["link"] == '<stun:127.0.0.1:3478>; rel="ice-server"'
            token = srv.anchor_token("r1")
            authed = await client.options("/whip/r1", headers={"Authorization": f"Bearer {token}"})
        servers = parse_ice_links(authed.headers["link"])
        assert [s.urls for s in servers] == ["stun:127.0.0.1:3478", "turn:127.0.0.1:3478"]
        assert str(servers[1].username).endswith(":test-anchor")
        assert servers[1].credential == turn_rest_password(SECRET, str(servers[1].username))
        assert SECRET not in str(authed.headers)


async def test_pages_config_gives_turn_only_to_token_holders_when_the_audience_needs_tokens() -> (
    None
):
    """/config.json must not make the TURN server an open relay: with anonymous viewing off, a
    caller without a token this node signed gets the fixed URLs only."""
    settings = {"urls": ("turn:127.0.0.1:3478",), "secret": SECRET}
    auth = {"anonymous_audience": False}
    with run_server(turn=settings, ice_servers=("stun:127.0.0.1:3478",), auth=auth) as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as client:
            anon = (await client.get("/config.json")).json()["iceServers"]
            forged = await client.get("/config.json", headers={"Authorization": "Bearer x.y.z"})
            token = srv.audience_token("any-room")
            authed = await client.get("/config.json", headers={"Authorization": f"Bearer {token}"})
        assert anon == [{"urls": ["stun:127.0.0.1:3478"]}]
        assert forged.json()["iceServers"] == anon
        servers = authed.json()["iceServers"]
        assert servers[1]["urls"] == ["turn:127.0.0.1:3478"]
        assert servers[1]["credential"] == turn_rest_password(SECRET, servers[1]["username"])


async def test_node_relay_offers_the_nodes_own_relayed_candidate() -> None:
    """``turn.node_relay``: the gateway's peers gather a relayed candidate of their own, with a
    credential issued to the node (subject ``node``) per peer."""
    with run_coturn(SECRET) as turn:
        settings = {**turn_settings(turn), "node_relay": True}
        # an ICE-lite answer on the node's one UDP port offers that port only: per-peer ports
        with run_server(turn=settings, limits=CALM, webrtc={"udp_port": 0}) as srv:
            pub = await whip_publish(
                srv.base_url, "turn2", srv.anchor_token("turn2"), video=StampedVideoTrack(320, 180)
            )
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as client:
                    resp = await client.post(
                        "/whep/turn2", content=pc.localDescription.sdp, headers=SDP
                    )
                assert resp.status_code == 201, resp.text
                assert "relay" in candidate_types(resp.text)
                await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
                assert await first_frame(pc, timeout=15) is not None
                allocations = re.findall(
                    r"user <(\d+):node>: incoming packet ALLOCATE processed, success",
                    turn.log_text(),
                )
                assert len(allocations) >= 2  # the anchor's peer and the viewer's peer
            finally:
                await close_quietly(pc)
                await pub.close()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_MISSING = importlib.util.find_spec("playwright") is None or not os.path.exists(CHROMIUM)
BROWSER_WATCH = """
async ([room]) => {
  const config = await (await fetch('/config.json')).json();
  const pc = new RTCPeerConnection({ iceServers: config.iceServers, iceTransportPolicy: 'relay' });
  window.pc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    const check = () => pc.iceGatheringState === 'complete' && done();
    pc.addEventListener('icegatheringstatechange', check);
    check();
    setTimeout(done, 8000);
  });
  const resp = await fetch('/whep/' + room, {
    method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
  });
  const answer = await resp.text();
  if (resp.status === 201) await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  return { status: resp.status, offer: pc.localDescription.sdp, body: answer };
}
"""
BROWSER_STATS = """
async () => {
  const stats = await window.pc.getStats();
  let frames = 0, local = null;
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
      local = stats.get(s.localCandidateId).candidateType;
    }
  });
  return { frames, local };
}
"""


@pytest.mark.browser
@pytest.mark.timeout(90)
async def test_chromium_relay_only_viewer_plays_with_the_pages_config() -> None:
    """A browser with ``iceTransportPolicy: "relay"`` and nothing but /config.json's iceServers
    (the TURN credential the gateway made for this request) plays through coturn."""
    if BROWSER_MISSING:
        if os.environ.get("CI"):
            raise RuntimeError("playwright or chromium missing; scripts/bootstrap installs them")
        pytest.skip("playwright or chromium missing (scripts/bootstrap)")
    playwright_api: Any = importlib.import_module("playwright.async_api")
    with run_coturn(SECRET) as turn, run_server(turn=turn_settings(turn), limits=CALM) as srv:
        pub = await whip_publish(
            srv.base_url, "turn3", srv.anchor_token("turn3"), video=StampedVideoTrack(320, 180, 15)
        )
        try:
            async with playwright_api.async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM,
                    args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
                    timeout=20_000,
                )
                try:
                    page = await browser.new_page()
                    await page.goto(srv.base_url + "/healthz")  # same origin as the endpoint
                    got = await page.evaluate(BROWSER_WATCH, ["turn3"])
                    assert got["status"] == 201, got
                    assert candidate_types(got["offer"]) == {"relay"}
                    deadline = time.monotonic() + 20
                    stats = await page.evaluate(BROWSER_STATS)
                    while stats["frames"] < 5:
                        assert time.monotonic() < deadline, stats
                        await asyncio.sleep(0.2)
                        stats = await page.evaluate(BROWSER_STATS)
                    assert stats["local"] == "relay"
                finally:
                    await browser.close()
            assert re.search(
                r"user <\d+:page>: incoming packet ALLOCATE processed, success", turn.log_text()
            )
        finally:
            await pub.close()


@pytest.mark.timeout(30)
async def test_edge_hands_out_turn_credentials_like_the_origin() -> None:
    """A relay edge's WHEP endpoint OPTIONS carries the same kind of credential, for the
    viewer's subject; a private room's OPTIONS without a token gets the fixed URLs only."""
    token_secret = "edge-token-secret-" + "z" * 30
    settings = Settings(
        auth=AuthSettings(token_secret=token_secret, anonymous_audience=True),
        cluster=ClusterSettings(role="edge", upstream="http://origin.test:8080"),
        ice_servers=("stun:stun.example.net:3478",),
        turn=TurnSettings(urls=("turn:turn.example.net:3478",), secret=SECRET, ttl=300),
    )
    node = build_edge_node(settings)
    node.cluster.policies["secret"] = RoomPolicy("secret", private=True)
    app = create_edge_app(node)  # its ICE servers (TURN included) from node.settings
    token = TokenAuthority(token_secret).mint("secret", "audience", "viewer-7", 60)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as c:
        public = parse_ice_links((await c.options("/whep/public")).headers["link"])
        private = (await c.options("/whep/secret")).headers["link"]
        authed = await c.options("/whep/secret", headers={"Authorization": f"Bearer {token}"})
    assert [s.urls for s in public] == ["stun:stun.example.net:3478", "turn:turn.example.net:3478"]
    assert str(public[1].username).split(":", 1)[1].startswith("anonymous-")
    assert private == '<stun:stun.example.net:3478>; rel="ice-server"'
    (_, turn) = parse_ice_links(authed.headers["link"])
    assert str(turn.username).endswith(":viewer-7")
    assert turn.credential == turn_rest_password(SECRET, str(turn.username))
