"""Operator API over a real uvicorn: every route and its refusals as problem+json."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whep_watch, whip_publish
from tests.live.test_live_path import wait_for
from tests.live.test_protocol import SDP, assert_problem, make_offer
from tests.support.server import RunningServer, run_server


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.gateway.operator_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as c:
        yield c


async def test_operator_key_required(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        assert_problem(await c.get("/v1/rooms"), 401)
        assert_problem(await c.get("/v1/rooms", headers={"X-API-Key": "wrong-key-wrong-key"}), 401)
        ok = await c.get("/v1/rooms", headers={"X-API-Key": server.gateway.operator_key})
        assert ok.status_code == 200 and ok.json() == []


async def test_room_lifecycle_and_validation(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/rooms", json={"name": "show", "max_viewers": 2})
    assert resp.status_code == 201 and resp.headers["location"] == "/v1/rooms/show"
    room = resp.json()
    assert room["name"] == "show" and room["max_viewers"] == 2 and not room["live"]
    assert_problem(await api.post("/v1/rooms", json={"name": "show"}), 409)
    assert_problem(await api.post("/v1/rooms", json={"name": "bad name"}), 422)
    assert_problem(await api.post("/v1/rooms", json={"name": "x", "bogus": 1}), 422)
    assert_problem(
        await api.post(
            "/v1/rooms", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        422,
    )
    assert [r["name"] for r in (await api.get("/v1/rooms")).json()] == ["show"]
    assert (await api.get("/v1/rooms/show")).json()["persistent"] is True
    assert_problem(await api.get("/v1/rooms/nope"), 404)
    assert (await api.delete("/v1/rooms/show")).status_code == 204
    assert_problem(await api.delete("/v1/rooms/show"), 404)


async def test_tokens_minted_by_api_work(server: RunningServer, api: httpx.AsyncClient) -> None:
    resp = await api.post(
        "/v1/tokens", json={"room": "t1", "role": "anchor", "subject": "amy", "ttl": 60}
    )
    assert resp.status_code == 201
    body = resp.json()
    assert body["url"].endswith("/whip/t1")
    claims = server.gateway.tokens.verify(body["token"], room="t1", role="anchor")
    assert claims.subject == "amy"
    assert_problem(
        await api.post("/v1/tokens", json={"room": "t1", "role": "admin", "subject": "x"}), 422
    )
    assert_problem(
        await api.post(
            "/v1/tokens", json={"room": "t1", "role": "anchor", "subject": "x", "ttl": 1}
        ),
        422,
    )


@pytest.mark.timeout(60)
async def test_live_stats_viewers_mute_and_kick(
    server: RunningServer, api: httpx.AsyncClient
) -> None:
    room = "op1"
    tok = server.anchor_token(room)
    pub = await whip_publish(
        server.base_url, room, tok, video=StampedVideoTrack(640, 360, 30), audio=ToneAudioTrack()
    )
    viewer = await whep_watch(server.base_url, room)
    assert await wait_for(lambda: viewer.video_frames > 30, 10)
    await asyncio.sleep(2.1)  # a full stats window

    stream = (await api.get(f"/v1/rooms/{room}/stream")).json()
    assert stream["live"] and stream["viewers"] == 1
    assert (stream["width"], stream["height"]) == (640, 360)
    assert stream["video"]["codec"] in ("H264", "VP8") and 20 <= stream["video"]["fps"] <= 35
    assert stream["video"]["bitrate_bps"] > 50_000 and stream["audio"]["codec"] == "opus"
    assert 0 < stream["fanout_cpu_s"] < stream["uptime_s"]  # this node's sending, counted
    assert [s["room"] for s in (await api.get("/v1/streams")).json()] == [room]

    viewers = (await api.get(f"/v1/rooms/{room}/viewers")).json()
    assert viewers["count"] == 1 and viewers["viewers"][0]["frames_sent"] > 30

    anchors = (await api.get(f"/v1/rooms/{room}/anchors")).json()
    assert len(anchors) == 1 and anchors[0]["subject"] == "test-anchor" and anchors[0]["connected"]
    anchor_id = anchors[0]["id"]
    room_view = (await api.get(f"/v1/rooms/{room}")).json()
    assert room_view["live"] and room_view["viewers"] == 1

    # mute audio: the viewer's audio stops while video goes on
    muted = await api.post(f"/v1/rooms/{room}/anchors/{anchor_id}/mute", json={"audio": True})
    assert muted.json()["muted"] == ["audio"]
    await asyncio.sleep(0.3)
    a0, v0 = viewer.audio_frames, viewer.video_frames
    await asyncio.sleep(1.0)
    assert viewer.audio_frames - a0 <= 2 and viewer.video_frames - v0 >= 10
    await api.post(f"/v1/rooms/{room}/anchors/{anchor_id}/mute", json={"audio": False})
    a1 = viewer.audio_frames
    assert await wait_for(lambda: viewer.audio_frames - a1 > 20, 5)

    assert_problem(await api.delete(f"/v1/rooms/{room}/anchors/nosuch"), 404)
    assert_problem(
        await api.post(f"/v1/rooms/{room}/anchors/{anchor_id}/mute", json={"audio": "loud"}), 422
    )

    # kick: the anchor's session ends, its viewers see the end, its token no longer works
    assert (await api.delete(f"/v1/rooms/{room}/anchors/{anchor_id}")).status_code == 204
    await asyncio.wait_for(viewer.ended.wait(), 10)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        again = await c.post(
            f"/whip/{room}",
            content=await make_offer("sendonly"),
            headers={**SDP, "Authorization": f"Bearer {tok}"},
        )
        assert_problem(again, 401)
    await viewer.close()
    await pub.close()


@pytest.mark.timeout(60)
async def test_private_room_and_viewer_limits() -> None:
    with run_server(rooms={"max_viewers_per_node": 3}) as server:
        headers = {"X-API-Key": server.gateway.operator_key}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as api:
            await api.post("/v1/rooms", json={"name": "vip", "private": True, "max_viewers": 1})
            pub = await whip_publish(
                server.base_url,
                "vip",
                server.anchor_token("vip"),
                video=StampedVideoTrack(320, 180, 15),
            )
            offer = await make_offer("recvonly")
            assert_problem(await api.post("/whep/vip", content=offer, headers=SDP), 401)
            tok = {"Authorization": f"Bearer {server.audience_token('vip')}"}
            first = await api.post("/whep/vip", content=offer, headers={**SDP, **tok})
            assert first.status_code == 201
            full = await api.post("/whep/vip", content=offer, headers={**SDP, **tok})
            assert_problem(full, 503)
            assert "retry-after" in full.headers
            await pub.close()


async def test_rooms_must_exist_when_auto_create_off() -> None:
    with run_server(rooms={"auto_create": False}) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            resp = await c.post(
                "/whip/ghost",
                content=await make_offer("sendonly"),
                headers={**SDP, "Authorization": f"Bearer {server.anchor_token('ghost')}"},
            )
            assert_problem(resp, 404)


@pytest.mark.timeout(30)
async def test_nodes_single_node_lists_itself(
    server: RunningServer, api: httpx.AsyncClient
) -> None:
    """Single-node mode (in-memory registry): /v1/nodes is this node, from its own heartbeat."""
    cluster = server.gateway.cluster
    assert cluster is not None
    nodes = (await api.get("/v1/nodes")).json()
    assert len(nodes) == 1
    me = nodes[0]
    assert me["id"] == server.gateway.node_id and me["url"] == server.base_url
    assert me["role"] == "origin" and me["local"] is True
    assert me["state"] == "up" and me["draining"] is False
    assert me["upstream"] == "" and me["rooms"] == [] and me["anchors"] == 0
    assert me["viewers"] == 0 and me["egress_bps"] == 0
    assert 0 <= me["heartbeat_age_s"] <= server.settings.cluster.node_ttl
    # an anchor goes live: the next heartbeat carries it (room served, one anchor)
    pub = await whip_publish(
        server.base_url, "n1", server.anchor_token("n1"), video=StampedVideoTrack(160, 96, 10)
    )
    try:

        async def listed() -> dict[str, object]:
            got: dict[str, object] = (await api.get("/v1/nodes")).json()[0]
            return got

        deadline = asyncio.get_running_loop().time() + 5
        while (got := await listed())["rooms"] != ["n1"] or got["anchors"] != 1:
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.1)
    finally:
        await pub.close()
    # draining shows as such
    asyncio.run_coroutine_threadsafe(cluster.set_draining(True), server.loop).result(5)
    try:
        me = (await api.get("/v1/nodes")).json()[0]
        assert me["state"] == "draining" and me["draining"] is True
    finally:
        asyncio.run_coroutine_threadsafe(cluster.set_draining(False), server.loop).result(5)


async def test_signalling_rate_limit_and_body_limit() -> None:
    with run_server(
        limits={"session_posts_per_second": 0.5, "session_post_burst": 3, "max_body_bytes": 8192}
    ) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            offer = await make_offer("recvonly")
            codes = [
                (await c.post("/whep/rl", content=offer, headers=SDP)).status_code for _ in range(5)
            ]
            assert codes[:3] == [409, 409, 409]  # allowed through (nothing live)
            limited = await c.post("/whep/rl", content=offer, headers=SDP)
            assert_problem(limited, 429)
            assert int(limited.headers["retry-after"]) >= 1
            # other routes are not rate limited
            assert (await c.get("/healthz")).status_code == 200
            headers = {"X-API-Key": server.gateway.operator_key, "Content-Type": "application/json"}
            big = b'{"name": "' + b"a" * 10000 + b'"}'
            assert_problem(await c.post("/v1/rooms", content=big, headers=headers), 413)

            async def chunks():  # type: ignore[no-untyped-def]
                for _ in range(10):
                    yield b" " * 1000

            assert_problem(await c.post("/v1/rooms", content=chunks(), headers=headers), 413)
            ok = await c.post("/v1/rooms", json={"name": "fine"}, headers=headers)
            assert ok.status_code == 201


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or line.startswith(name + "_total" + labels + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in metrics")


@pytest.mark.timeout(60)
async def test_metrics_rise_during_a_live_stream(server: RunningServer) -> None:
    key = {"Authorization": f"Bearer {server.gateway.operator_key}"}  # /metrics is not public
    async with httpx.AsyncClient(base_url=server.base_url, headers=key, timeout=10) as c:
        first = (await c.get("/metrics")).text
        assert metric(first, "stagecast_anchors") == 0
        assert metric(first, "stagecast_egress_bytes") == 0
        pub = await whip_publish(
            server.base_url, "m1", server.anchor_token("m1"), video=StampedVideoTrack(320, 180, 30)
        )
        viewer = await whep_watch(server.base_url, "m1", kinds=("video",), decode=False)
        assert await wait_for(lambda: viewer.video_frames > 10, 10)
        mid = await c.get("/metrics")
        assert mid.headers["content-type"].startswith("text/plain")
        b1 = metric(mid.text, "stagecast_egress_bytes")
        assert metric(mid.text, "stagecast_viewers", '{room="m1"}') == 1
        assert metric(mid.text, "stagecast_anchors") == 1
        assert metric(mid.text, "stagecast_keyframe_requests") >= 1
        await asyncio.sleep(1.0)
        later = (await c.get("/metrics")).text
        assert metric(later, "stagecast_egress_bytes") > b1 > 0
        assert metric(later, "stagecast_egress_packets") > 0
        assert metric(later, "stagecast_fanout_cpu_seconds", '{room="m1"}') > 0
        assert metric(later, "stagecast_gc_pause_max_seconds", '{generation="0"}') >= 0
        assert metric(later, "stagecast_event_loop_lag_seconds") < 1
        await viewer.close()
        await pub.close()
        assert await wait_for(lambda: not server.gateway.anchors.sessions, 10)
        end = (await c.get("/metrics")).text
        assert metric(end, "stagecast_egress_bytes") >= metric(later, "stagecast_egress_bytes")
        assert metric(end, "stagecast_anchor_sessions") == 1


@pytest.mark.timeout(60)
async def test_status_command_prints_live_rooms(server: RunningServer) -> None:
    import subprocess
    import sys

    pub = await whip_publish(
        server.base_url, "st1", server.anchor_token("st1"), video=StampedVideoTrack(320, 180, 15)
    )
    assert await wait_for(lambda: server.gateway.stages.live_hub("st1") is not None, 5)
    await asyncio.sleep(0.5)
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "status",
        "--url",
        server.base_url,
        "--key",
        server.gateway.operator_key,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"COLUMNS": "200", "PATH": ""}
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "st1" in text and "test-anchor" in text and "yes" in text
    bad = await asyncio.create_subprocess_exec(
        *cmd[:-1], "wrong-key-wrong-key", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, _ = await asyncio.wait_for(bad.communicate(), 30)
    assert bad.returncode != 0
    await pub.close()


@pytest.mark.timeout(60)
async def test_overloaded_node_refuses_new_viewers_only() -> None:
    """A late event loop (here: blocked 0.4 s) answers new viewers 503 + Retry-After for a few
    seconds; the viewer already watching keeps its stream."""
    with run_server(limits={"max_loop_lag": 0.2, "max_loop_busy": None}) as server:
        room = "busy"
        pub = await whip_publish(
            server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(320, 180, 15)
        )
        watching = await whep_watch(server.base_url, room, kinds=("video",))
        try:
            assert await wait_for(lambda: len(watching.samples) > 5, 10)
            server.loop.call_soon_threadsafe(time.sleep, 0.4)  # the loop falls behind
            await asyncio.sleep(0.8)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
                offer = await make_offer("recvonly")
                busy = await c.post(f"/whep/{room}", content=offer, headers=SDP)
                assert_problem(busy, 503)
                assert "overloaded" in busy.json()["detail"]
                assert "retry-after" in busy.headers
            seen = len(watching.samples)
            assert await wait_for(lambda: len(watching.samples) > seen + 5, 10)
            await asyncio.sleep(3.0)  # out of the lag window: admitted again
            again = await whep_watch(server.base_url, room, kinds=("video",))
            await again.close()
        finally:
            await watching.close()
            await pub.close()
