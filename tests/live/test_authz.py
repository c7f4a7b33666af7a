"""Who may end, patch or probe what: a session belongs to its token's subject (or the operator),
HEAD /whep needs what POST needs. Real uvicorn, real offers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from aiortc import RTCPeerConnection

from gateway.launcher import free_port, free_udp_port
from gateway.settings import ApiSettings, AuthSettings, ClusterSettings, Settings
from gateway.synthetic import StampedVideoTrack, whip_publish
from relay.auth.tokens import TokenAuthority
from relay.cluster.edge import EdgeConfig, EdgeService
from relay.cluster.link import LinkConfig
from relay.cluster.registry import NodeRecord, RoomPolicy
from relay.media.stream_key import StreamKey
from relay.rtc.peer import close_quietly, rtc_configuration
from relay.server.edge import build_edge_node, create_edge_app
from tests.support.server import SECRET, RunningServer, run_server

SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}
FRAG = "a=ice-ufrag:abcd\na=ice-pwd:whatever\nm=video 9 UDP/TLS/RTP/SAVPF 0\na=mid:0\n"


async def make_offer(direction: str) -> str:
    pc = RTCPeerConnection(rtc_configuration(()))
    for kind in ("video", "audio"):
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await close_quietly(pc)
    return sdp


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    return str(resp.json()["detail"])


@pytest.mark.timeout(60)
async def test_an_anchor_cannot_end_or_patch_a_cohosts_session(server: RunningServer) -> None:
    gw = server.gateway
    room = "cohost"
    alice = gw.tokens.mint(room, "anchor", "alice", 60)
    bob = gw.tokens.mint(room, "anchor", "bob", 60)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        a = await c.post(
            f"/whip/{room}", content=await make_offer("sendonly"), headers={**SDP, **bearer(alice)}
        )
        b = await c.post(
            f"/whip/{room}", content=await make_offer("sendonly"), headers={**SDP, **bearer(bob)}
        )
        assert a.status_code == 201 and b.status_code == 201, (a.text, b.text)
        a_url, a_etag = a.headers["location"], a.headers["etag"]
        detail = assert_problem(await c.delete(a_url, headers=bearer(bob)), 403)
        assert "subject" in detail
        assert_problem(await c.delete(f"{a_url}?access_token={bob}"), 403)
        patch = {**TRICKLE, **bearer(bob), "If-Match": a_etag}
        assert_problem(await c.patch(a_url, content=FRAG, headers=patch), 403)
        assert len(gw.anchors.sessions) == 2
        # the operator key ends any session; the owner ends its own
        op = bearer(gw.operator_key)
        assert (await c.delete(a_url, headers=op)).status_code == 200
        assert (await c.delete(b.headers["location"], headers=bearer(bob))).status_code == 200
        assert not gw.anchors.sessions


@pytest.mark.timeout(60)
async def test_a_viewer_cannot_end_another_viewers_session(server: RunningServer) -> None:
    gw = server.gateway
    room = "audience"
    pub = await whip_publish(
        server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(160, 96, 15)
    )
    try:
        v1 = gw.tokens.mint(room, "audience", "viewer-1", 60)
        v2 = gw.tokens.mint(room, "audience", "viewer-2", 60)
        anchor = server.anchor_token(room)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            offer = await make_offer("recvonly")
            one = await c.post(f"/whep/{room}", content=offer, headers={**SDP, **bearer(v1)})
            assert one.status_code == 201, one.text
            url = one.headers["location"]
            assert_problem(await c.delete(url, headers=bearer(v2)), 403)
            assert_problem(await c.delete(url, headers=bearer(anchor)), 403)  # other subject
            patch = {**TRICKLE, **bearer(v2), "If-Match": one.headers["etag"]}
            assert_problem(await c.patch(url, content=FRAG, headers=patch), 403)
            assert len(gw.viewers.sessions) == 1
            assert (await c.delete(url, headers=bearer(v1))).status_code == 200
            # an anonymous viewer's session: its URL is its key
            anon = await c.post(f"/whep/{room}", content=offer, headers=SDP)
            assert anon.status_code == 201, anon.text
            assert (await c.delete(anon.headers["location"])).status_code == 200
            assert not gw.viewers.sessions
    finally:
        await pub.close()


@pytest.mark.timeout(60)
async def test_head_needs_the_credential_post_needs() -> None:
    with run_server() as server:
        gw = server.gateway
        op = bearer(gw.operator_key)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            assert (
                await c.post("/v1/rooms", json={"name": "secret", "private": True}, headers=op)
            ).status_code == 201
            # not live: anonymous HEAD must not tell (401, like an anonymous POST)
            assert (await c.head("/whep/secret")).status_code == 401
            assert (
                await c.head("/whep/secret", headers=bearer(server.audience_token("secret")))
            ).status_code == 409
            pub = await whip_publish(
                server.base_url,
                "secret",
                server.anchor_token("secret"),
                video=StampedVideoTrack(160, 96, 15),
            )
            try:
                assert (await c.head("/whep/secret")).status_code == 401
                tok = server.audience_token("secret")
                assert (await c.head(f"/whep/secret?access_token={tok}")).status_code == 200
                other = server.audience_token("elsewhere")
                assert (await c.head("/whep/secret", headers=bearer(other))).status_code == 403
                # a public room stays open to anonymous probes while anonymous viewers are allowed
                assert (await c.head("/whep/public")).status_code == 409
            finally:
                await pub.close()
    with run_server(auth={"anonymous_audience": False}) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            assert (await c.head("/whep/public")).status_code == 401
            ok = await c.head("/whep/public", headers=bearer(server.audience_token("public")))
            assert ok.status_code == 409


@pytest.mark.timeout(30)
async def test_edge_head_follows_the_rooms_policy() -> None:
    """An edge answers HEAD as it answers POST: a private room's liveness needs a token."""
    node = build_edge_node(
        Settings(
            auth=AuthSettings(token_secret=SECRET, anonymous_audience=True),
            cluster=ClusterSettings(role="edge", upstream="http://origin.test:8080"),
        )
    )
    node.cluster.policies["secret"] = RoomPolicy("secret", private=True)
    app = create_edge_app(node)
    tokens = TokenAuthority(SECRET)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as c:
        assert (await c.head("/whep/secret")).status_code == 401
        tok = tokens.mint("secret", "audience", "v", 60)
        assert (await c.head("/whep/secret", headers=bearer(tok))).status_code == 409
        assert (await c.head("/whep/public")).status_code == 409


