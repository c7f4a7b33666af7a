"""Cross-room co-hosting (gateway/stage/links.py) across two origins sharing a real Redis: each
room's program lives on its own node, the guest's stream is pulled over the internal link from
the node that owns its room, and a request sent to the wrong node is routed (307) to the right
one. aiortc anchors send solid colours; a viewer of each program finds them by position."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.synthetic import Publisher
from tests.live.test_cluster import wait_for
from tests.live.test_mixer_live import SMALL_STAGE, hears, publish, shows
from tests.live.test_webhooks import SECRET as HOOK_SECRET
from tests.live.test_webhooks import Receiver, receiver
from tests.support.mixer_clients import watch_program
from tests.support.redis_server import require_redis, run_redis
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.slow  # two origins and a Redis

KEY = "crossroom-operator-key-for-tests"
ROOM_A, ROOM_B = "pk-a", "pk-b"


@dataclass(eq=False)
class Pair:
    a: RunningServer  # ROOM_A lives here
    b: RunningServer  # ROOM_B lives here
    hooks: Receiver  # both nodes' webhooks

    def link_events(self, room: str) -> list[tuple[str, object]]:
        """(type, reason) of the link webhooks of ``room`` so far."""
        with self.hooks.lock:
            events = list(self.hooks.events)
        out = []
        for e in events:
            data = e["data"]
            assert isinstance(data, dict)
            if str(e["type"]).startswith("link.") and data["room"] == room:
                out.append((str(e["type"]), data.get("reason")))
        return out


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    require_redis()
    with run_redis() as redis, receiver() as (hook_url, hooks):

        def node(name: str) -> dict[str, object]:
            return {
                "node_id": name,
                "redis_url": redis.url,
                "heartbeat": 0.25,
                "node_ttl": 5.0,  # a loaded machine may hold a heartbeat back for seconds
                "key_prefix": "crossroom",
            }

        common = {
            "stage": SMALL_STAGE,
            "api": {"operator_key": KEY},
            "webhooks": {"urls": [hook_url], "secret": HOOK_SECRET},
            "limits": {"max_loop_lag": None},  # no 503 "overloaded" on a shared machine
        }
        with (
            run_server(cluster=node("node-a"), **common) as a,  # type: ignore[arg-type]
            run_server(cluster=node("node-b"), **common) as b,  # type: ignore[arg-type]
        ):
            yield Pair(a, b, hooks)


def session_id(pub: Publisher) -> str:
    return pub.location.rstrip("/").rsplit("/", 1)[1]


async def owned(srv: RunningServer, room: str, node: str) -> bool:
    cluster = srv.gateway.cluster
    assert cluster is not None
    read = asyncio.run_coroutine_threadsafe(cluster.registry.stream_owner(room), srv.loop)
    return await asyncio.wrap_future(read) == node


async def links_of(srv: RunningServer, room: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=5) as api:
        r = await api.get(f"/v1/rooms/{room}/links", headers={"X-API-Key": KEY})
    r.raise_for_status()
    data: list[dict[str, object]] = r.json()
    return data


def link_pulls(srv: RunningServer, room: str) -> int:
    """Viewer sessions of ``room`` on ``srv`` opened by another node (internal links)."""
    sessions = srv.gateway.viewers.sessions.values()
    return sum(1 for s in sessions if s.room == room and s.grant.subject.startswith("node:"))


@pytest.mark.timeout(150)
async def test_symmetric_pk_across_two_nodes(pair: Pair) -> None:
    red = await publish(pair.a, ROOM_A, "red")
    blue = await publish(pair.b, ROOM_B, "blue")
    viewers = []
    try:
        assert await wait_for(lambda: owned(pair.a, ROOM_A, "node-a"), 10)
        assert await wait_for(lambda: owned(pair.b, ROOM_B, "node-b"), 10)
        view_a = await watch_program(pair.a.base_url, f"/whep/{ROOM_A}")  # video and audio
        view_b = await watch_program(pair.b.base_url, f"/whep/{ROOM_B}", kinds=("video",))
        viewers += [view_a, view_b]
        assert await shows(view_a, {(0.5, 0.5): "red"}, 15)
        assert await shows(view_b, {(0.5, 0.5): "blue"}, 15)

        headers = {"X-API-Key": KEY}
        async with httpx.AsyncClient(timeout=15, headers=headers, follow_redirects=True) as api:
            # asked of node B, the link into room A is routed to node A (307), which pulls
            # blue's own stream from node B over the internal link
            t0 = time.monotonic()
            body = {"room": ROOM_B, "anchor_id": session_id(blue)}
            r = await api.post(f"{pair.b.base_url}/v1/rooms/{ROOM_A}/links", json=body)
            assert r.status_code == 201, r.text
            assert [h.status_code for h in r.history] == [307]
            assert str(r.url).startswith(pair.a.base_url)
            assert r.json()["via"] == "node-b"
            assert await shows(view_a, {(0.25, 0.5): "red", (0.75, 0.5): "blue"}, 15)
            print(f"link -> guest tile in room A's program: {time.monotonic() - t0:.2f} s")
            assert link_pulls(pair.b, ROOM_B) == 1

            # and back: red into room B (made on node B) -- both programs show both hosts
            body = {"room": ROOM_A, "anchor_id": session_id(red)}
            r = await api.post(f"{pair.b.base_url}/v1/rooms/{ROOM_B}/links", json=body)
            assert r.status_code == 201 and not r.history, r.text
            assert await shows(view_b, {(0.25, 0.5): "blue", (0.75, 0.5): "red"}, 15)
            # audio: room A's audience hears both hosts; blue's mix-minus (room B's) carries
            # red, its guest there, and never blue itself
            await hears(view_a, lambda lv: lv[440.0] > 0.3 and lv[2500.0] > 0.3, 15)
            blue_token = pair.b.gateway.tokens.mint(ROOM_B, "anchor", "anchor-blue", 600)
            minus = await watch_program(
                pair.b.base_url,
                f"/whep/{ROOM_B}?mixminus={session_id(blue)}",
                token=blue_token,
                kinds=("audio",),
            )
            viewers.append(minus)
            await hears(minus, lambda lv: lv[440.0] == 1.0 and lv[2500.0] < 0.05, 15)
            assert await shows(view_a, {(0.25, 0.5): "red", (0.75, 0.5): "blue"}, 5)
            listed = await links_of(pair.a, ROOM_A)
            assert [(x["guest_room"], x["anchor_id"]) for x in listed] == [
                (ROOM_B, session_id(blue))
            ]
            assert int(listed[0]["frames"]) > 0  # type: ignore[call-overload]

            # the layout API places the guest tile by its anchor id
            layout = {
                "mode": "custom",
                "regions": [
                    {"anchor_id": session_id(red), "x": 0, "y": 0, "w": 1, "h": 1, "z": 0},
                    {"anchor_id": session_id(blue), "x": 0.6, "y": 0.6, "w": 0.4, "h": 0.4, "z": 1},
                ],
            }
            r = await api.put(f"{pair.a.base_url}/v1/rooms/{ROOM_A}/layout", json=layout)
            assert r.status_code == 200, r.text
            assert await shows(view_a, {(0.3, 0.3): "red", (0.8, 0.8): "blue"}, 10)
            await api.put(f"{pair.a.base_url}/v1/rooms/{ROOM_A}/layout", json={"mode": "grid"})
            assert await shows(view_a, {(0.25, 0.5): "red", (0.75, 0.5): "blue"}, 10)

            # unlink: the tile leaves room A's program and the pull from node B is closed
            t0 = time.monotonic()
            r = await api.delete(f"{pair.b.base_url}/v1/rooms/{ROOM_A}/links/{session_id(blue)}")
            assert r.status_code == 204, r.text
            assert await shows(view_a, {(0.25, 0.5): "red", (0.75, 0.5): "red"}, 15)
            print(f"unlink -> guest tile gone from room A's program: {time.monotonic() - t0:.2f} s")
            await hears(view_a, lambda lv: lv[2500.0] < 0.05 and lv[440.0] == 1.0, 10)
            assert await wait_for(lambda: link_pulls(pair.b, ROOM_B) == 0, 5)
            assert await links_of(pair.a, ROOM_A) == []
            started_ended = [("link.started", None), ("link.ended", "unlinked")]
            assert await wait_for(lambda: pair.link_events(ROOM_A) == started_ended, 5)
            r = await api.delete(f"{pair.a.base_url}/v1/rooms/{ROOM_A}/links/{session_id(blue)}")
            assert r.status_code == 404

        # the guest leaving its own room ends the other link: red leaves room A
        t0 = time.monotonic()
        await red.close()
        assert await wait_for(lambda: link_pulls(pair.a, ROOM_A) == 0, 10)
        assert await wait_for(lambda: not pair.b.gateway.links.links, 10)  # type: ignore[union-attr]
        print(f"guest left its room -> link ended on the other node: {time.monotonic() - t0:.2f} s")
        assert await shows(view_b, {(0.25, 0.5): "blue", (0.75, 0.5): "blue"}, 15)
        assert await links_of(pair.b, ROOM_B) == []
        started_ended = [("link.started", None), ("link.ended", "guest left")]
        assert await wait_for(lambda: pair.link_events(ROOM_B) == started_ended, 5)
    finally:
        for v in viewers:
            await v.close()
        for pub in (red, blue):
            if not pub.client.is_closed:
                await pub.close()


@pytest.mark.timeout(90)
async def test_bad_links_are_refused_and_disturb_nothing(pair: Pair) -> None:
    red = await publish(pair.a, ROOM_A, "red")
    green = await publish(pair.a, "pk-c", "green")  # a third room, on node A too
    blue = await publish(pair.b, ROOM_B, "blue")
    try:
        assert await wait_for(lambda: owned(pair.a, ROOM_A, "node-a"), 10)
        assert await wait_for(lambda: owned(pair.b, ROOM_B, "node-b"), 10)
        base = pair.a.base_url
        body = {"room": ROOM_B, "anchor_id": session_id(blue)}
        async with httpx.AsyncClient(base_url=base, timeout=15) as api:
            own = {"Authorization": f"Bearer {pair.a.anchor_token(ROOM_A)}"}
            # without room B's consent (an anchor token of B), or with a token of another
            # room as consent, an anchor of A may not take B's anchor: 403
            r = await api.post(f"/v1/rooms/{ROOM_A}/links", json=body, headers=own)
            assert r.status_code == 403 and "guest_token" in r.text, r.text
            wrong = {**body, "guest_token": pair.a.anchor_token(ROOM_A)}
            r = await api.post(f"/v1/rooms/{ROOM_A}/links", json=wrong, headers=own)
            assert r.status_code == 403, r.text
            # a stage guest of room A (an audience member on stage) may not link at all
            guest = pair.a.gateway.tokens.mint(ROOM_A, "anchor", "guest-abc", 60)
            consent = pair.a.anchor_token(ROOM_B)
            r = await api.post(
                f"/v1/rooms/{ROOM_A}/links",
                json={**body, "guest_token": consent},
                headers={"Authorization": f"Bearer {guest}"},
            )
            assert r.status_code == 403, r.text
            # an anchor of room A links into its own room with its own token and B's consent
            body = {**body, "guest_token": consent}
            r = await api.post(f"/v1/rooms/{ROOM_A}/links", json=body, headers=own)
            assert r.status_code == 201, r.text
            # the same anchor again: 409
            r = await api.post(f"/v1/rooms/{ROOM_A}/links", json=body, headers=own)
            assert r.status_code == 409, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            # an anchor that does not exist in room B: 404 (node B says so over the link)
            bad = {"room": ROOM_B, "anchor_id": "no-such-anchor", "guest_token": consent}
            r = await api.post(f"/v1/rooms/{ROOM_A}/links", json=bad, headers=own)
            assert r.status_code == 404, r.text
            # a room that is live nowhere: 404
            r = await api.post(
                f"/v1/rooms/{ROOM_A}/links",
                json={
                    "room": "nowhere",
                    "anchor_id": "x",
                    "guest_token": pair.a.anchor_token("nowhere"),
                },
                headers=own,
            )
            assert r.status_code == 404, r.text
            # room B's anchor token may not link into room A: 403; no token: 401
            foreign = {"Authorization": f"Bearer {pair.a.anchor_token(ROOM_B)}"}
            local = {
                "room": "pk-c",
                "anchor_id": session_id(green),
                "guest_token": pair.a.anchor_token("pk-c"),
            }
            r = await api.post(f"/v1/rooms/{ROOM_A}/links", json=local, headers=foreign)
            assert r.status_code == 403, r.text
            r = await api.post(f"/v1/rooms/{ROOM_A}/links", json=local)
            assert r.status_code == 401, r.text
            # an audience token is no anchor's: 403
            aud = {"Authorization": f"Bearer {pair.a.audience_token(ROOM_A)}"}
            r = await api.get(f"/v1/rooms/{ROOM_A}/links", headers=aud)
            assert r.status_code == 403, r.text
            # a room into itself: 422
            r = await api.post(
                f"/v1/rooms/{ROOM_A}/links",
                json={
                    "room": ROOM_A,
                    "anchor_id": session_id(red),
                    "guest_token": pair.a.anchor_token(ROOM_A),
                },
                headers=own,
            )
            assert r.status_code == 422, r.text
            # nothing else was disturbed: the one good link is there and carries frames; a
            # local guest (room pk-c on this node) joins beside it without a pull
            r = await api.post(f"/v1/rooms/{ROOM_A}/links", json=local, headers=own)
            assert r.status_code == 201 and r.json()["via"] == "local", r.text
            listed = await links_of(pair.a, ROOM_A)
            assert sorted(str(x["anchor_id"]) for x in listed) == sorted(
                [session_id(blue), session_id(green)]
            )

            async def flowing() -> bool:
                return all(int(str(x["frames"])) > 0 for x in await links_of(pair.a, ROOM_A))

            assert await wait_for(flowing, 10)
    finally:
        for pub in (red, green, blue):
            await pub.close()
    # room A ending ends its links: the pull from node B is closed
    assert await wait_for(lambda: link_pulls(pair.b, ROOM_B) == 0, 10)
    assert await wait_for(lambda: not pair.a.gateway.links.links, 10)  # type: ignore[union-attr]
