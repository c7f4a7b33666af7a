"""The parts of failover: the registry-measured age of a record, ``ClusterNode.mark_down`` and the
view it routes by (memory and Redis registries), and the presence link over a real uvicorn. The
rule itself: tests/unit/test_missed_heartbeat.py; the whole, with processes: test_failover.py."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from relay.cluster.node import ClusterConfig, ClusterNode, NodeLoad
from relay.cluster.presence import PRESENCE_PATH, hold_presence
from relay.cluster.registry import (
    ClusterEvent,
    ClusterRegistry,
    MemoryRegistry,
    NodeRecord,
)
from relay.cluster.registry_redis import RedisRegistry
from relay.cluster.routing import (
    MISSED_BEATS,
    Redirect,
    Serve,
)
from tests.support.redis_server import RedisProcess, require_redis, run_redis
from tests.support.server import run_server

RNG = random.Random(1)


def edge(nid: str, *, updated_at: float, heartbeat: float = 1.0, **kw: object) -> NodeRecord:
    return NodeRecord(
        id=nid,
        url=f"http://{nid}",
        role="edge",
        max_viewers=100,
        updated_at=updated_at,
        heartbeat=heartbeat,
        **kw,  # type: ignore[arg-type]
    )


ORIGIN = NodeRecord(id="o", url="http://o", role="origin", heartbeat=1.0)


# -- the registries: how old a record is -------------------------------------------------------
@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisProcess]:
    require_redis()
    with run_redis() as proc:
        yield proc


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[ClusterRegistry]:
    reg: ClusterRegistry
    if request.param == "memory":
        reg = MemoryRegistry()
    else:
        proc: RedisProcess = request.getfixturevalue("redis_proc")
        reg = RedisRegistry(proc.url, prefix=f"f{uuid.uuid4().hex[:8]}:")
    try:
        yield reg
    finally:
        await reg.close()


@pytest.mark.timeout(10)
async def test_registry_reports_the_age_of_each_record(registry: ClusterRegistry) -> None:
    await registry.heartbeat(edge("a", updated_at=0.0), ttl=5)
    await asyncio.sleep(0.3)
    await registry.heartbeat(edge("b", updated_at=0.0), ttl=5)
    ages = {n.id: n.age for n in await registry.nodes()}
    assert 0.25 <= ages["a"] <= 0.6, ages
    assert 0 <= ages["b"] <= 0.15, ages
    await registry.set_draining("a", True)  # another node's write is not a heartbeat
    (a,) = [n for n in await registry.nodes() if n.id == "a"]
    assert a.draining and a.age >= 0.25


# -- ClusterNode: the view it routes by ---------------------------------------------------------
def cluster_node(
    nid: str, role: str, registry: ClusterRegistry, heartbeat: float, ttl: float = 10.0
) -> ClusterNode:
    config = ClusterConfig(nid, f"http://{nid}", role, heartbeat=heartbeat, ttl=ttl)  # type: ignore[arg-type]
    return ClusterNode(config, registry, lambda: NodeLoad(0, 0, rooms=("r",) * (role == "edge")))


async def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())  # type: ignore[operator]


@pytest.mark.timeout(20)
async def test_an_edge_that_stops_beating_leaves_rotation_long_before_its_ttl(
    registry: ClusterRegistry,
) -> None:
    """Both registries: a process that stops (no goodbye) is out of routing after 1.5 beats."""
    hb = 0.2
    origin = cluster_node("origin", "origin", registry, hb)
    b = cluster_node("edge-b", "edge", registry, hb)
    await origin.start()
    await b.start()
    try:
        assert await wait_until(lambda: isinstance(origin.decide("r"), Redirect), 2)
        await _die(b)  # its record stays in the registry until the TTL (10 s)
        died = time.monotonic()
        assert await wait_until(lambda: origin.decide("r") == Serve(), 2)
        left = time.monotonic() - died
        assert left <= hb * (MISSED_BEATS + 1) + 0.1, left
        assert "edge-b" in [n.id for n in await registry.nodes()]
    finally:
        await origin.stop()
        await _die(b)


async def _die(node: ClusterNode) -> None:
    """As a killed process: its tasks stop, nothing is said to the registry."""
    node._stopping = True
    for task in node._tasks:
        task.cancel()
    await asyncio.gather(*node._tasks, return_exceptions=True)


@pytest.mark.timeout(20)
async def test_mark_down_takes_a_node_out_at_once_and_a_live_one_comes_back(
    registry: ClusterRegistry,
) -> None:
    hb = 0.3
    origin = cluster_node("origin", "origin", registry, hb)
    b = cluster_node("edge-b", "edge", registry, hb)
    events = registry.events()
    first = asyncio.ensure_future(events.__anext__())
    await origin.start()
    await b.start()
    try:
        assert await wait_until(lambda: isinstance(origin.decide("r"), Redirect), 2)
        await origin.mark_down("edge-b", "a test says so")
        assert origin.decide("r") == Serve()  # at once, before any read
        assert "edge-b" not in [n.id for n in await registry.nodes()]
        seen = [await asyncio.wait_for(first, 2)]
        while seen[-1].kind != "node.down":
            seen.append(await asyncio.wait_for(events.__anext__(), 2))
        assert seen[-1] == ClusterEvent("node.down", "edge-b", "", seen[-1].at)
        # edge-b is alive: told it was marked down, it registers again at once
        t0 = time.monotonic()
        assert await wait_until(lambda: isinstance(origin.decide("r"), Redirect), 3)
        print(f"back in rotation {time.monotonic() - t0:.2f} s after being marked down")
        assert time.monotonic() - t0 < 2 * hb + 0.5
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await origin.stop()
        await b.stop()


@pytest.mark.timeout(30)
async def test_a_registry_outage_keeps_every_node_in_rotation(redis_proc: RedisProcess) -> None:
    """The registry stops answering: who missed a beat is unknown then, and nobody is left out."""
    hb = 0.2
    regs = [RedisRegistry(redis_proc.url, prefix="outage:") for _ in range(2)]
    origin = cluster_node("origin", "origin", regs[0], hb)
    b = cluster_node("edge-b", "edge", regs[1], hb)
    await origin.start()
    await b.start()
    try:
        assert await wait_until(lambda: isinstance(origin.decide("r"), Redirect), 2)
        redis_proc.stop()
        await asyncio.sleep(hb * 6)
        assert not origin.status.registered
        assert isinstance(origin.decide("r"), Redirect)
    finally:
        await origin.stop()
        await b.stop()
        redis_proc.start()


# -- presence over a real uvicorn ---------------------------------------------------------------
@pytest.mark.timeout(30)
async def test_presence_broken_off_marks_the_child_down_and_the_child_sees_the_upstream_go() -> (
    None
):
    hb = 0.25
    lost: list[tuple[str, float]] = []

    async def on_lost(upstream: str) -> None:
        lost.append((upstream, time.monotonic()))

    with run_server(cluster={"node_id": "origin", "heartbeat": hb}) as server:
        cluster = server.gateway.cluster
        assert cluster is not None
        tokens = server.gateway.tokens
        reg = cluster.registry

        async def registered(nid: str) -> bool:
            async def read() -> list[str]:
                return [n.id for n in await reg.nodes()]

            ids = asyncio.run_coroutine_threadsafe(read(), server.loop).result(5)
            return nid in ids

        def register(nid: str) -> None:
            record = NodeRecord(nid, f"http://{nid}", "edge", heartbeat=hb)
            asyncio.run_coroutine_threadsafe(reg.heartbeat(record, 30), server.loop).result(5)

        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get(PRESENCE_PATH)).status_code == 401
            viewer = server.audience_token("r")
            r = await client.get(PRESENCE_PATH, headers={"Authorization": f"Bearer {viewer}"})
            assert r.status_code == 403  # an audience token is no node's token

        register("edge-x")
        child = asyncio.create_task(hold_presence(server.base_url, "edge-x", tokens, hb, on_lost))
        await asyncio.sleep(hb * 6)  # several holds answered in full: nothing marked
        assert await registered("edge-x") and not lost
        child.cancel()  # the child's process goes: its connection closes
        gone = time.monotonic()
        while await registered("edge-x"):
            assert time.monotonic() - gone < 1.0, "the origin did not mark the child down"
            await asyncio.sleep(0.02)
        print(f"child marked down {time.monotonic() - gone:.3f} s after its connection closed")

        register("edge-y")
        child = asyncio.create_task(hold_presence(server.base_url, "edge-y", tokens, hb, on_lost))
        await asyncio.sleep(hb * 2)
        server.server.should_exit = True  # the upstream goes away
        stopped = time.monotonic()
        await wait_until(lambda: bool(lost), 5)
    child.cancel()
    assert lost and lost[0][0] == "origin", lost
    assert lost[0][1] - stopped < 2 * hb + 1.0
