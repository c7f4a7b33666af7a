"""Room messages over real sockets: a real uvicorn (origin), an in-process edge with a real
Redis, WebSocket clients from the ``websockets`` package."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.support.edge_server import run_edge
from tests.support.redis_server import run_redis
from tests.support.server import RunningServer, run_server


def ws_url(base: str, room: str, token: str | None = None) -> str:
    url = base.replace("http://", "ws://") + f"/rooms/{room}/messages"
    return url + (f"?access_token={token}" if token else "")


@asynccontextmanager
async def member(base: str, room: str, token: str | None) -> AsyncIterator[ClientConnection]:
    async with connect(ws_url(base, room, token), open_timeout=5) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome", welcome
        yield ws


async def next_of(ws: ClientConnection, kind: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            msg: dict[str, Any] = json.loads(await ws.recv())
            if msg["type"] == kind:
                return msg


async def close_code(url: str, send: str | None = None) -> int:
    async with connect(url, open_timeout=5, max_size=None) as ws:
        if send is not None:
            await ws.send(send)
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def op(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.gateway.operator_key}"}


@pytest.mark.timeout(60)
async def test_two_members_get_each_others_messages(server: RunningServer) -> None:
    gw, room = server.gateway, "chat"
    alice = gw.tokens.mint(room, "audience", "alice", 60)
    host = gw.tokens.mint(room, "anchor", "host", 60)
    async with (
        member(server.base_url, room, alice) as a,
        member(server.base_url, room, host) as h,
        member(server.base_url, room, None) as anon,
    ):
        await a.send(json.dumps({"type": "chat", "text": "hello from alice"}))
        for ws in (a, h, anon):
            msg = await next_of(ws, "chat")
            assert msg["text"] == "hello from alice"
            assert msg["from"] == {"subject": "alice", "role": "audience"}
        await h.send(json.dumps({"type": "command", "name": "gift.rose", "data": {"n": 1}}))
        cmd = await next_of(a, "command")
        assert (cmd["name"], cmd["data"], cmd["from"]["role"]) == ("gift.rose", {"n": 1}, "anchor")
        # the audience may not send commands; an anonymous viewer reads only (default mode)
        await a.send(json.dumps({"type": "command", "name": "x"}))
        assert (await next_of(a, "error"))["status"] == 403
        await anon.send(json.dumps({"type": "chat", "text": "hi"}))
        assert (await next_of(anon, "error"))["status"] == 403
        # the operator's system message reaches everyone
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as c:
            r = await c.post(
                f"/v1/rooms/{room}/messages", json={"text": "welcome"}, headers=op(server)
            )
            assert r.status_code == 202, r.text
            r = await c.post(f"/v1/rooms/{room}/messages", json={"text": "x"})
            assert r.status_code == 401
        for ws in (a, h, anon):
            assert (await next_of(ws, "system"))["text"] == "welcome"


@pytest.mark.timeout(60)
async def test_an_oversized_message_closes_with_1009_and_others_go_on(
    server: RunningServer,
) -> None:
    gw, room = server.gateway, "big"
    bob = gw.tokens.mint(room, "audience", "bob", 60)
    carol = gw.tokens.mint(room, "audience", "carol", 60)
    async with member(server.base_url, room, carol) as c:
        big = json.dumps({"type": "chat", "text": "x" * 5000})
        assert await close_code(ws_url(server.base_url, room, bob), big) == 1009
        # a chat line over the text limit (but within the frame) is refused with 413, socket open
        await c.send(json.dumps({"type": "chat", "text": "y" * 600}))
        assert (await next_of(c, "error"))["status"] == 413
        await c.send(json.dumps({"type": "chat", "text": "still here"}))
        assert (await next_of(c, "chat"))["text"] == "still here"


@pytest.mark.timeout(60)
async def test_tokens_of_another_room_or_forged_are_refused(server: RunningServer) -> None:
    gw = server.gateway
    other = gw.tokens.mint("other-room", "audience", "mallory", 60)
    assert await close_code(ws_url(server.base_url, "target", other)) == 4403
    assert await close_code(ws_url(server.base_url, "target", "not-a-token")) == 4401
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as c:
        r = await c.post("/v1/rooms", json={"name": "vip", "private": True}, headers=op(server))
        assert r.status_code == 201
    assert await close_code(ws_url(server.base_url, "vip", None)) == 4401  # no anonymous


def bearer_protocols(token: str) -> list[Subprotocol]:
    """What the pages offer (util.js openChannel): the token in a subprotocol, not the URL."""
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return [Subprotocol("stagecast"), Subprotocol(f"stagecast.bearer.{encoded}")]


@pytest.mark.timeout(60)
async def test_credentials_ride_the_subprotocol_header_not_the_url(server: RunningServer) -> None:
    gw, room = server.gateway, "sub"
    url = ws_url(server.base_url, room)
    tok = gw.tokens.mint(room, "anchor", "host", 60)
    async with connect(url, subprotocols=bearer_protocols(tok), open_timeout=5) as ws:
        assert ws.subprotocol == "stagecast"  # a browser drops a socket that picks none
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome" and welcome["you"]["role"] == "anchor", welcome
    async with connect(url, subprotocols=bearer_protocols(gw.operator_key), open_timeout=5) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["you"]["role"] == "operator"
    # refusals still reach the page as close codes (the subprotocol is picked before closing)
    other = gw.tokens.mint("elsewhere", "anchor", "x", 60)
    for protocols, code in (
        (bearer_protocols(other), 4403),
        (bearer_protocols("forged"), 4401),
        ([Subprotocol("stagecast"), Subprotocol("stagecast.bearer.%%%")], 4401),
    ):
        async with connect(url, subprotocols=protocols, open_timeout=5) as ws:
            assert ws.subprotocol == "stagecast"
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(5):
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == code


@pytest.mark.timeout(60)
async def test_a_flood_of_likes_is_counted_limited_and_slows_nothing_else(
    server: RunningServer,
) -> None:
    gw, room = server.gateway, "likes"
    flooder = gw.tokens.mint(room, "audience", "flooder", 60)
    calm = gw.tokens.mint(room, "audience", "calm", 60)
    async with (
        member(server.base_url, room, flooder) as f,
        member(server.base_url, room, calm) as c,
    ):
        updates: list[dict[str, Any]] = []
        echoes: list[float] = []
        errors: list[dict[str, Any]] = []

        async def flood() -> None:
            for _ in range(3000):
                await f.send('{"type":"like"}')

        async def drain_flooder() -> None:
            with pytest.raises((TimeoutError, ConnectionClosed)):
                async with asyncio.timeout(4):
                    while True:
                        msg = json.loads(await f.recv())
                        if msg["type"] == "error":
                            errors.append(msg)

        async def chat() -> None:
            for i in range(20):
                sent = time.monotonic()
                await c.send(json.dumps({"type": "chat", "text": f"line {i}"}))
                async with asyncio.timeout(5):
                    while True:
                        msg = json.loads(await c.recv())
                        if msg["type"] == "likes":
                            updates.append(msg)
                        elif msg["type"] == "chat" and msg["text"] == f"line {i}":
                            echoes.append(time.monotonic() - sent)
                            break
                await asyncio.sleep(1.05)  # within the chat limit (1/s)

        started = time.monotonic()
        await asyncio.gather(flood(), drain_flooder(), chat())
        elapsed = time.monotonic() - started
        assert errors and all(e["status"] == 429 for e in errors)
        assert len(errors) <= elapsed + 2  # one 429 a second at most, not one per like
        assert max(echoes) < 0.5, echoes  # the other sender's chat is not slowed
        assert updates, "like counter updates"
        assert len(updates) <= elapsed / gw.settings.messages.like_interval + 2
        counted = gw.messages.stats.likes_in if gw.messages else 0
        assert 0 < counted < 3000 and updates[-1]["total"] == counted
        assert sum(u["delta"] for u in updates) == counted
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as http:
            metrics = (await http.get("/metrics", headers=op(server))).text
        assert f"stagecast_messages_likes_total {float(counted)}" in metrics
        assert "stagecast_messages_refused_total" in metrics


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_messages_cross_an_edge_through_redis_and_mutes_follow() -> None:
    with run_redis() as redis:
        cluster = {"redis_url": redis.url, "node_id": "origin", "heartbeat": 0.3}
        with (
            run_server(cluster=cluster) as origin,
            run_edge(origin.base_url, cluster={"redis_url": redis.url, "heartbeat": 0.3}) as edge,
        ):
            tokens = origin.gateway.tokens
            room = "cross"
            o_user = tokens.mint(room, "audience", "on-origin", 60)
            e_user = tokens.mint(room, "audience", "on-edge", 60)
            async with (
                member(origin.base_url, room, o_user) as o,
                member(edge.base_url, room, e_user) as e,
            ):
                await e.send(json.dumps({"type": "chat", "text": "from the edge"}))
                assert (await next_of(o, "chat"))["text"] == "from the edge"
                assert (await next_of(e, "chat"))["text"] == "from the edge"
                await o.send(json.dumps({"type": "like", "count": 7}))
                assert (await next_of(e, "likes"))["total"] == 7
                async with httpx.AsyncClient(base_url=origin.base_url, timeout=5) as c:
                    r = await c.put(
                        f"/v1/rooms/{room}/mutes/on-edge", json={"seconds": 60}, headers=op(origin)
                    )
                    assert r.status_code == 200, r.text
                    await asyncio.sleep(0.3)  # the mute crosses the bus
                    await e.send(json.dumps({"type": "chat", "text": "muted?"}))
                    assert (await next_of(e, "error"))["status"] == 403
                    r = await c.post(
                        f"/v1/rooms/{room}/messages", json={"text": "be nice"}, headers=op(origin)
                    )
                    assert r.status_code == 202
                    assert (await next_of(e, "system"))["text"] == "be nice"
                    # a room opened to anonymous chat at the origin is open on the edge too
                    r = await c.post(
                        "/v1/rooms", json={"name": "lobby", "chat": "open"}, headers=op(origin)
                    )
                    assert r.status_code == 201
            deadline = time.monotonic() + 10
            while edge.node.cluster.room_chat_mode("lobby") != "open":
                assert time.monotonic() < deadline, "the edge never learned the chat mode"
                await asyncio.sleep(0.1)
            async with member(edge.base_url, "lobby", None) as anon:
                await anon.send(json.dumps({"type": "chat", "text": "anonymous hello"}))
                assert (await next_of(anon, "chat"))["text"] == "anonymous hello"


@pytest.mark.timeout(60)
async def test_an_operator_mute_silences_one_sender_until_unmuted(server: RunningServer) -> None:
    gw, room = server.gateway, "moderated"
    troll = gw.tokens.mint(room, "audience", "troll", 60)
    fan = gw.tokens.mint(room, "audience", "fan", 60)
    async with (
        member(server.base_url, room, troll) as t,
        member(server.base_url, room, fan) as f,
        httpx.AsyncClient(base_url=server.base_url, timeout=5, headers=op(server)) as c,
    ):
        r = await c.put(f"/v1/rooms/{room}/mutes/troll", json={"seconds": 300})
        assert r.status_code == 200 and r.json()["until"] > time.time() + 290
        await t.send(json.dumps({"type": "chat", "text": "spam"}))
        error = await next_of(t, "error")
        assert error["status"] == 403 and "muted" in error["detail"]
        await t.send(json.dumps({"type": "like"}))
        assert (await next_of(t, "error"))["status"] == 403
        await f.send(json.dumps({"type": "chat", "text": "unaffected"}))
        assert (await next_of(t, "chat"))["text"] == "unaffected"  # the muted one still reads
        assert (await next_of(f, "chat"))["text"] == "unaffected"
        channel = (await c.get(f"/v1/rooms/{room}/channel")).json()
        assert channel["sockets"] == 2 and list(channel["mutes"]) == ["troll"]
        assert (await c.delete(f"/v1/rooms/{room}/mutes/troll")).status_code == 204
        await t.send(json.dumps({"type": "chat", "text": "sorry"}))
        assert (await next_of(f, "chat"))["text"] == "sorry"
        assert (await c.put("/v1/rooms/bad room/mutes/x", json={"seconds": 1})).status_code == 422


async def closed_with(ws: ClientConnection, timeout: float) -> tuple[int, str]:
    """The close frame the server sends ``ws`` within ``timeout`` (messages before it skipped)."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None, "closed without a close frame from the server"
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.mark.timeout(60)
async def test_a_socket_closes_when_its_token_expires_or_its_anchor_is_kicked(
    server: RunningServer,
) -> None:
    """A credential is checked when the socket opens and for as long as it stays open: an
    expired token's socket, and a kicked anchor's (its token revoked), are closed with 4401
    while the others in the room go on."""
    from gateway.synthetic import StampedVideoTrack, whip_publish

    gw, room = server.gateway, "standing"
    short = gw.tokens.mint(room, "audience", "short", 3)
    fan = gw.tokens.mint(room, "audience", "fan", 60)
    host = gw.tokens.mint(room, "anchor", "host", 600)
    pub = await whip_publish(server.base_url, room, host, video=StampedVideoTrack(160, 90, 10))
    try:
        async with (
            member(server.base_url, room, short) as s,
            member(server.base_url, room, fan) as f,
            member(server.base_url, room, host) as h,
            httpx.AsyncClient(base_url=server.base_url, timeout=5, headers=op(server)) as c,
        ):
            code, reason = await closed_with(s, 3 + 2 * 2.0 + 2)  # ttl + two sweeps + slack
            assert (code, reason) == (4401, "token expired")
            anchors = (await c.get(f"/v1/rooms/{room}/anchors")).json()
            assert [a["subject"] for a in anchors] == ["host"]
            kicked_at = time.monotonic()
            r = await c.delete(f"/v1/rooms/{room}/anchors/{anchors[0]['id']}")
            assert r.status_code == 204
            code, reason = await closed_with(h, 2 * 2.0 + 2)
            assert (code, reason) == (4401, "token has been revoked")
            assert time.monotonic() - kicked_at < 2 * 2.0 + 2
            await f.send(json.dumps({"type": "chat", "text": "still here"}))
            assert (await next_of(f, "chat"))["text"] == "still here"
            # the kicked anchor's token opens no new socket either
            assert await close_code(ws_url(server.base_url, room, host)) == 4401
    finally:
        await pub.close(delete=False)