@pytest.mark.timeout(60)
async def test_edge_liveness_probe_carries_its_link_token() -> None:
    """An edge whose pull goes quiet asks its upstream (HEAD) whether the stream still lives;
    with anonymous viewers off there, the probe must carry the edge's token or every quiet
    moment would end the pull."""
    with run_server(auth={"anonymous_audience": False}) as server:
        room = "probe"
        pub = await whip_publish(
            server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(160, 96, 15)
        )
        edge = EdgeService(
            EdgeConfig(LinkConfig(upstream=server.base_url, node_id="edge-1")),
            TokenAuthority(SECRET),
        )
        try:
            assert await edge._upstream_live(StreamKey(room))
            assert not await edge._upstream_live(StreamKey("absent"))
        finally:
            await edge.shutdown()
            await pub.close()


@pytest.mark.timeout(60)
async def test_hls_files_do_not_tell_whether_a_private_room_has_a_bridge() -> None:
    """HLS media files need no token (their names are unguessable), so a miss must answer the
    same whether the room has an HLS bridge or not: else anonymous probes learn that a private
    room is live."""
    with run_server() as server:
        op = bearer(server.gateway.operator_key)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            for name in ("secret", "other"):
                made = await c.post("/v1/rooms", json={"name": name, "private": True}, headers=op)
                assert made.status_code == 201
            pub = await whip_publish(
                server.base_url,
                "secret",
                server.anchor_token("secret"),
                video=StampedVideoTrack(160, 96, 15),
            )
            try:
                hls = await c.post("/v1/rooms/secret/bridges", json={"kind": "hls"}, headers=op)
                assert hls.status_code == 201, hls.text
                with_bridge = await c.get("/hls/secret/guess.m4s")
                without = await c.get("/hls/other/guess.m4s")
                assert with_bridge.status_code == without.status_code == 404
                assert with_bridge.json()["detail"] == without.json()["detail"]
                assert (await c.get("/hls/secret/index.m3u8")).status_code == 401
            finally:
                await c.delete("/v1/rooms/secret/bridges", headers=op)
                await pub.close()


