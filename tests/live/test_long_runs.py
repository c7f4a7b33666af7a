"""Long runs, one per client kind, before a release (not in the default run):

    STAGECAST_LONG=1 STAGECAST_LONG_MINUTES=10 scripts/test tests/live/test_long_runs.py -s

Each runs a gateway process for ``STAGECAST_LONG_MINUTES`` (default 10) with one client kind:
aiortc viewers, Chromium viewers (the watch page, Playwright on /usr/bin/chromium), an ffmpeg
WHIP anchor (imageio-ffmpeg's ffmpeg) and hls.js in Chromium (from ``node_modules``, which
scripts/bootstrap installs, or ``STAGECAST_HLSJS``). Steady clients stay the whole time while
others join and leave every few seconds. Asserted: nothing dropped (the anchor stays, every
joining viewer gets frames, the steady viewers get ~every frame), nothing frozen (no gap of a
second in a steady viewer's frames), nothing leaked (tasks, threads, fds, peer connections and
sessions of /v1/runtime back to their baseline once every client has gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.launcher import gateway_process
from gateway.synthetic import (
    Publisher,
    StampedVideoTrack,
    ToneAudioTrack,
    Viewer,
    whep_watch,
    whip_publish,
)
from relay.auth.tokens import TokenAuthority

LONG = os.environ.get("STAGECAST_LONG", "") == "1"
MINUTES = float(os.environ.get("STAGECAST_LONG_MINUTES", "10"))
SECONDS = MINUTES * 60
TIMEOUT = SECONDS + 240
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
HLSJS = os.environ.get("STAGECAST_HLSJS", "") or str(
    ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js"  # scripts/bootstrap: npm ci
)
HAVE_CHROMIUM = Path(CHROMIUM).exists()
HAVE_HLSJS = bool(HLSJS) and Path(HLSJS).is_file()
SECRET = "long-run-secret-" + "l" * 40
KEY = "long-run-operator-key-0123456789"
FPS = 20
FROZEN = 1.0  # a steady viewer with no frame for this long froze

pytestmark = [
    pytest.mark.long,
    pytest.mark.slow,
    pytest.mark.skipif(not LONG, reason="a long run: STAGECAST_LONG=1 (STAGECAST_LONG_MINUTES)"),
]


@dataclass(eq=False)
class Gateway:
    base: str
    tokens: TokenAuthority
    api: httpx.AsyncClient
    samples: list[dict[str, Any]] = field(default_factory=list)

    async def runtime(self, deep: bool = False) -> dict[str, Any]:
        resp = await self.api.get("/v1/runtime", params={"deep": "true"} if deep else {})
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    async def settle(self, baseline: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """The runtime once every session has gone and tasks/threads/fds are back to the
        baseline, or as it is when ``timeout`` passes (a leak stays above it)."""
        deadline = time.monotonic() + timeout
        while True:
            rt = await self.runtime(deep=True)
            done = rt["anchor_sessions"] == 0 and rt["viewer_sessions"] == 0
            done = done and rt["peer_connections"] == 0
            done = done and all(rt[k] <= baseline[k] for k in ("tasks", "threads", "fds"))
            if done or time.monotonic() > deadline:
                return rt
            await asyncio.sleep(0.5)

    async def publish(self, room: str) -> Publisher:
        token = self.tokens.mint(room, "anchor", "long-run", SECONDS + 600)
        video = StampedVideoTrack(320, 180, FPS)
        return await whip_publish(self.base, room, token, video=video, audio=ToneAudioTrack())

    async def sample_runtime(self, until: float) -> None:
        while time.monotonic() < until:
            with contextlib.suppress(httpx.HTTPError):
                self.samples.append(await self.runtime())
            await asyncio.sleep(10)


@contextlib.asynccontextmanager
async def gateway(tmp: Path, **env: str) -> AsyncIterator[tuple[Gateway, dict[str, Any]]]:
    """A gateway process, warmed up (codecs, thread pools in the baseline), and its baseline."""
    settings = {
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": KEY,
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "100",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "100",
        "STAGECAST_SESSIONS__RECONNECT_GRACE": "0",
        **env,
    }
    with (
        (tmp / "gateway.log").open("wb") as log,
        gateway_process(settings, stderr=log) as (base, _),
    ):
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=15) as api:
            gw = Gateway(base, TokenAuthority(SECRET), api)
            warm = await gw.publish("warm")
            viewer = await join(base, "warm", kinds=("video",))
            assert await wait_for(lambda: len(viewer.samples) > 5, 15)
            await viewer.close()
            await warm.close()
            baseline = await gw.settle({"tasks": 10**6, "threads": 10**6, "fds": 10**6})
            baseline = await gw.settle(baseline, timeout=5)  # once more, after the stragglers
            yield gw, baseline


async def wait_for(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


async def join(base: str, room: str, within: float = 10.0, **kw: Any) -> Viewer:
    """A viewer, as a player joins: a 503 or 409 (busy, not live yet) is tried again."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await whep_watch(base, room, **kw)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in (409, 503) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def worst_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(sorted(times))), default=0.0)


