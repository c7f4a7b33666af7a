"""The cluster over real sockets and processes: a real redis-server, the origin (uvicorn in this
process, so its sessions can be counted), two edges and an edge of an edge, each its own
``stagecast relay`` process; aiortc anchors and viewers on 127.0.0.1.

The tests share one cluster (starting processes is the slow part) and run in file order; the
SIGKILL test comes last because it removes an edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection

from gateway.launcher import free_udp_port
from gateway.synthetic import (
    Publisher,
    StampedVideoTrack,
    Viewer,
    whep_watch,
    whip_publish,
)
from relay.cluster.registry_redis import RedisRegistry
from relay.rtc.peer import close_quietly, rtc_configuration
from tests.live.test_protocol import assert_problem
from tests.support.redis_server import RedisProcess, require_redis, run_redis
from tests.support.retrying_viewer import RetryingViewer
from tests.support.server import SECRET, RunningServer, free_port, run_server

pytestmark = pytest.mark.slow  # three relay processes, Redis, an origin

HEARTBEAT = 0.25
EDGE_KEY = "edge-operator-key-for-tests"
TTL = 0.8


@dataclass(eq=False)
class EdgeProcess:
    name: str
    port: int
    upstream: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def cluster(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(self.url + "/cluster", headers={"X-API-Key": EDGE_KEY})
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_edge(name: str, upstream: str, redis_url: str, logdir: Path) -> EdgeProcess:
    port = free_port()
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": EDGE_KEY,  # /cluster takes it
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_CLUSTER__HEARTBEAT": str(HEARTBEAT),
        "STAGECAST_CLUSTER__NODE_TTL": str(TTL),
        "STAGECAST_CLUSTER__SILENCE_TIMEOUT": "1.0",
        "STAGECAST_CLUSTER__IDLE_GRACE": "30",
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "100",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "100",
        "STAGECAST_WORKERS": "1",  # one process per edge
    }
    env.pop("STAGECAST_CONFIG", None)
    log = logdir / f"{name}.log"
    cmd = [sys.executable, "-m", "gateway.cli", "relay", "--upstream", upstream]
    cmd += ["--udp-port", str(free_udp_port())]  # edges on one host: a UDP port each
    cmd += ["--port", str(port), "--redis-url", redis_url, "--node-id", name]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return EdgeProcess(name, port, upstream, proc, log)


def wait_healthy(edge: EdgeProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if edge.proc.poll() is not None:
            raise RuntimeError(f"{edge.name} exited: {edge.log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(edge.url + "/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{edge.name} did not start: {edge.log.read_text()[-2000:]}")


@dataclass(eq=False)
class Cluster:
    redis: RedisProcess
    origin: RunningServer
    edges: dict[str, EdgeProcess]

    async def node_ids(self) -> list[str]:
        reg = RedisRegistry(self.redis.url)
        try:
            return [n.id for n in await reg.nodes()]
        finally:
            await reg.close()

    def node_ids_sync(self) -> list[str]:
        return asyncio.run_coroutine_threadsafe(self.node_ids(), self.origin.loop).result(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_redis()
    logdir = tmp_path_factory.mktemp("cluster-logs")
    with (
        run_redis() as redis,
        run_server(
            cluster={
                "node_id": "origin",
                "redis_url": redis.url,
                "heartbeat": HEARTBEAT,
                "node_ttl": TTL,
            },
            limits={"session_posts_per_second": 100, "session_post_burst": 100},
        ) as origin,
    ):
        edges: dict[str, EdgeProcess] = {}
        try:
            edges["edge-a"] = start_edge("edge-a", origin.base_url, redis.url, logdir)
            edges["edge-b"] = start_edge("edge-b", origin.base_url, redis.url, logdir)
            wait_healthy(edges["edge-a"])
            edges["edge-c"] = start_edge("edge-c", edges["edge-a"].url, redis.url, logdir)
            for e in edges.values():
                wait_healthy(e)
            c = Cluster(redis, origin, edges)
            deadline = time.monotonic() + 10
            while len(c.node_ids_sync()) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.node_ids_sync() == ["edge-a", "edge-b", "edge-c", "origin"]
            yield c
        finally:
            for e in edges.values():
                e.stop()


async def wait_for(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` (sync or async) until true or ``timeout``."""

    async def check() -> bool:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        return bool(value)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(step)
    return await check()


