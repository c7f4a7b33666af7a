"""The registry contract, run here against the in-memory default; tests/live/test_registry_redis.py
runs the same tests against Redis (a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from relay.cluster.registry import (
    ClusterEvent,
    ClusterRegistry,
    MemoryRegistry,
    NodeRecord,
    RoomPolicy,
)


@pytest.fixture
async def registry() -> AsyncIterator[ClusterRegistry]:
    reg = MemoryRegistry()
    try:
        yield reg
    finally:
        await reg.close()


def node(nid: str, **kw: object) -> NodeRecord:
    return NodeRecord(id=nid, url=f"http://{nid}", role="edge", **kw)  # type: ignore[arg-type]


@pytest.mark.timeout(20)
async def test_heartbeat_registers_and_ttl_expires(registry: ClusterRegistry) -> None:
    assert await registry.ping()
    assert await registry.nodes() == []
    a = node("a", viewers=3, max_viewers=10, rooms=("r1",))
    await registry.heartbeat(a, ttl=0.6)
    await registry.heartbeat(node("b"), ttl=5)
    got = await registry.nodes()
    assert [n.id for n in got] == ["a", "b"]
    # the record round-trips exactly, with the TTL it was written with and its age
    assert replace(got[0], ttl=0.0, age=0.0) == a
    assert got[0].ttl == 0.6 and 0 <= got[0].age < 0.2
    await asyncio.sleep(0.4)
    await registry.heartbeat(a, ttl=0.6)  # refreshed: still there after the first TTL
    await asyncio.sleep(0.4)
    assert [n.id for n in await registry.nodes()] == ["a", "b"]
    await asyncio.sleep(0.5)  # no heartbeat: gone
    assert [n.id for n in await registry.nodes()] == ["b"]
    await registry.remove("b")
    assert await registry.nodes() == []


@pytest.mark.timeout(20)
async def test_draining_flag(registry: ClusterRegistry) -> None:
    await registry.heartbeat(node("a"), ttl=5)
    await registry.set_draining("a", True)
    assert (await registry.nodes())[0].draining
    await registry.set_draining("a", False)
    assert not (await registry.nodes())[0].draining
    await registry.set_draining("ghost", True)  # unknown node: nothing happens
    assert [n.id for n in await registry.nodes()] == ["a"]


@pytest.mark.timeout(20)
async def test_stream_lease(registry: ClusterRegistry) -> None:
    assert await registry.stream_owner("room") is None
    assert await registry.acquire_stream("room", "a", ttl=0.6)
    assert not await registry.acquire_stream("room", "b", ttl=0.6)  # SET NX
    assert await registry.acquire_stream("room", "a", ttl=0.6)  # the owner re-acquires
    assert await registry.stream_owner("room") == "a"
    assert not await registry.refresh_stream("room", "b", ttl=5)
    await registry.release_stream("room", "b")  # not b's: stays
    assert await registry.stream_owner("room") == "a"
    await asyncio.sleep(0.4)
    assert await registry.refresh_stream("room", "a", ttl=0.6)
    await asyncio.sleep(0.4)
    assert await registry.stream_owner("room") == "a"
    await asyncio.sleep(0.5)  # not refreshed: the lease lapses, another node may take it
    assert await registry.stream_owner("room") is None
    assert not await registry.refresh_stream("room", "a", ttl=1)
    assert await registry.acquire_stream("room", "b", ttl=5)
    await registry.release_stream("room", "b")
    assert await registry.stream_owner("room") is None


@pytest.mark.timeout(20)
async def test_room_policies_with_ttl(registry: ClusterRegistry) -> None:
    assert await registry.room_policies() == []
    assert await registry.room_policy("vip") is None
    await registry.put_room_policies([], ttl=1)  # nothing to put: nothing happens
    vip = RoomPolicy("vip", private=True, max_viewers=5, node_id="o", updated_at=1.5)
    capped = RoomPolicy("capped", max_viewers=2, node_id="o", updated_at=1.5)
    await registry.put_room_policies([vip, capped], ttl=0.6)
    assert await registry.room_policy("vip") == vip  # the record round-trips exactly
    assert await registry.room_policies() == [capped, vip]  # by room name
    await asyncio.sleep(0.4)
    await registry.put_room_policies([vip], ttl=0.6)  # vip refreshed, capped not
    await asyncio.sleep(0.4)
    assert await registry.room_policies() == [vip]
    assert await registry.room_policy("capped") is None
    public = replace(vip, private=False, max_viewers=None)
    await registry.put_room_policies([public], ttl=5)  # a new policy replaces the old
    assert await registry.room_policy("vip") == public
    await registry.remove_room_policy("vip")
    await registry.remove_room_policy("ghost")  # unknown room: nothing happens
    assert await registry.room_policies() == []
    assert await registry.room_policy("vip") is None


@pytest.mark.timeout(20)
async def test_events_reach_subscribers(registry: ClusterRegistry) -> None:
    got: list[ClusterEvent] = []
    ready = asyncio.Event()

    async def listen() -> None:
        stream = registry.events()
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.3)  # the subscription is in place
        ready.set()
        got.append(await first)
        async for event in stream:
            got.append(event)
            if len(got) == 3:
                break

    task = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 5)
    await registry.publish(ClusterEvent("node.up", "a", at=1.0))
    await registry.publish(ClusterEvent("stream.owned", "a", room="r", at=2.0))
    await registry.publish(ClusterEvent("room.policy", "a", at=3.0))
    await asyncio.wait_for(task, 5)
    assert got == [
        ClusterEvent("node.up", "a", at=1.0),
        ClusterEvent("stream.owned", "a", room="r", at=2.0),
        ClusterEvent("room.policy", "a", at=3.0),
    ]