def gaps_over(times: list[float], limit: float) -> list[tuple[float, float]]:
    """(seconds into the run, length) of each gap longer than ``limit``."""
    times = sorted(times)
    return [
        (round(a - times[0], 1), round(b - a, 2))
        for a, b in itertools.pairwise(times)
        if b - a > limit
    ]


def assert_steady(viewer: Viewer, name: str, published: int) -> None:
    times = [s.received_at for s in viewer.samples]
    counters = [s.counter for s in viewer.samples]
    assert not viewer.ended.is_set(), f"{name}: its session ended"
    gap = worst_gap(times)
    load = os.getloadavg()[0]
    assert gap < FROZEN, f"{name}: froze {gaps_over(times, FROZEN)} (load average {load:.1f})"
    assert counters == sorted(counters), f"{name}: frames out of order"
    got = len(set(counters))
    assert got >= 0.97 * published, f"{name}: {got} of {published} frames"


# asyncio's default executor keeps up to this many idle threads once some client made it start
# them (getaddrinfo of a browser's mDNS candidates): bounded, not a leak
EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)


def assert_nothing_leaked(gw: Gateway, baseline: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("tasks", "fds"):
        assert after[key] <= baseline[key], (key, baseline, after.get("task_kinds"))
    assert after["threads"] <= baseline["threads"] + EXECUTOR_THREADS, (baseline, after)
    assert after["peer_connections"] == 0 and after["viewer_sessions"] == 0
    assert after["anchor_sessions"] == 0
    peak = max((s["tasks"] for s in gw.samples), default=None)
    print(f"baseline {baseline['tasks']} tasks / {baseline['fds']} fds; peak {peak} tasks")
    print(f"after: {after['tasks']} tasks, {after['fds']} fds, rss {after['rss_bytes'] >> 20} MiB")


@dataclass(eq=False)
class Churn:
    """aiortc viewers that join, watch 2-6 s and leave, one after another, until ``until``."""

    base: str
    room: str
    until: float
    joined: int = 0
    failures: list[str] = field(default_factory=list)
    first_frames: list[float] = field(default_factory=list)

    async def run(self) -> None:
        rng = random.Random(7)
        while time.monotonic() < self.until - 8:
            self.joined += 1
            try:
                viewer = await join(self.base, self.room, kinds=("video", "audio"))
            except httpx.HTTPError as exc:
                self.failures.append(f"join {self.joined}: {exc!r}")
                continue
            try:
                # any decoded frame (an ffmpeg anchor's carry no stamps, so no samples)
                if not await wait_for(lambda v=viewer: v.first_frame_at is not None, 5):
                    self.failures.append(f"viewer {self.joined}: no frame within 5 s")
                else:
                    assert viewer.time_to_first_frame is not None
                    self.first_frames.append(viewer.time_to_first_frame)
                await asyncio.sleep(rng.uniform(2, 6))
            finally:
                await viewer.close()
            await asyncio.sleep(rng.uniform(0.5, 2))


@pytest.mark.timeout(TIMEOUT)
async def test_aiortc_viewers_long_run(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (gw, baseline):
        room = "long-aiortc"
        pub = await gw.publish(room)
        until = time.monotonic() + SECONDS
        steady = [await join(gw.base, room, kinds=("video", "audio")) for _ in range(2)]
        churn = [Churn(gw.base, room, until) for _ in range(3)]
        started = time.time()
        try:
            await asyncio.gather(gw.sample_runtime(until), *(c.run() for c in churn))
            published = (time.time() - started) * FPS
            for i, v in enumerate(steady):
                assert_steady(v, f"steady viewer {i}", int(published * 0.99))
                assert v.audio_frames > 0
        finally:
            for v in steady:
                await v.close()
            await pub.close()
        failures = [f for c in churn for f in c.failures]
        joined = sum(c.joined for c in churn)
        ttff = sorted(t for c in churn for t in c.first_frames)
        print(f"{joined} viewers joined and left; first frame p50 {ttff[len(ttff) // 2]:.2f} s")
        assert not failures, failures
        assert_nothing_leaked(gw, baseline, await gw.settle(baseline))


@pytest.mark.timeout(TIMEOUT)
async def test_ffmpeg_whip_anchor_long_run(tmp_path: Path) -> None:
    import imageio_ffmpeg

    from tests.live.test_ffmpeg_whip import ffmpeg_process
    from tests.support.ffmpeg_whip import whip_push_argv

    async with gateway(tmp_path) as (gw, baseline):
        room = "long-ffmpeg"
        token = gw.tokens.mint(room, "anchor", "ffmpeg", SECONDS + 600)
        argv = whip_push_argv(
            imageio_ffmpeg.get_ffmpeg_exe(), f"{gw.base}/whip/{room}", token, SECONDS + 30
        )
        until = time.monotonic() + SECONDS
        async with ffmpeg_process(argv) as proc:
            ok = False
            async with httpx.AsyncClient(base_url=gw.base, timeout=5) as client:
                deadline = time.monotonic() + 20
                while not ok and time.monotonic() < deadline:
                    ok = (await client.head(f"/whep/{room}")).status_code == 200
                    await asyncio.sleep(0.2)
            assert ok, "the ffmpeg anchor never went live"
            steady = await join(gw.base, room, kinds=("video",), decode=False)
            assert "a=ice-lite" in steady.pc.remoteDescription.sdp  # the node's one UDP port
            churn = Churn(gw.base, room, until)
            churn_task = asyncio.create_task(churn.run())
            frames: list[tuple[float, int]] = []
            try:
                while time.monotonic() < until:
                    await asyncio.sleep(0.5)
                    frames.append((time.monotonic(), steady.video_frames))
                    rt = await gw.runtime()
                    elapsed = time.monotonic() - until + SECONDS
                    assert rt["anchor_sessions"] == 1, f"the anchor was dropped {elapsed:.0f} s in"
                    assert proc.returncode is None, (
                        f"ffmpeg exited ({proc.returncode}) {elapsed:.0f} s in"
                    )
                print(f"the ffmpeg anchor stayed {time.monotonic() - until + SECONDS:.0f} s")
                stalls = [t1 - t0 for (t0, n0), (t1, n1) in itertools.pairwise(frames) if n1 == n0]
                load = os.getloadavg()[0]
                assert not stalls, f"the steady viewer froze: {stalls} (load average {load:.1f})"
                assert not steady.ended.is_set()
            finally:
                churn_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await churn_task
                await steady.close()
        assert not churn.failures, churn.failures
        assert_nothing_leaked(gw, baseline, await gw.settle(baseline))


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        pytest.skip(f"chromium is not installed at {CHROMIUM}")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"],
            timeout=20_000,
        )
        try:
            yield browser
        finally:
            await browser.close()


PLAYING = "window.stagecast && window.stagecast.framesPresented > 0"


async def frames_presented(page: Any) -> int:
    return int(await page.evaluate("window.stagecast.framesPresented"))


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.browser
async def test_chromium_viewers_long_run(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (gw, baseline):
        room = "long-chromium"
        pub = await gw.publish(room)
        until = time.monotonic() + SECONDS
        watch = f"{gw.base}/watch?room={room}"
        async with chromium() as browser:
            steady = await browser.new_page()
            await steady.goto(watch)
            assert await _until(steady, PLAYING, 15)
            sampler = asyncio.create_task(gw.sample_runtime(until))
            counts: list[tuple[float, int]] = []
            joined = failed = 0
            next_join = time.monotonic()
            page = None
            try:
                while time.monotonic() < until:
                    counts.append((time.monotonic(), await frames_presented(steady)))
                    if time.monotonic() >= next_join:  # one page joins, the one before leaves
                        if page is not None:
                            await page.close()
                        page = await browser.new_page()
                        await page.goto(watch)
                        joined += 1
                        if not await _until(page, PLAYING, 8):
                            failed += 1
                        next_join = time.monotonic() + 10
                    await asyncio.sleep(0.5)
                state = json.loads(await steady.evaluate("JSON.stringify(window.stagecast)"))
            finally:
                sampler.cancel()
                if page is not None:
                    await page.close()
                await steady.close()
        await pub.close()
        worst = max(
            (t1 - t0 for (t0, n0), (t1, n1) in itertools.pairwise(counts) if n1 == n0),
            default=0.0,
        )
        print(f"{joined} Chromium pages joined and left; steady page: {state['connects']} connect")
        assert failed == 0, f"{failed} of {joined} pages got no frame"
        assert state["connects"] == 1 and state["state"] == "playing", state
        assert worst < 1.5, f"the steady page froze ({worst:.1f} s without a new frame)"
        assert_nothing_leaked(gw, baseline, await gw.settle(baseline))


async def _until(page: Any, expression: str, timeout: float) -> bool:
    """Polls a JS expression through CDP (the pages' CSP stays on) until it is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await page.evaluate(expression):
                return True
        await asyncio.sleep(0.1)
    return False


HLS_PAGE = """
<video id=v muted autoplay playsinline></video>
<script>
window.player = { errors: [], fatal: [], starts: 0 };
window.startPlayer = (url) => {
  if (window.hls) window.hls.destroy();
  const hls = new Hls({ lowLatencyMode: true });
  hls.on(Hls.Events.ERROR, (_e, d) => {
    window.player.errors.push(d.details);
    if (d.fatal) window.player.fatal.push(d.details);
  });
  hls.loadSource(url);
  hls.attachMedia(document.getElementById('v'));
  window.hls = hls;
  window.player.starts += 1;
};
</script>
"""


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.browser
async def test_hlsjs_players_long_run(tmp_path: Path) -> None:
    if not HAVE_HLSJS:
        pytest.skip(f"no hls.min.js at {HLSJS} (scripts/bootstrap installs it)")
    hls_dir = tmp_path / "hls"
    env = {"STAGECAST_BRIDGE__HLS_DIR": str(hls_dir)}
    async with gateway(tmp_path, **env) as (gw, baseline):
        room = "long-hls"
        assert (await gw.api.post("/v1/rooms", json={"name": room})).status_code == 201
        made = await gw.api.post(f"/v1/rooms/{room}/bridges", json={"kind": "hls"})
        assert made.status_code == 201, made.text
        playlist = gw.base + made.json()["playlist_url"]
        pub = await gw.publish(room)
        until = time.monotonic() + SECONDS
        async with chromium() as browser:
            pages = []
            for _ in range(2):  # one steady player, one that starts again every 20 s
                page = await browser.new_page()
                await page.goto(gw.base + "/healthz")  # the gateway's origin: no CORS needed
                await page.set_content(HLS_PAGE)
                await page.add_script_tag(path=HLSJS)
                await page.evaluate("url => window.startPlayer(url)", playlist)
                pages.append(page)
            steady, churn = pages
            times: list[tuple[float, float]] = []
            restarts = 0
            next_restart = time.monotonic() + 20
            try:
                assert await _until(steady, "document.getElementById('v').currentTime > 1", 30)
                while time.monotonic() < until:
                    now = time.monotonic()
                    times.append(
                        (now, await steady.evaluate("document.getElementById('v').currentTime"))
                    )
                    if now >= next_restart:
                        await churn.evaluate("url => window.startPlayer(url)", playlist)
                        restarts += 1
                        assert await _until(
                            churn, "document.getElementById('v').currentTime > 0.5", 20
                        ), "a restarted hls.js player did not play"
                        next_restart = time.monotonic() + 20
                    await asyncio.sleep(1.0)
                state = [
                    json.loads(await p.evaluate("JSON.stringify(window.player)")) for p in pages
                ]
            finally:
                for p in pages:
                    await p.close()
        await pub.close()
        assert (await gw.api.delete(f"/v1/rooms/{room}")).status_code == 204  # and its bridge
        stuck = [t1 - t0 for (t0, c0), (t1, c1) in itertools.pairwise(times) if c1 <= c0]
        print(f"hls.js: {restarts} restarts; errors {state[0]['errors'][:10]}")
        assert not state[0]["fatal"] and not state[1]["fatal"], state
        assert sum(stuck) < 3.0, f"the steady hls.js player stalled {sum(stuck):.1f} s"
        assert_nothing_leaked(gw, baseline, await gw.settle(baseline))