@pytest.mark.timeout(30)
async def test_edge_ops_views_name_no_room_without_the_operator_key() -> None:
    """An edge's /cluster lists room policies (which rooms are private) and pulls: an ops view,
    behind the operator key like the origin's /v1; /readyz (probes) names no room."""
    key = "edge-operator-key-0123456789"
    node = build_edge_node(
        Settings(
            auth=AuthSettings(token_secret=SECRET),
            api=ApiSettings(operator_key=key),
            cluster=ClusterSettings(role="edge", upstream="http://origin.test:8080"),
        )
    )
    node.cluster.policies["secret"] = RoomPolicy("secret", private=True)
    app = create_edge_app(node, ops_keys=(key,))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as c:
        anon = await c.get("/cluster")
        assert anon.status_code == 401 and "secret" not in anon.text
        ok = await c.get("/cluster", headers=bearer(key))
        assert ok.status_code == 200 and "secret" in ok.json()["room_policies"]
        assert (await c.get("/cluster", headers={"X-API-Key": key})).status_code == 200
        ready = await c.get("/readyz")
        assert isinstance(ready.json()["pulls"], int)


@pytest.mark.timeout(60)
def test_relay_process_guards_its_cluster_view(tmp_path: Path) -> None:
    port = free_port()
    key = "relay-operator-key-0123456789"
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": key,
    }
    env.pop("STAGECAST_CONFIG", None)
    cmd = [sys.executable, "-m", "gateway.cli", "relay", "--upstream", "http://127.0.0.1:9"]
    cmd += ["--udp-port", str(free_udp_port())]
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert httpx.get(base + "/cluster").status_code == 401
        assert httpx.get(base + "/cluster", headers=bearer(key)).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.timeout(30)
async def test_origin_routes_a_viewer_only_after_authorizing_it() -> None:
    """The origin's 307 goes to the edge already pulling a room: sent before authorization, it
    told anonymous callers which private rooms are live (and where). Authorize first, as an edge
    does."""
    with run_server() as server:
        gw = server.gateway
        cluster = gw.cluster
        assert cluster is not None
        puller = NodeRecord(
            id="puller", url="http://puller:8080", role="edge", rooms=("secret",), max_viewers=99
        )

        async def seed() -> None:
            await cluster.registry.heartbeat(puller, ttl=30)
            cluster.view = await cluster.registry.nodes()

        asyncio.run_coroutine_threadsafe(seed(), server.loop).result(5)
        op = bearer(gw.operator_key)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            made = await c.post("/v1/rooms", json={"name": "secret", "private": True}, headers=op)
            assert made.status_code == 201
            for query in ("", "?access_token=forged"):
                r = await c.post(f"/whep/secret{query}", content="v=0", headers=SDP)
                assert r.status_code == 401, (query, r.status_code, r.headers.get("location"))
            tok = server.audience_token("secret")
            r = await c.post("/whep/secret", content="v=0", headers={**SDP, **bearer(tok)})
            assert r.status_code == 307 and r.headers["location"].startswith("http://puller:8080/")
