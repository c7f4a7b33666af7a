"""``stagecast serve --workers 2`` as real processes: the front (origin, HTTP port, ingest) and one
worker edge on the next UDP port. An aiortc anchor publishes; aiortc viewers POST to the front and
are spread over both processes, each decoding frames; their session URLs reach the right process
through the front; /metrics shows both; a killed worker is restarted while the front's viewers
keep playing; a front that exits leaves no worker behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from gateway.launcher import free_port, free_udp_port, stop_process, wait_healthy
from gateway.synthetic import Publisher, StampedVideoTrack, Viewer, whep_watch, whip_publish
from relay.auth.tokens import TokenAuthority
from tests.live.test_protocol import assert_problem
from tests.support.offers import fixture
from tests.support.server import SECRET

# two node processes (four for the relay test), started one after another: slow on a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEY = "workers-operator-key-for-tests"
ROOM = "multi"


@dataclass(eq=False)
class Node:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def workers(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            children: list[psutil.Process] = psutil.Process(self.proc.pid).children()
            return children
        return []

    def worker_port(self) -> int:
        (w,) = self.workers()
        argv = w.cmdline()
        return int(argv[argv.index("--port") + 1])


def start_node(tmp: Path, workers: int = 2, role: tuple[str, ...] = ("serve",)) -> Node:
    port = free_port()
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": KEY,
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_WEBRTC__ADDRESSES": '["127.0.0.1"]',
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "100",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "100",
        # admission by loop lag is not under test: on a loaded machine it would refuse joins
        "STAGECAST_LIMITS__MAX_LOOP_LAG": "30",
        "STAGECAST_LIMITS__MAX_LOOP_BUSY": "1",
    }
    env.pop("STAGECAST_CONFIG", None)
    log = tmp / "node.log"
    cmd = [sys.executable, "-m", "gateway.cli", *role, "--port", str(port)]
    cmd += ["--udp-port", str(free_udp_port()), "--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    node = Node(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_healthy(node.url, timeout=60)
        if workers > 1:
            wait_worker_ready(node)
    except BaseException:
        stop_process(proc)
        raise
    return node


def wait_worker_ready(node: Node, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            port = node.worker_port()
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                time.sleep(1.0)  # the front polls its workers twice a second
                return
        time.sleep(0.2)
    raise TimeoutError(f"no worker became ready: {node.log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = start_node(tmp_path_factory.mktemp("workers"))
    try:
        yield n
    finally:
        stop_process(n.proc)


def anchor_token() -> str:
    return TokenAuthority(SECRET).mint(ROOM, "anchor", "anchor-1", 600)


async def wait_frames(viewers: list[Viewer], n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(v.video_frames < n for v in viewers):
        if time.monotonic() > deadline:
            got = [v.video_frames for v in viewers]
            raise AssertionError(f"viewers did not each decode {n} frames: {got}")
        await asyncio.sleep(0.1)


def on_worker(v: Viewer) -> bool:
    return v.location.rsplit("/", 1)[1].startswith("1.")


OFFER = fixture("aiortc_whep.sdp")


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def room_with_anchor(
    client: httpx.AsyncClient, node: Node, room: str, **config: object
) -> Publisher:
    """A room made through the API with ``config`` (private, max_viewers), its anchor live."""
    made = await client.post("/v1/rooms", json={"name": room, **config}, headers={"X-API-Key": KEY})
    assert made.status_code in (200, 201), made.text
    token = TokenAuthority(SECRET).mint(room, "anchor", "a", 600)
    return await whip_publish(node.url, room, token, video=StampedVideoTrack(320, 240, 15))


async def test_viewers_spread_play_and_reach_their_worker(node: Node) -> None:
    async with asyncio.timeout(90):
        anchor = await whip_publish(
            node.url, ROOM, anchor_token(), video=StampedVideoTrack(320, 240, 15)
        )
        viewers: list[Viewer] = []
        try:
            await asyncio.sleep(1.0)
            for _ in range(4):
                viewers.append(await whep_watch(node.url, ROOM, kinds=("video",)))
            on_it = sum(on_worker(v) for v in viewers)  # 2 unless a poll came in between
            assert 1 <= on_it <= 3, [v.location for v in viewers]
            await wait_frames(viewers, 10, 40)

            async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
                await asyncio.sleep(1.2)  # the worker's count reaches the front's poll
                text = (await client.get("/metrics", headers={"X-API-Key": KEY})).text
                assert metric(text, "stagecast_viewers", worker="1", room=ROOM) == on_it, text
                assert metric(text, "stagecast_viewers", worker="0", room=ROOM) >= 4 - on_it
                assert metric(text, "stagecast_node_viewers") >= 4

                worker_viewer = next(v for v in viewers if on_worker(v))
                auth = {"X-API-Key": KEY}
                r = await client.put(
                    worker_viewer.location + "/layer", json={"layer": "auto"}, headers=auth
                )
                assert r.status_code == 200, r.text
                assert r.json()["mode"] == "auto"
                r = await client.delete(worker_viewer.location, headers=auth)
                assert r.status_code == 200, r.text
                r = await client.delete(worker_viewer.location, headers=auth)
                assert_problem(r, 404)  # it was the worker's session, and it is gone there
                viewers.remove(worker_viewer)
                await worker_viewer.close(delete=False)
                await asyncio.sleep(1.2)
                text = (await client.get("/metrics", headers={"X-API-Key": KEY})).text
                assert metric(text, "stagecast_viewers", worker="1", room=ROOM) == on_it - 1
        finally:
            for v in viewers:
                await v.close()
            await anchor.close()


async def test_bad_resource_ids_and_forged_headers_get_problems(node: Node) -> None:
    async with asyncio.timeout(30), httpx.AsyncClient(base_url=node.url, timeout=10) as client:
        auth = {"X-API-Key": KEY}
        assert_problem(await client.delete(f"/whep/{ROOM}/9.abcdef", headers=auth), 404)
        assert_problem(await client.delete(f"/whep/{ROOM}/x.abcdef", headers=auth), 404)
        bad_id = await client.put(f"/whep/{ROOM}/1.a.b/layer", json={"layer": "auto"}, headers=auth)
        assert_problem(bad_id, 404)
        forged = {"X-Stagecast-Worker-Key": "guess", "Content-Type": "application/sdp"}
        assert_problem(await client.post(f"/whep/{ROOM}", content="v=0", headers=forged), 400)
        # the worker itself serves WHEP to its front only
        direct = f"http://127.0.0.1:{node.worker_port()}/whep/{ROOM}"
        r = await client.post(direct, content="v=0", headers={"Content-Type": "application/sdp"})
        assert_problem(r, 403)


async def test_private_room_is_authorized_at_the_front(node: Node) -> None:
    """A worker knows no room policy: the front checks the viewer's token before any process
    serves it (the POSTs would otherwise reach the worker, which admits anyone)."""
    room = "vip-workers"
    tokens = TokenAuthority(SECRET)
    async with asyncio.timeout(60), httpx.AsyncClient(base_url=node.url, timeout=10) as client:
        anchor = await room_with_anchor(client, node, room, private=True)
        viewers: list[Viewer] = []
        try:
            await asyncio.sleep(1.0)
            for _ in range(4):  # both processes' turns
                r = await client.post(
                    f"/whep/{room}", content=OFFER, headers={"Content-Type": "application/sdp"}
                )
                assert_problem(r, 401)
            # a room ending in an encoded "?" or "#" once skipped the front's checks: its
            # forwarded URL became "POST /whep/ROOM" at the worker, which admits anyone
            for sneaky in (f"{room}%3F/1.x", f"{room}%23/1.x", "..%2F1.x", f"{room}/1.x%3F"):
                r = await client.post(
                    f"/whep/{sneaky}",
                    content=OFFER,
                    headers={"Content-Type": "application/sdp"},
                )
                assert r.status_code in (401, 404, 405, 422), (sneaky, r.status_code)
            head = await client.head(f"/whep/{room}%3F/1.x")
            assert head.status_code != 200
            token = tokens.mint(room, "audience", "v", 600)
            for _ in range(2):
                viewers.append(await whep_watch(node.url, room, token, kinds=("video",)))
            assert any(on_worker(v) for v in viewers)
            await wait_frames(viewers, 5, 40)
        finally:
            for v in viewers:
                await v.close()
            await anchor.close()


async def test_a_rooms_viewer_limit_holds_for_the_whole_node(node: Node) -> None:
    """A worker knows no room policy, and each process counted only its own viewers: a room
    limited to 3 took 3 per process (review finding 4). The front counts them all."""
    room = "capped-workers"
    async with asyncio.timeout(60), httpx.AsyncClient(base_url=node.url, timeout=10) as client:
        anchor = await room_with_anchor(client, node, room, max_viewers=3)
        viewers: list[Viewer] = []
        try:
            await asyncio.sleep(1.0)
            for _ in range(3):
                viewers.append(await whep_watch(node.url, room, kinds=("video",)))
            assert any(on_worker(v) for v in viewers)
            for _ in range(3):  # each process's turn: none takes a fourth
                await asyncio.sleep(0.6)  # a report from every worker in between
                r = await client.post(
                    f"/whep/{room}", content=OFFER, headers={"Content-Type": "application/sdp"}
                )
                assert_problem(r, 503)
            await wait_frames(viewers, 5, 40)
        finally:
            for v in viewers:
                await v.close()
            await anchor.close()


async def test_killed_worker_restarts_and_front_viewers_keep_playing(node: Node) -> None:
    async with asyncio.timeout(120):
        anchor = await whip_publish(
            node.url, ROOM, anchor_token(), video=StampedVideoTrack(320, 240, 15)
        )
        viewers: list[Viewer] = []
        try:
            await asyncio.sleep(1.0)
            for _ in range(2):
                viewers.append(await whep_watch(node.url, ROOM, kinds=("video",)))
            await wait_frames(viewers, 5, 40)
            front_viewer = next(v for v in viewers if not on_worker(v))
            (old,) = node.workers()
            old.kill()
            before = front_viewer.video_frames
            deadline = time.monotonic() + 60
            while True:  # a new worker process, ready
                workers = node.workers()
                if workers and workers[0].pid != old.pid:
                    with contextlib.suppress(httpx.HTTPError, ValueError, psutil.Error):
                        port = node.worker_port()
                        async with httpx.AsyncClient(timeout=1) as c:
                            if (await c.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                                break
                assert time.monotonic() < deadline, node.log.read_text()[-2000:]
                await asyncio.sleep(0.2)
            # it plays on meanwhile (a second's worth, however quick the restart was)
            played = time.monotonic() + 10
            while front_viewer.video_frames <= before + 15:
                assert time.monotonic() < played, (before, front_viewer.video_frames)
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.2)
            more = [await whep_watch(node.url, ROOM, kinds=("video",)) for _ in range(2)]
            viewers += more
            assert any(on_worker(v) for v in more), [v.location for v in more]
            await wait_frames(more, 5, 40)  # the new worker pulls the room again and serves
        finally:
            for v in viewers:
                await v.close()
            await anchor.close()


async def test_relay_with_workers_pulls_once_and_spreads(tmp_path: Path) -> None:
    """``stagecast relay --workers 2``: the front pulls the room once from the origin, its
    worker pulls it from the front; viewers of both play."""
    (tmp_path / "origin").mkdir()
    (tmp_path / "edge").mkdir()
    origin = start_node(tmp_path / "origin", 1)
    edge = start_node(tmp_path / "edge", 2, ("relay", "--upstream", origin.url))
    try:
        async with asyncio.timeout(90):
            anchor = await whip_publish(
                origin.url, ROOM, anchor_token(), video=StampedVideoTrack(320, 240, 15)
            )
            viewers: list[Viewer] = []
            try:
                await asyncio.sleep(1.0)
                for _ in range(4):
                    viewers.append(await whep_watch(edge.url, ROOM, kinds=("video",)))
                assert 1 <= sum(on_worker(v) for v in viewers) <= 3, [v.location for v in viewers]
                await wait_frames(viewers, 10, 40)
                async with httpx.AsyncClient(timeout=10) as client:
                    auth = {"X-API-Key": KEY}
                    text = (await client.get(origin.url + "/metrics", headers=auth)).text
                    assert metric(text, "stagecast_viewers", room=ROOM) == 1, text  # one pull
                    text = (await client.get(edge.url + "/metrics", headers=auth)).text
                    assert metric(text, "stagecast_pulls_opened_total", worker="0") == 1, text
                    assert metric(text, "stagecast_pulls_opened_total", worker="1") == 1, text
            finally:
                for v in viewers:
                    await v.close()
                await anchor.close()
    finally:
        stop_process(edge.proc)
        stop_process(origin.proc)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_front_exit_leaves_no_worker(tmp_path: Path, how: signal.Signals) -> None:
    n = start_node(tmp_path)
    try:
        (worker,) = n.workers()
        n.proc.send_signal(how)
        n.proc.wait(20)
        _gone, alive = psutil.wait_procs([worker], timeout=15)
        assert not alive, f"worker {worker.pid} outlived its front"
    finally:
        stop_process(n.proc)
