"""LL-HLS across an anchor's absence, as real players see it: the playlist keeps moving while the
anchor is away (RFC 8216 §6.2.1); ffmpeg's HLS reader and hls.js in headless Chromium, left
open, play on after the anchor returns without a fatal error or a reload; an anchor whose camera
stalls resumes after the slate from a keyframe. Also HEAD on HLS resources (RFC 9110 §9.3.2).

hls.js comes from npm (``package.json``; scripts/bootstrap runs ``npm ci``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from gateway.bridge.fmp4 import BoxSplitter, parse_fragment, parse_init
from gateway.bridge.service import default_ffmpeg
from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from relay.media.stamps import read_stamp
from tests.support.server import RunningServer, run_server

ROOT = Path(__file__).resolve().parents[2]
HLS_JS = ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BRIDGE = {"backoff_initial": 0.2, "backoff_max": 1.0, "stop_timeout": 2.0}
WIDTH, HEIGHT = 640, 360


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed"
    if not os.path.exists(CHROMIUM):
        return f"chromium is not installed at {CHROMIUM}"
    if not HLS_JS.is_file():
        return f"hls.js is not installed at {HLS_JS}"
    return None


def operator(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url,
        headers={"X-API-Key": server.gateway.operator_key},
        timeout=15,
    )


async def wait_state(api: httpx.AsyncClient, path: str, states: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = (await api.get(path)).json()
        if body.get("state") in states:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never reached {states}: {body}")


async def publish(server: RunningServer, room: str) -> Any:
    return await whip_publish(
        server.base_url,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(WIDTH, HEIGHT, 30),
        audio=ToneAudioTrack(440),
        video_codec="H264",
    )


@asynccontextmanager
async def hls_bridge(
    tmp_path: Path, room: str, **settings: Any
) -> AsyncIterator[tuple[RunningServer, str]]:
    with run_server(bridge={**BRIDGE, "hls_dir": str(tmp_path / "hls"), **settings}) as server:
        async with operator(server) as api:
            assert (await api.post("/v1/rooms", json={"name": room})).status_code == 201
            made = await api.post(f"/v1/rooms/{room}/bridges", json={"kind": "hls"})
            assert made.status_code == 201, made.text
            yield server, made.headers["location"]


class PlaylistWatch:
    """Polls the playlist the way a classic player reloads it; records when it last changed."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client, self.url = client, url
        self.longest_still = 0.0
        self.texts: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last_text, changed_at = None, time.monotonic()
        while True:
            resp = await self.client.get(self.url)
            now = time.monotonic()
            if resp.status_code == 200:
                # what players compare: the listed segments (the last one growing parts counts)
                media = [ln for ln in resp.text.splitlines() if ln and not ln.startswith("#")]
                key = "\n".join(media) + str(resp.text.count("#EXT-X-PART:"))
                if key != last_text:
                    last_text, changed_at = key, now
                    self.texts.append(resp.text)
                self.longest_still = max(self.longest_still, now - changed_at)
            await asyncio.sleep(0.1)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def assert_head_matches_get(client: httpx.AsyncClient, base: str) -> None:
    """RFC 9110 §9.3.2: HEAD answers the headers GET would (Content-Length included)."""
    playlist = base + "index.m3u8"
    for _attempt in range(10):  # the playlist may change between the two requests
        head, get = await client.head(playlist), await client.get(playlist)
        assert head.status_code == get.status_code == 200 and head.content == b""
        if int(head.headers["content-length"]) == len(get.content):
            break
    else:
        raise AssertionError(f"HEAD says {head.headers}, GET returned {len(get.content)} bytes")
    for name in ("content-type", "cache-control"):
        assert head.headers[name] == get.headers[name]
    text = get.text
    files = re.findall(r'URI="([^"]+\.(?:mp4|m4s))"', text)
    files += [ln for ln in text.splitlines() if ln.endswith(".m4s") and not ln.startswith("#")]
    assert len(files) >= 3
    for name in files[-3:]:
        head, get = await client.head(base + name), await client.get(base + name)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(get.content) > 0, name
        for key in ("content-type", "cache-control"):
            assert head.headers[key] == get.headers[key]
    missing = await client.head(base + "nothing-here.m4s")
    assert missing.status_code == 404