async def publish(cluster: Cluster, room: str) -> Publisher:
    origin = cluster.origin
    pub = await whip_publish(
        origin.base_url, room, origin.anchor_token(room), video=StampedVideoTrack(320, 180, 20)
    )
    assert await wait_for(lambda: origin.gateway.stages.live_hub(room) is not None, 5)
    hub = origin.gateway.stages.live_hub(room)
    assert hub is not None
    assert await wait_for(lambda: hub.stats.frames_in > 10, 10)
    return pub


def stamped(viewer: Viewer, since: float = 0.0) -> list[int]:
    return [s.counter for s in viewer.samples if s.received_at >= since]


def assert_flowing(viewer: Viewer, since: float, minimum: int) -> None:
    counters = stamped(viewer, since)
    assert len(counters) >= minimum, f"only {len(counters)} stamped frames"
    assert counters == sorted(counters) and len(set(counters)) == len(counters)


@pytest.mark.timeout(180)  # includes starting the cluster (three relay processes)
async def test_edges_pull_once_and_fan_out_stamped_frames(cluster: Cluster) -> None:
    room = "fan"
    pub = await publish(cluster, room)
    viewers: dict[str, list[Viewer]] = {}
    closed = False
    try:
        for name in ("edge-a", "edge-b", "edge-c"):
            url = cluster.edges[name].url
            viewers[name] = [await whep_watch(url, room, kinds=("video",)) for _ in range(2)]
        t0 = time.time()
        await asyncio.sleep(2.5)
        for name, vs in viewers.items():
            for v in vs:
                assert v.time_to_first_frame is not None and v.time_to_first_frame < 2.0, name
                assert_flowing(v, t0, 25)  # 20 fps for 2.5 s, through one or two hops
                lat = sorted(s.latency_ms for s in v.samples)
                assert lat[len(lat) // 2] < 300, (name, lat[len(lat) // 2])
        # the origin serves exactly one pull per direct edge, however many viewers they have
        origin = cluster.origin.gateway
        sessions = [s for s in origin.viewers.sessions.values() if s.room == room]
        assert sorted(s.grant.subject for s in sessions) == ["node:edge-a", "node:edge-b"]
        # edge-a serves its two viewers and edge-c's pull; edge-c pulls once from edge-a
        a = await cluster.edges["edge-a"].cluster()
        c = await cluster.edges["edge-c"].cluster()
        assert a["pulls"][room]["viewers"] == 3
        assert c["pulls"][room]["viewers"] == 2
        assert a["pulls"][room]["fanout_cpu_s"] > 0  # the edge counts what its sending costs
        assert a["pull_stats"]["opened"] == 1 and c["pull_stats"]["opened"] == 1
        # a viewer's keyframe request on an edge reaches the anchor through the links
        hub = origin.stages.live_hub(room)
        assert hub is not None and hub.stats.keyframe_requests >= 1
        # the stream ends at the origin: every edge viewer sees the end
        await pub.close()
        closed = True
        for vs in viewers.values():
            for v in vs:
                await asyncio.wait_for(v.ended.wait(), 10)
    finally:
        for vs in viewers.values():
            for v in vs:
                await v.close()
        if not closed:
            await pub.close()
    for edge in cluster.edges.values():
        assert await wait_for(lambda e=edge: _no_pull(e, room), 10)


async def _no_pull(edge: EdgeProcess, room: str) -> bool:
    return room not in (await edge.cluster())["pulls"]


@pytest.mark.timeout(60)
async def test_redis_outage_loses_no_viewer_and_nodes_reregister(cluster: Cluster) -> None:
    room = "outage"
    pub = await publish(cluster, room)
    viewers = [
        await whep_watch(cluster.edges[name].url, room, kinds=("video",))
        for name in ("edge-a", "edge-b", "edge-c")
    ]
    try:
        assert await wait_for(lambda: all(len(v.samples) > 5 for v in viewers), 10)
        regs = {n: (await e.cluster())["registrations"] for n, e in cluster.edges.items()}
        await asyncio.to_thread(cluster.redis.stop)
        t0 = time.time()
        await asyncio.sleep(2.5)  # longer than the node TTL
        for v in viewers:
            assert_flowing(v, t0, 30)
        for e in cluster.edges.values():
            assert not (await e.cluster())["registered"]
        await asyncio.to_thread(cluster.redis.start)  # empty: every node must register again
        t1 = time.monotonic()
        assert await wait_for(lambda: _count_is(cluster, 4), 5)
        reregistered = time.monotonic() - t1
        for name, e in cluster.edges.items():
            assert (await e.cluster())["registrations"] == regs[name] + 1
        await asyncio.sleep(0.5)
        for v in viewers:
            received = sorted(s.received_at for s in v.samples if s.received_at >= t0 - 1)
            gaps = [b - a for a, b in itertools.pairwise(received)]
            worst = max(range(len(gaps)), key=gaps.__getitem__)
            at = received[worst] - t0
            assert gaps[worst] < 1.0, f"a viewer froze for {gaps[worst]:.2f} s at t0{at:+.2f} s"
            assert not v.ended.is_set()
        print(f"re-registered {reregistered:.2f} s after Redis returned")
    finally:
        for v in viewers:
            await v.close()
        await pub.close()


def operator(cluster: Cluster) -> httpx.AsyncClient:
    origin = cluster.origin
    headers = {"X-API-Key": origin.gateway.operator_key}
    return httpx.AsyncClient(base_url=origin.base_url, headers=headers, timeout=10)


SDP_HEADERS = {"Content-Type": "application/sdp"}


async def _knows_policy(edge: EdgeProcess, room: str) -> bool:
    return room in (await edge.cluster())["room_policies"]


async def _is_public(edge: EdgeProcess, room: str) -> bool:
    policy = (await edge.cluster())["room_policies"].get(room)
    return policy is None or not policy["private"]


@pytest.mark.timeout(60)
async def test_private_room_needs_an_audience_token_on_every_edge(cluster: Cluster) -> None:
    room = "vip"
    async with operator(cluster) as api:
        assert (
            await api.post("/v1/rooms", json={"name": room, "private": True})
        ).status_code == 201
    pub = await publish(cluster, room)
    viewers: list[Viewer] = []
    try:
        offer = await _offer()
        elsewhere = cluster.origin.gateway.tokens.mint("elsewhere", "audience", "v", 600)
        async with httpx.AsyncClient(timeout=10) as client:
            for name in ("edge-a", "edge-c"):  # a direct edge, an edge of an edge
                url = f"{cluster.edges[name].url}/whep/{room}"
                anonymous = await client.post(url, content=offer, headers=SDP_HEADERS)
                assert_problem(anonymous, 401)
                assert anonymous.headers["www-authenticate"].startswith("Bearer")
                wrong = await client.post(
                    url,
                    content=offer,
                    headers={**SDP_HEADERS, "Authorization": f"Bearer {elsewhere}"},
                )
                assert_problem(wrong, 403)
                # refused before anything is pulled
                assert room not in (await cluster.edges[name].cluster())["pulls"]
        token = cluster.origin.audience_token(room)
        viewers = [
            await whep_watch(cluster.edges[name].url, room, token, kinds=("video",))
            for name in ("edge-a", "edge-c")
        ]
        t0 = time.time()
        await asyncio.sleep(1.5)
        for v in viewers:
            assert_flowing(v, t0, 10)
        # every edge holds the policy (each heartbeat reads them all)
        for edge in cluster.edges.values():
            assert await wait_for(lambda e=edge: _knows_policy(e, room), 3), edge.name
        # closing the room: the edge viewers see the end; what stays in the cluster is only
        # the revocation of its anchor's token (kicked with the room), until it expires
        async with operator(cluster) as api:
            assert (await api.delete(f"/v1/rooms/{room}")).status_code == 204
        for v in viewers:
            await asyncio.wait_for(v.ended.wait(), 10)
        reg = RedisRegistry(cluster.redis.url)
        try:
            left = await reg.room_policy(room)
            assert left is not None and not left.private and len(left.revoked) == 1
        finally:
            await reg.close()
        for edge in cluster.edges.values():
            assert await wait_for(lambda e=edge: _is_public(e, room), 3), edge.name
    finally:
        for v in viewers:
            await v.close()
        await pub.close()


@pytest.mark.timeout(60)
async def test_a_kicked_anchors_token_is_refused_on_the_edges(cluster: Cluster) -> None:
    """An anchor token may also watch its room; once the operator kicks the anchor, the token
    is refused on every node, not only at the origin where the kick happened."""
    room = "kicks"
    origin = cluster.origin
    kicked = origin.gateway.tokens.mint(room, "anchor", "host", 600)
    pub = await whip_publish(origin.base_url, room, kicked, video=StampedVideoTrack(320, 180, 20))
    viewers: list[Viewer] = []
    again: Publisher | None = None
    try:
        assert await wait_for(lambda: origin.gateway.stages.live_hub(room) is not None, 5)
        edge = cluster.edges["edge-a"]
        viewers.append(await whep_watch(edge.url, room, kicked, kinds=("video",)))  # allowed
        async with operator(cluster) as api:
            anchors = (await api.get(f"/v1/rooms/{room}/anchors")).json()
            assert [a["subject"] for a in anchors] == ["host"]
            r = await api.delete(f"/v1/rooms/{room}/anchors/{anchors[0]['id']}")
            assert r.status_code == 204
        # the kicked anchor's stream ended, and at once a co-host takes over: the viewer below
        # joins the edge without waiting for its pull of the ended stream to be torn down (it
        # must get a new pull, not be attached to the ending one and see its end)
        again = await whip_publish(  # a co-host takes over: the room is live again
            origin.base_url, room, origin.anchor_token(room), video=StampedVideoTrack(320, 180, 20)
        )
        offer = await _offer()
        async with httpx.AsyncClient(timeout=10) as client:
            for node in (cluster.edges["edge-a"], cluster.edges["edge-c"]):
                r = await client.post(
                    f"{node.url}/whep/{room}",
                    content=offer,
                    headers={**SDP_HEADERS, "Authorization": f"Bearer {kicked}"},
                )
                assert_problem(r, 401)
                assert "revoked" in r.json()["detail"]
        t0 = time.time()
        viewers.append(await whep_watch(edge.url, room, origin.audience_token(room)))
        fresh = viewers[-1]
        assert await wait_for(lambda: len(stamped(fresh, t0)) >= 10, 10)
    finally:
        for v in viewers:
            await v.close()
        if again is not None:
            await again.close()
        await pub.close()


@pytest.mark.timeout(60)
async def test_room_made_private_keeps_its_viewers_and_refuses_new_anonymous_ones(
    cluster: Cluster,
) -> None:
    """As at the origin: a room turned private keeps the viewers it has; new ones need a token."""
    room = "turned"
    pub = await publish(cluster, room)  # an implicit (public) room
    b = cluster.edges["edge-b"]
    watcher = await whep_watch(b.url, room, kinds=("video",))  # anonymous
    viewers = [watcher]
    try:
        assert await wait_for(lambda: len(watcher.samples) > 5, 10)
        async with operator(cluster) as api:  # the operator adopts the live room as private
            made = await api.post("/v1/rooms", json={"name": room, "private": True})
            assert made.status_code == 201 and made.json()["live"]
        offer = await _offer()
        async with httpx.AsyncClient(timeout=10) as client:
            for edge in (b, cluster.edges["edge-a"]):  # pulling the room already, and not
                r = await client.post(f"{edge.url}/whep/{room}", content=offer, headers=SDP_HEADERS)
                assert_problem(r, 401)
        token = cluster.origin.audience_token(room)
        viewers.append(await whep_watch(b.url, room, token, kinds=("video",)))
        t0 = time.time()
        await asyncio.sleep(1.5)
        for v in viewers:
            assert_flowing(v, t0, 10)
            assert not v.ended.is_set()
        # the anonymous viewer still ends its own session by its URL, and only it can
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as client:
            assert_problem(await client.delete(viewers[1].location), 401)
            assert (await client.delete(watcher.location)).status_code == 200
    finally:
        for v in viewers:
            await v.close()
        await pub.close()


@pytest.mark.timeout(60)
async def test_room_limit_holds_on_each_edge_and_nodes_lists_the_cluster(cluster: Cluster) -> None:
    room = "capped"
    a, b, c = (cluster.edges[n] for n in ("edge-a", "edge-b", "edge-c"))
    async with operator(cluster) as api:
        made = await api.post("/v1/rooms", json={"name": room, "max_viewers": 2})
        assert made.status_code == 201
    pub = await publish(cluster, room)
    viewers: list[Viewer] = []
    try:
        viewers = [await whep_watch(b.url, room, kinds=("video",)) for _ in range(2)]
        async with httpx.AsyncClient(timeout=10) as client:
            full = await client.post(
                f"{b.url}/whep/{room}", content=await _offer(), headers=SDP_HEADERS
            )
        assert_problem(full, 503)
        assert "retry-after" in full.headers
        viewers.append(await whep_watch(a.url, room, kinds=("video",)))  # per node: a has room
        # GET /v1/nodes: every node of the registry with its role, state and load
        async with operator(cluster) as api:

            async def listing() -> dict[str, dict[str, Any]]:
                r = await api.get("/v1/nodes")
                assert r.status_code == 200
                return {n["id"]: n for n in r.json()}

            def settled(nodes: dict[str, dict[str, Any]]) -> bool:
                return (
                    nodes["edge-b"]["viewers"] == 2
                    and room in nodes["edge-b"]["rooms"]
                    and nodes["edge-a"]["viewers"] == 1
                    and room in nodes["edge-a"]["rooms"]
                    and room in nodes["origin"]["rooms"]
                    and nodes["origin"]["anchors"] >= 1
                    and nodes["origin"]["viewers"] >= 2  # the two edges' pulls
                    and nodes["edge-b"]["egress_bps"] > 0  # its two viewers' frames flow
                )

            assert await wait_for(lambda: _settled_listing(listing, settled), 5)
            nodes = await listing()
        assert list(nodes) == ["edge-a", "edge-b", "edge-c", "origin"]
        origin_url = cluster.origin.base_url
        assert {k: (n["role"], n["upstream"]) for k, n in nodes.items()} == {
            "edge-a": ("edge", origin_url),
            "edge-b": ("edge", origin_url),
            "edge-c": ("edge", a.url),
            "origin": ("origin", ""),
        }
        assert [k for k, n in nodes.items() if n["local"]] == ["origin"]
        assert {k: n["url"] for k, n in nodes.items()} == {
            "edge-a": a.url,
            "edge-b": b.url,
            "edge-c": c.url,
            "origin": origin_url,
        }
        for n in nodes.values():
            assert n["state"] == "up" and not n["draining"]
            assert 0 <= n["heartbeat_age_s"] <= TTL
            assert n["cpu_percent"] >= 0 and n["egress_bps"] >= 0 and n["load"] >= 0
    finally:
        for v in viewers:
            await v.close()
        await pub.close()


@pytest.mark.timeout(60)
async def test_edge_pulls_do_not_use_up_the_rooms_viewer_limit(cluster: Cluster) -> None:
    """``max_viewers`` counts audience members where they watch: two edges pulling a room with a
    limit of one each serve their one viewer (the edges' pulls at the origin are not viewers)."""
    room = "solo"
    a, b = cluster.edges["edge-a"], cluster.edges["edge-b"]
    async with operator(cluster) as api:
        made = await api.post("/v1/rooms", json={"name": room, "max_viewers": 1})
        assert made.status_code == 201
    pub = await publish(cluster, room)
    viewers: list[Viewer] = []
    try:
        viewers = [await whep_watch(edge.url, room, kinds=("video",)) for edge in (a, b)]
        assert await wait_for(lambda: all(len(v.samples) > 5 for v in viewers), 15)
        async with httpx.AsyncClient(timeout=10) as client:
            full = await client.post(
                f"{a.url}/whep/{room}", content=await _offer(), headers=SDP_HEADERS
            )
        assert_problem(full, 503)  # the edge's own viewer limit still holds
    finally:
        for v in viewers:
            await v.close()
        await pub.close()


async def _settled_listing(listing: Any, settled: Any) -> bool:
    return bool(settled(await listing()))


async def _count_is(cluster: Cluster, n: int) -> bool:
    return len(await cluster.node_ids()) == n


async def _gone(cluster: Cluster, node: str) -> bool:
    return node not in await cluster.node_ids()


@pytest.mark.timeout(60)
async def test_sigkilled_edge_viewers_reconnect_elsewhere_within_3s(cluster: Cluster) -> None:
    room = "failover"
    pub = await publish(cluster, room)
    a, b = cluster.edges["edge-a"], cluster.edges["edge-b"]
    # both edges pull the room; edge-a has more viewers, so new viewers go to edge-b
    direct = [await whep_watch(e.url, room, kinds=("video",)) for e in (a, a, b)]
    watchers: list[RetryingViewer] = []
    try:
        gw_cluster = cluster.origin.gateway.cluster
        assert gw_cluster is not None

        def seen() -> bool:
            view = {n.id: n for n in gw_cluster.view}
            return all(
                room in view[e].rooms and view[e].viewers == k
                for e, k in (("edge-a", 2), ("edge-b", 1))
                if e in view
            ) and {"edge-a", "edge-b"} <= set(view)

        assert await wait_for(seen, 10)
        watchers = [RetryingViewer(cluster.origin.base_url, room) for _ in range(2)]
        for w in watchers:
            w.task = asyncio.create_task(w.run())
        # the origin sends them (307) to the less loaded edge already pulling the room
        assert await wait_for(lambda: all(len(w.samples()) > 10 for w in watchers), 10)
        assert all(w.served_by == [b.url] for w in watchers), [w.served_by for w in watchers]

        b.proc.send_signal(signal.SIGKILL)
        killed = time.time()
        await asyncio.to_thread(b.proc.wait, 5)
        assert await wait_for(lambda: all(len(w.viewers) >= 2 for w in watchers), 5)
        assert await wait_for(
            lambda: all(any(t > killed + 0.05 for t in w.samples()) for w in watchers), 4
        )
        for w in watchers:
            back = min(t for t in w.samples() if t > killed + 0.05)
            assert back - killed <= 3.0, f"frames again {back - killed:.2f} s after the kill"
            assert w.served_by[-1] != b.url
            print(f"viewer back {back - killed:.2f} s after SIGKILL via {w.served_by[-1]}")
        # the dead edge is out of the registry within the TTL (default settings: within 5 s)
        assert await wait_for(lambda: _gone(cluster, "edge-b"), 3)
        # and out of the origin's view at its next heartbeat
        assert await wait_for(lambda: all(n.id != "edge-b" for n in gw_cluster.view), 2)
    finally:
        for w in watchers:
            await w.close()
        for v in direct:
            await v.close(delete=False)
        await pub.close()


@contextlib.contextmanager
def origin_on_port(port: int, redis_url: str) -> Iterator[RunningServer]:
    """An origin on a given port (a restart of the cluster's origin at the same address)."""
    cluster = {"node_id": "origin", "redis_url": redis_url, "heartbeat": HEARTBEAT, "node_ttl": TTL}
    limits = {"session_posts_per_second": 100, "session_post_burst": 100}
    with run_server(port, cluster=cluster, limits=limits) as running:
        yield running


@pytest.mark.timeout(60)
async def test_restarted_origin_is_picked_up_again_by_edges(cluster: Cluster) -> None:
    room = "restart"
    pub = await publish(cluster, room)
    a, c = cluster.edges["edge-a"], cluster.edges["edge-c"]
    viewers = [await whep_watch(e.url, room, kinds=("video",)) for e in (a, c)]
    assert await wait_for(lambda: all(len(v.samples) > 5 for v in viewers), 10)
    old = cluster.origin
    port = int(old.base_url.rsplit(":", 1)[1])
    old.server.should_exit = True  # the origin goes away (its anchor and links with it)
    for v in viewers:
        await asyncio.wait_for(v.ended.wait(), 15)  # edge viewers see the end
        await v.close(delete=False)
    await pub.close(delete=False)
    assert await wait_for(lambda: _no_pull(a, room), 10)
    async with httpx.AsyncClient() as client:  # nothing to pull now: 503 (upstream down)
        r = await client.post(
            f"{a.url}/whep/{room}",
            content=(await _offer()),
            headers={"Content-Type": "application/sdp"},
        )
        assert r.status_code in (409, 503) and "retry-after" in r.headers
    await asyncio.to_thread(lambda: [t.join(15) for t in _origin_threads(port)])
    with origin_on_port(port, cluster.redis.url) as again:
        cluster.origin = again
        pub = await publish(cluster, room)
        viewers = [await whep_watch(e.url, room, kinds=("video",)) for e in (a, c)]
        try:
            t0 = time.time()
            await asyncio.sleep(2.0)
            for v in viewers:
                assert_flowing(v, t0, 15)
            assert await wait_for(lambda: _count_is(cluster, 3), 5)  # origin, edge-a, edge-c
        finally:
            for v in viewers:
                await v.close()
            await pub.close()


def _origin_threads(port: int) -> list[Any]:
    import threading

    return [t for t in threading.enumerate() if t.name == f"uvicorn-{port}"]


async def _offer() -> str:
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await close_quietly(pc)
