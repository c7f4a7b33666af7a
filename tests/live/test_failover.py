"""Failover with the cluster's default timing (heartbeat 1 s, node TTL 3 s): a real redis-server,
the origin (uvicorn in this process), edges as ``stagecast relay`` processes, aiortc clients.

* An edge killed (SIGKILL) under a viewer: the viewer, retrying as the watch page does (POST at
  the origin, follow the 307), plays again within 3 s on a live node. Several runs, each killing
  the edge that serves the viewer; ``STAGECAST_FAILOVER_RUNS`` sets how many (default 3).
* An edge frozen (SIGSTOP: its sockets stay open, only its heartbeats stop, as with a hung host):
  the origin stops sending viewers to it once it has missed a heartbeat, long before its record
  expires, and takes it back after its next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiortc import RTCPeerConnection

from gateway.launcher import free_port, free_udp_port
from gateway.synthetic import Publisher, StampedVideoTrack, whep_watch, whip_publish
from relay.cluster.registry_redis import RedisRegistry
from relay.rtc.peer import close_quietly, rtc_configuration
from tests.support.redis_server import RedisProcess, require_redis, run_redis
from tests.support.retrying_viewer import RetryingViewer
from tests.support.server import SECRET, RunningServer, run_server

HEARTBEAT = 1.0  # the defaults of gateway.settings (cluster.heartbeat, cluster.node_ttl)
TTL = 3.0
RUNS = int(os.environ.get("STAGECAST_FAILOVER_RUNS", "3"))
ROOM = "failover"

pytestmark = pytest.mark.slow  # edge processes, Redis, an origin


@dataclass(eq=False)
class Edge:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_edge(name: str, upstream: str, redis_url: str, logdir: Path) -> Edge:
    port = free_port()
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_CLUSTER__HEARTBEAT": str(HEARTBEAT),
        "STAGECAST_CLUSTER__NODE_TTL": str(TTL),
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "100",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "100",
    }
    env.pop("STAGECAST_CONFIG", None)
    log = logdir / f"{name}.log"
    cmd = [sys.executable, "-m", "gateway.cli", "relay", "--upstream", upstream]
    cmd += ["--udp-port", str(free_udp_port())]  # edges on one host: a UDP port each
    cmd += ["--port", str(port), "--redis-url", redis_url, "--node-id", name]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Edge(name, port, proc, log)


@dataclass(eq=False)
class Bed:
    redis: RedisProcess
    origin: RunningServer
    logdir: Path
    edges: list[Edge] = field(default_factory=list)
    started: int = 0

    async def node_ids(self) -> list[str]:
        reg = RedisRegistry(self.redis.url)
        try:
            return [n.id for n in await reg.nodes()]
        finally:
            await reg.close()

    async def add_edge(self, upstream: str = "") -> Edge:
        """A new edge (of the origin, or of ``upstream``), up and in the origin's view."""
        self.started += 1
        up = upstream or self.origin.base_url
        edge = start_edge(f"edge-{self.started}", up, self.redis.url, self.logdir)
        self.edges.append(edge)
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                assert edge.proc.poll() is None, edge.log.read_text()[-2000:]
                assert time.monotonic() < deadline, edge.log.read_text()[-2000:]
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(edge.url + "/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        cluster = self.origin.gateway.cluster
        assert cluster is not None
        assert await wait_for(lambda: any(n.id == edge.name for n in cluster.view), 10)
        return edge

    def live_edges(self) -> list[Edge]:
        return [e for e in self.edges if e.proc.poll() is None]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    require_redis()
    logdir = tmp_path_factory.mktemp("failover-logs")
    with (
        run_redis() as redis,
        run_server(
            cluster={"node_id": "origin", "redis_url": redis.url},
            limits={"session_posts_per_second": 100, "session_post_burst": 100},
        ) as origin,
    ):
        assert origin.settings.cluster.heartbeat == HEARTBEAT
        assert origin.settings.cluster.node_ttl == TTL
        b = Bed(redis, origin, logdir)
        try:
            yield b
        finally:
            for e in b.edges:
                e.stop()


async def wait_for(predicate: object, timeout: float, step: float = 0.05) -> bool:
    async def check() -> bool:
        value = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        return bool(value)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(step)
    return await check()


async def publish(origin: RunningServer, room: str) -> Publisher:
    pub = await whip_publish(
        origin.base_url, room, origin.anchor_token(room), video=StampedVideoTrack(320, 180, 20)
    )
    assert await wait_for(lambda: origin.gateway.stages.live_hub(room) is not None, 5)
    return pub


async def offer() -> str:
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await close_quietly(pc)


@pytest.mark.timeout(60 + 30 * RUNS)
async def test_viewer_of_a_killed_edge_plays_again_within_3s(bed: Bed) -> None:
    pub = await publish(bed.origin, ROOM)
    backs: list[float] = []
    try:
        for _ in range(RUNS):
            while len(bed.live_edges()) < 2:
                await bed.add_edge()
            watcher = RetryingViewer(bed.origin.base_url, ROOM)
            watcher.task = asyncio.create_task(watcher.run())
            try:
                assert await wait_for(lambda w=watcher: len(w.frames_after(0)) > 10, 15)
                serving = next(e for e in bed.live_edges() if e.url == watcher.served_by[-1])
                serving.proc.send_signal(signal.SIGKILL)
                killed = time.time()
                await asyncio.to_thread(serving.proc.wait, 5)
                assert await wait_for(lambda w=watcher, k=killed: w.frames_after(k + 0.05), 6)
                back = watcher.frames_after(killed + 0.05)[0] - killed
                backs.append(back)
                assert watcher.served_by[-1] != serving.url
                dead_tries = [round(t - killed, 2) for t, u in watcher.tried if u == serving.url]
                print(
                    f"viewer back {back:.2f} s after SIGKILL of {serving.name}, "
                    f"via {watcher.served_by[-1]}; 307s to the dead edge at {dead_tries}"
                )
                # the origin hears of the death through the edge's presence link at once
                assert not [t for t in dead_tries if t > 0.5], dead_tries
            finally:
                await watcher.close()
    finally:
        await pub.close()
    print(
        f"kill -> playing again over {len(backs)} runs: p50 {statistics.median(backs):.2f} s,"
        f" max {max(backs):.2f} s"
    )
    assert max(backs) <= 3.0, backs


@pytest.mark.timeout(90)
async def test_frozen_edge_leaves_rotation_when_it_misses_a_heartbeat(bed: Bed) -> None:
    room = "frozen"
    pub = await publish(bed.origin, room)
    watcher = RetryingViewer(bed.origin.base_url, room)
    try:
        while len(bed.live_edges()) < 2:
            await bed.add_edge()
        watcher.task = asyncio.create_task(watcher.run())
        assert await wait_for(lambda: len(watcher.frames_after(0)) > 10, 15)
        # new viewers go to the edge already pulling the room: the one that serves the watcher
        frozen = next(e for e in bed.live_edges() if e.url == watcher.served_by[-1])
        sdp = await offer()
        async with httpx.AsyncClient(timeout=2) as client:

            async def target() -> str:
                r = await client.post(
                    f"{bed.origin.base_url}/whep/{room}",
                    content=sdp,
                    headers={"Content-Type": "application/sdp"},
                )
                assert r.status_code == 307, r.text
                return str(r.headers["location"]).split("/whep/")[0]

            assert await target() == frozen.url
            reg = RedisRegistry(bed.redis.url)
            try:
                frozen.proc.send_signal(signal.SIGSTOP)
                stopped = time.time()
                await asyncio.sleep(0.1)
                record = next(n for n in await reg.nodes() if n.id == frozen.name)
            finally:
                await reg.close()
            last_beat = record.updated_at
            assert stopped - last_beat <= HEARTBEAT + 0.3
            # still listed until its TTL, but out of rotation once it missed one heartbeat
            redirected: list[tuple[float, str]] = []
            while time.time() < last_beat + TTL - 0.3:
                redirected.append((time.time() - last_beat, await target()))
                await asyncio.sleep(0.05)
            late = [(round(t, 2), u) for t, u in redirected if u == frozen.url and t > 1.9]
            assert not late, f"sent to the frozen edge after its missed heartbeat: {late}"
            left = min(t for t, u in redirected if u != frozen.url)
            print(f"frozen edge out of rotation {left:.2f} s after its last heartbeat")
            assert frozen.name in await bed.node_ids()  # (its record has not expired yet)
            frozen.proc.send_signal(signal.SIGCONT)
            resumed = time.time()
            cluster = bed.origin.gateway.cluster
            assert cluster is not None
            assert await wait_for(
                lambda: any(n.id == frozen.name and n.updated_at > resumed for n in cluster.view),
                HEARTBEAT + 1.0,
            ), "the resumed edge's heartbeat did not reach the origin"
    finally:
        await watcher.close()
        await pub.close()


@pytest.mark.timeout(90)
async def test_an_edge_of_a_killed_edge_ends_its_pulls_at_once(bed: Bed) -> None:
    """The child sees its upstream's presence connection break and checks it now, instead of
    after ``cluster.silence_timeout`` (3 s) without media: its viewers hear of the end at once
    (and a player goes back to the origin, which routes it to a live edge)."""
    room = "tree"
    pub = await publish(bed.origin, room)
    parent = await bed.add_edge()
    child = await bed.add_edge(upstream=parent.url)
    viewer = await whep_watch(child.url, room, kinds=("video",))
    try:
        assert await wait_for(lambda: len(viewer.samples) > 10, 15)
        parent.proc.send_signal(signal.SIGKILL)
        killed = time.time()
        await asyncio.to_thread(parent.proc.wait, 5)
        assert await wait_for(viewer.ended.is_set, 6), "the child's viewer never saw the end"
        ended = time.time() - killed
        print(f"the child edge's viewer saw the end {ended:.2f} s after its parent's SIGKILL")
        assert ended < 1.5
    finally:
        await viewer.close(delete=False)
        await pub.close()
        child.stop()
