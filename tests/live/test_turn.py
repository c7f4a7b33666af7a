"""TURN through a real coturn (``use-auth-secret``) on loopback: a viewer whose only candidates are
relayed plays with the credential the gateway handed it (OPTIONS / 201 Link headers, RFC 9725
4.6); a wrong or an expired credential gets no allocation from coturn, so no candidate at all."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from gateway.synthetic import StampedVideoTrack, whip_publish
from relay.auth.turn import turn_rest_password, turn_rest_username
from relay.rtc.peer import close_quietly
from tests.support.coturn import Coturn, run_coturn
from tests.support.server import run_server

SECRET = "turn-shared-secret-" + "y" * 24
SDP = {"Content-Type": "application/sdp"}
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
    with run_coturn(SECRET) as turn, run_server(turn=turn_settings(turn)) as srv:
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
    with run_coturn(SECRET) as turn, run_server(turn=turn_settings(turn)) as srv:
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


async def test_node_relay_offers_the_nodes_own_relayed_candidate() -> None:
    """``turn.node_relay``: the gateway's peers gather a relayed candidate of their own, with a
    credential issued to the node (subject ``node``) per peer."""
    with run_coturn(SECRET) as turn:
        settings = {**turn_settings(turn), "node_relay": True}
        with run_server(turn=settings) as srv:
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