class FfmpegPlayer:
    """ffmpeg reading the HLS playlist (to a null output), its decoded frame count followed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames = 0
        self.stderr = b""
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *[default_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error"],
            *["-i", self.url, "-f", "null", "-progress", "pipe:1", "-"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            key, _, value = line.decode("ascii", "replace").strip().partition("=")
            if key == "frame" and value.isdigit():
                self.frames = int(value)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self._proc.kill()
        assert self._proc.stderr is not None
        self.stderr = await self._proc.stderr.read()
        await self._proc.wait()
        if self._reader is not None:
            await self._reader


# -- the playlist over HTTP ------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_playlist_keeps_moving_while_the_anchor_is_away(tmp_path: Path) -> None:
    """RFC 8216 §6.2.1: a live playlist gets a new segment at least every 1.5 target durations;
    while the anchor is away the bridge lists slate (black, silent) segments, media sequence
    numbers and discontinuity sequence numbers only grow, no URI is ever listed twice with
    other content, and the anchor's return shows up in the same playlist."""
    async with (
        hls_bridge(tmp_path, "away") as (server, path),
        operator(server) as api,
        httpx.AsyncClient(base_url=server.base_url, timeout=15) as player,
    ):
        pub = await publish(server, "away")
        await wait_state(api, path, {"running"}, 15)
        await asyncio.sleep(2.0)
        watch = PlaylistWatch(player, "/hls/away/index.m3u8")
        watch.start()
        ffmpeg = FfmpegPlayer(f"{server.base_url}/hls/away/index.m3u8")
        await ffmpeg.start()
        try:
            await asyncio.sleep(2.0)
            at_leave = ffmpeg.frames
            await pub.close()
            await wait_state(api, path, {"waiting"}, 10)
            away_since = time.monotonic()
            await asyncio.sleep(5.0)  # several target durations (1 s) with no anchor
            still_while_away = watch.longest_still
            at_return = ffmpeg.frames
            pub = await publish(server, "away")
            await wait_state(api, path, {"running"}, 15)
            await asyncio.sleep(3.0)
            at_end = ffmpeg.frames
            # ffmpeg's HLS reader, left open, goes on through the slate and after the return
            assert ffmpeg.running, ffmpeg.stderr
            print(
                f"ffmpeg HLS reader frames: {at_leave} at leave, {at_return} after 5 s away, "
                f"{at_end} 3 s after the return"
            )
            assert at_leave > 0 and at_return - at_leave > 60 and at_end - at_return > 45
        finally:
            await ffmpeg.stop()
        await watch.stop()
        await assert_head_matches_get(player, "/hls/away/")
        await pub.close()
        assert time.monotonic() - away_since > 5.0
        assert still_while_away <= 1.5, f"playlist unchanged for {still_while_away:.1f} s"

        # sequence numbers only grow; a URI keeps its media sequence number
        uri_msn: dict[str, int] = {}
        last_seq = last_dseq = -1
        for text in watch.texts:
            seq = int(re.search(r"EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1))  # type: ignore[union-attr]
            dseq = int(re.search(r"EXT-X-DISCONTINUITY-SEQUENCE:(\d+)", text).group(1))  # type: ignore[union-attr]
            assert seq >= last_seq and dseq >= last_dseq
            last_seq, last_dseq = seq, dseq
            msn = seq
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    assert uri_msn.setdefault(line, msn) == msn, (line, text)
                    msn += 1
        assert "#EXT-X-ENDLIST" not in watch.texts[-1]


class StallingVideo(StampedVideoTrack):
    """A camera that stops delivering for a while, then goes on where the clock is (its RTP
    timestamps jump over the pause, as a real capture clock's do)."""

    def __init__(self) -> None:
        super().__init__(WIDTH, HEIGHT, 30)
        self.stalled_until = 0.0

    async def recv(self) -> Any:
        wait = self.stalled_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
            self.counter += round(wait * self.fps)  # the frames it did not capture
        return await super().recv()


@pytest.mark.timeout(60)
async def test_a_stalled_anchor_gets_the_slate_then_resumes_from_a_keyframe(
    tmp_path: Path,
) -> None:
    """The anchor stays connected but sends no video for 2.5 s: the slate fills in, and the same
    ffmpeg run comes back after it from an independent part (a keyframe is asked for)."""
    async with (
        hls_bridge(tmp_path, "stall", hls_window=30) as (server, path),
        operator(server) as api,
        httpx.AsyncClient(base_url=server.base_url, timeout=15) as player,
    ):
        video = StallingVideo()
        pub = await whip_publish(
            server.base_url,
            "stall",
            server.anchor_token("stall"),
            video=video,
            audio=ToneAudioTrack(440),
            video_codec="H264",
        )
        try:
            await wait_state(api, path, {"running"}, 15)
            await asyncio.sleep(2.0)
            before = video.counter
            video.stalled_until = time.monotonic() + 2.5
            await asyncio.sleep(2.2)
            text = (await player.get("/hls/stall/index.m3u8")).text
            assert "slate0.mp4" in text, text  # the playlist went on without the picture
            deadline = time.monotonic() + 10
            back = None
            while back is None and time.monotonic() < deadline:
                text = (await player.get("/hls/stall/index.m3u8")).text
                back = resumed_after_slate(text)
                await asyncio.sleep(0.2)
            assert back is not None, f"the stream never came back after the slate:\n{text}"
            # back in the same run (no ffmpeg restart), from a keyframe
            init_name, segment = back
            assert init_name.endswith("-init0.mp4"), text
            state = (await api.get(path)).json()
            assert state["runs"] == 1 and state["restarts"] == 0, state
            init = await player.get(f"/hls/stall/{init_name}")
            media = await player.get(f"/hls/stall/{segment}")
            assert init.status_code == media.status_code == 200
            moov = next(b for b in BoxSplitter().feed(init.content) if b.type == "moov")
            moof = next(b for b in BoxSplitter().feed(media.content) if b.type == "moof")
            first = parse_fragment(moof.data, parse_init(moov.data))
            assert first.independent and first.duration > 0, first
            # and it decodes: the anchor's stamps go on past the pause
            counters = await asyncio.to_thread(stamp_counters, init.content + media.content)
            assert counters and counters[0] >= before + 2.0 * 30, (before, counters)
        finally:
            await pub.close()


def resumed_after_slate(text: str) -> tuple[str, str] | None:
    """(init, segment) of the first complete segment of a stream listed after a slate segment,
    if the playlist has one."""
    init, slate_seen = "", False
    for line in text.splitlines():
        if line.startswith("#EXT-X-MAP:"):
            init = line.split('URI="')[1].rstrip('"')
            slate_seen = slate_seen or "-slate" in init
        elif line and not line.startswith("#") and slate_seen and "-slate" not in init:
            return init, line
    return None


def stamp_counters(data: bytes) -> list[int]:
    counters = []
    with av.open(io.BytesIO(data), format="mp4") as container:
        for frame in container.decode(video=0):
            plane = frame.planes[0]
            luma = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
            stamp = read_stamp(luma[:, : frame.width])
            if stamp is not None:
                counters.append(stamp.counter)
    return counters


# -- hls.js in Chromium ---------------------------------------------------------------------------
PAGE = """<!doctype html><html><body>
<video id="v" muted autoplay playsinline width="320" height="180"></video>
<script src="/__test__/hls.js"></script>
<script>
window.player = {errors: [], fatal: [], frags: [], changed: [], levelUpdates: 0};
const video = document.getElementById('v');
const hls = new Hls({lowLatencyMode: true, debug: false});
hls.on(Hls.Events.ERROR, (_e, d) => {
  const what = d.details + (d.error ? ': ' + String(d.error.message) : '');
  window.player.errors.push(what);
  if (d.fatal) window.player.fatal.push(what);
});
hls.on(Hls.Events.FRAG_BUFFERED, (_e, d) => window.player.frags.push([d.frag.sn, d.frag.cc]));
hls.on(Hls.Events.FRAG_CHANGED, (_e, d) => window.player.changed.push([d.frag.sn, d.frag.cc]));
hls.on(Hls.Events.LEVEL_UPDATED, () => { window.player.levelUpdates += 1; });
hls.loadSource(PLAYLIST);
hls.attachMedia(video);
window.decodedFrames = () => video.getVideoPlaybackQuality().totalVideoFrames;
</script></body></html>"""


@asynccontextmanager
async def hls_page(base_url: str, playlist: str) -> AsyncIterator[Any]:
    playwright_api = importlib.import_module("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--autoplay-policy=no-user-gesture-required",
            ],
            timeout=20_000,
        )
        try:
            page = await browser.new_page()
            page.errors = []
            page.on("pageerror", lambda exc: page.errors.append(str(exc)))
            html = PAGE.replace("PLAYLIST", json.dumps(playlist))

            async def serve_page(route: Any) -> None:
                await route.fulfill(status=200, content_type="text/html", body=html)

            async def serve_js(route: Any) -> None:
                await route.fulfill(status=200, content_type="text/javascript", path=str(HLS_JS))

            # served as if from the gateway's origin: the page's requests are same-origin
            await page.route(f"{base_url}/__test__/page.html", serve_page)
            await page.route(f"{base_url}/__test__/hls.js", serve_js)
            await page.goto(f"{base_url}/__test__/page.html")
            yield page
        finally:
            await browser.close()


def newest_cc(playlist: str) -> int:
    """hls.js's ``frag.cc`` of the newest segment: the discontinuity sequence number."""
    match = re.search(r"EXT-X-DISCONTINUITY-SEQUENCE:(\d+)", playlist)
    assert match is not None, playlist
    return int(match.group(1)) + playlist.count("#EXT-X-DISCONTINUITY\n")


async def player_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(await page.evaluate("JSON.stringify(window.player)"))
    state["frames"] = await page.evaluate("window.decodedFrames()")
    state["time"] = await page.evaluate("document.getElementById('v').currentTime")
    return state


async def until_frames(page: Any, more_than: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state = await player_state(page)
    while time.monotonic() < deadline:
        state = await player_state(page)
        assert not state["fatal"], "\n".join(state["fatal"])
        if state["frames"] > more_than:
            return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"the player did not reach {more_than} frames: {state}")


@pytest.mark.browser
@pytest.mark.timeout(90)
async def test_hls_js_plays_on_after_the_anchor_returns(tmp_path: Path) -> None:
    if why := _missing():
        if os.environ.get("CI"):
            raise RuntimeError(f"{why}; scripts/bootstrap installs it")
        pytest.skip(f"{why} (scripts/bootstrap installs it)")
    async with hls_bridge(tmp_path, "hlsjs") as (server, path), operator(server) as api:
        pub = await publish(server, "hlsjs")
        await wait_state(api, path, {"running"}, 15)
        await asyncio.sleep(2.0)
        async with hls_page(server.base_url, "/hls/hlsjs/index.m3u8") as page:
            first = await until_frames(page, 30, 20)
            assert first["changed"], first

            await pub.close()  # the anchor goes away for a while, the page stays open
            await wait_state(api, path, {"waiting"}, 10)
            left = await player_state(page)
            await asyncio.sleep(5.0)
            away = await player_state(page)
            assert not away["fatal"], away
            # meanwhile the player plays on (the slate) rather than stalling at the last frame
            print(
                f"away 5 s: {away['frames'] - left['frames']} frames, "
                f"{away['time'] - left['time']:.2f} s played"
            )
            assert away["time"] - left["time"] > 3.0, (left, away)

            pub = await publish(server, "hlsjs")  # ... and comes back
            await wait_state(api, path, {"running"}, 15)
            await asyncio.sleep(1.0)
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                text = (await client.get("/hls/hlsjs/index.m3u8")).text
            cc_back = newest_cc(text)
            # playback reaches the anchor's new run (a later discontinuity) and keeps going
            deadline = time.monotonic() + 20
            state = await player_state(page)
            while time.monotonic() < deadline:
                state = await player_state(page)
                assert not state["fatal"], "\n".join(state["fatal"])
                if any(cc >= cc_back for _sn, cc in state["changed"]):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"playback never reached the anchor's return: {state}")
            later = await until_frames(page, state["frames"] + 45, 15)
            assert later["time"] > state["time"]
            assert not page.errors, page.errors
            await pub.close()
