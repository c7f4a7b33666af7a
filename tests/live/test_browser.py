"""The pages in a real browser: headless Chromium (Debian package) driven by Playwright.

One Chromium publishes its fake camera and microphone from the publish page; two pages in a
second Chromium watch. The watchers' Chromium runs WITHOUT the fake-media-UI switch, so, like a
real viewer's browser, it offers only mDNS (``.local``) host candidates: the pages' handling of
those is exercised, not bypassed. The console test kicks an anchor that our synthetic (stamped)
client publishes, while a watch page reads the stamps for its latency readout.

Screenshots go to a temporary directory; with ``STAGECAST_SCREENSHOTS=docs`` they replace the
ones under ``docs/`` that the README shows.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import io
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from tests.support.server import RunningServer, run_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BASE_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAKE_MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed"
    if not os.path.exists(CHROMIUM):
        return f"chromium is not installed at {CHROMIUM}"
    return None


if why := _missing():
    if os.environ.get("CI"):  # CI must prove the pages, never skip them
        raise RuntimeError(f"{why}; scripts/bootstrap installs it")
    pytest.skip(f"{why} (scripts/bootstrap installs it)", allow_module_level=True)
playwright_api = importlib.import_module("playwright.async_api")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.environ.get("STAGECAST_SCREENSHOTS") == "docs":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path


@asynccontextmanager
async def chromium(
    *, fake_media: bool, audio_file: Path | None = None, video_file: Path | None = None
) -> AsyncIterator[Any]:
    """A fresh headless Chromium; Playwright gives each launch its own temporary profile.
    ``audio_file``: a WAV the fake microphone plays (in a loop) instead of its own tone;
    ``video_file``: a Y4M the fake camera plays (in a loop) instead of its own pattern."""
    args = BASE_ARGS + (FAKE_MEDIA if fake_media else [])
    if audio_file is not None:
        args = [*args, f"--use-file-for-fake-audio-capture={audio_file}"]
    if video_file is not None:
        args = [*args, f"--use-file-for-fake-video-capture={video_file}"]
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=args,
            timeout=20_000,
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Any, url: str, *, width: int = 1000, height: int = 760) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    await page.goto(url)
    return page


async def until(
    page: Any, expression: str, timeout: float, what: str = "", step: float = 0.1
) -> Any:
    """Polls a JS expression (via CDP, so the pages' CSP stays on) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            state = await page.evaluate("JSON.stringify(window.stagecast || null)")
            raise AssertionError(f"timed out waiting for {what or expression}; state: {state}")
        await asyncio.sleep(step)


async def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def luma_of_png(png: bytes) -> np.ndarray:
    with av.open(io.BytesIO(png), format="png_pipe") as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="gray")


async def watcher_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(await page.evaluate("JSON.stringify(window.stagecast)"))
    return state


@pytest.mark.timeout(100)
async def test_chromium_publishes_and_two_chromium_pages_watch(
    server: RunningServer, shots: Path
) -> None:
    room = "browser"
    token = server.anchor_token(room)
    base = server.base_url
    async with chromium(fake_media=True) as anchor_browser, chromium(fake_media=False) as viewers:
        # The anchor opens the publish page without a token: going live is refused, visibly.
        pub = await open_page(anchor_browser, f"{base}/publish?room={room}&quality=360")
        await until(pub, "window.stagecast.stream && !document.querySelector('#go').disabled", 10)
        await pub.click("#go")
        await until(pub, "window.stagecast.state === 'error'", 10, "the refusal")
        assert "401" in await pub.inner_text("#message")

        # A phone-width viewer arrives before the stream starts: it waits, then plays.
        early = await open_page(viewers, f"{base}/watch?room={room}", width=390, height=844)
        await until(early, "window.stagecast.state === 'waiting'", 10, "waiting for the stream")

        # The anchor pastes the token and goes live.
        await pub.fill("#token", token)
        await pub.click("#go")
        await until(pub, "window.stagecast.state === 'live'", 10, "the anchor going live")
        assert await wait_for(lambda: server.gateway.stages.live_hub(room) is not None, 5)
        hub = server.gateway.stages.live_hub(room)
        assert hub is not None

        # A second viewer joins the live stream: time to first frame, seen from outside too.
        t0 = time.monotonic()
        late = await open_page(viewers, f"{base}/watch?room={room}")
        await until(late, "window.stagecast.framesPresented > 0", 5, "a first frame")
        ttff_outside = time.monotonic() - t0
        await until(early, "window.stagecast.framesPresented > 0", 8, "the early viewer's frame")
        watchers = [early, late]
        for page in watchers:
            # a real viewer's Chromium offers only mDNS host candidates; the page drops them
            sdp = await page.evaluate("window.stagecast.pc.localDescription.sdp")
            host = [ln for ln in sdp.splitlines() if ln.startswith("a=candidate") and "host" in ln]
            assert host and all(".local " in ln for ln in host), host
            await page.click("#mute")  # a user gesture: sound on, the audio meter may start

        frames_before = [await p.evaluate("window.stagecast.framesPresented") for p in watchers]
        await asyncio.sleep(2.5)
        for page, before in zip(watchers, frames_before, strict=True):
            state = await watcher_state(page)
            assert state["state"] == "playing"
            assert state["firstFrameMs"] < 2000, (state["firstFrameMs"], state["timing"])
            assert state["framesPresented"] - before >= 25, state  # ~30 fps, 2.5 s
            quality = await page.evaluate(
                "document.querySelector('#player').getVideoPlaybackQuality().totalVideoFrames"
            )
            assert quality > 30
            assert state["audioEnergy"] > 0, state
            assert 0 < state["stats"]["video"]["width"] <= 640  # the sender adapts to bandwidth
            assert not await page.evaluate("document.querySelector('#player').muted")
            png = await page.locator("#player").screenshot()
            picture = luma_of_png(png)
            assert picture.mean() > 30 and picture.std() > 5, (picture.mean(), picture.std())
        assert ttff_outside < 10.0  # page load included: informative, not the bound
        assert await early.evaluate("document.documentElement.scrollWidth") <= 390
        assert hub.viewer_count == 2

        pub_state = json.loads(await pub.evaluate("JSON.stringify(window.stagecast.stats)"))
        assert pub_state["video"]["bps"] > 20_000, pub_state
        assert "bps" in await pub.inner_text("#r-video")
        assert "%" in await pub.inner_text("#r-loss")
        await pub.screenshot(path=shots / "publish.png")
        await late.screenshot(path=shots / "watch.png")
        await early.screenshot(path=shots / "watch-phone.png")
        for page in watchers:
            state = await watcher_state(page)
            print(
                f"Chromium watcher: first frame {state['firstFrameMs']:.0f} ms after its offer "
                f"({state['timing']}), page load to first frame {ttff_outside:.2f} s"
            )

        # The anchor stops: both watchers see the end, cleanly, and the gateway lets go.
        await pub.click("#stop")
        await until(pub, "window.stagecast.state === 'idle'", 5)
        for page in watchers:
            await until(page, "window.stagecast.state === 'ended'", 5, "the end of the stream")
            assert await page.is_visible("#overlay")
            assert "ended" in await page.inner_text("#overlay")
        frames_at_end = [await p.evaluate("window.stagecast.framesPresented") for p in watchers]
        assert await wait_for(lambda: not server.gateway.anchors.sessions, 5)
        assert await wait_for(lambda: not server.gateway.viewers.sessions, 5)
        await asyncio.sleep(0.5)
        for page, count in zip(watchers, frames_at_end, strict=True):
            assert await page.evaluate("window.stagecast.framesPresented") == count
            assert await page.evaluate("window.stagecast.endedCount") == 1

        # The anchor goes live again: the watchers come back on their own.
        await pub.click("#go")
        await until(pub, "window.stagecast.state === 'live'", 10)
        for page in watchers:
            await until(page, "window.stagecast.connects >= 2", 8, "a reconnect")
            await until(page, "window.stagecast.state === 'playing'", 8, "playing again")

        # An operator kicks the anchor: the publish page says so, the watchers see the end.
        anchor_id = next(iter(server.gateway.anchors.sessions))
        async with httpx.AsyncClient(base_url=base, timeout=5) as api:
            resp = await api.delete(
                f"/v1/rooms/{room}/anchors/{anchor_id}",
                headers={"Authorization": f"Bearer {server.gateway.operator_key}"},
            )
            assert resp.status_code == 204, resp.text
        await until(pub, "window.stagecast.state === 'ended'", 5, "the publisher told")
        assert "ended the session" in await pub.inner_text("#message")
        for page in watchers:
            await until(page, "window.stagecast.state === 'ended'", 5, "the end after the kick")
        for page in [pub, *watchers]:
            assert page.errors == []


@pytest.mark.timeout(60)
async def test_console_kicks_anchor_and_watch_page_reads_stamps(
    server: RunningServer, shots: Path
) -> None:
    room = "console"
    base = server.base_url
    anchor = await whip_publish(
        base,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(480, 270, 30),
        audio=ToneAudioTrack(440),
    )
    try:
        assert await wait_for(lambda: server.gateway.stages.live_hub(room) is not None, 5)
        async with chromium(fake_media=False) as browser:
            watch = await open_page(browser, f"{base}/watch?room={room}")
            await until(watch, "window.stagecast.latencyMs !== null", 8, "a stamped frame")
            await asyncio.sleep(1.0)
            state = await watcher_state(watch)
            assert state["stampedFrames"] >= 3
            assert 0 <= state["latencyMs"] < 1000, state
            assert "ms" in await watch.inner_text("#r-latency")
            print(f"glass-to-glass in Chromium (synthetic anchor): {state['latencyMs']} ms")

            console = await open_page(browser, f"{base}/console#key={server.gateway.operator_key}")
            card = console.locator(f"article[data-room='{room}']")
            await card.locator("[data-viewers='1']").wait_for(timeout=8000)
            anchor_id = next(iter(server.gateway.anchors.sessions))
            kick = card.locator(f"button[data-anchor='{anchor_id}']")
            await kick.wait_for(timeout=5000)
            assert "test-anchor" in await card.inner_text()
            index = await open_page(browser, f"{base}/")
            await index.screenshot(path=shots / "index.png")
            await console.screenshot(path=shots / "console.png", full_page=True)

            await kick.click(timeout=5000)  # arms the button
            assert await kick.inner_text() == "Confirm kick"
            assert server.gateway.anchors.sessions
            await kick.click(timeout=5000)
            assert await wait_for(lambda: not server.gateway.anchors.sessions, 5)
            await until(watch, "window.stagecast.state === 'ended'", 5, "the end of the stream")
            await until(console, "window.stagecast.kicked.length === 1", 5)
            await console.locator(f"li[data-anchor='{anchor_id}']").wait_for(
                state="detached", timeout=5000
            )
            assert await wait_for(lambda: anchor.pc.connectionState in ("closed", "failed"), 10)

            # an operator creates a publish link for a new anchor; its token is in the fragment
            await console.fill("#link-room", room)
            await console.click("#link-form button")
            link = await console.locator("#link-out a").get_attribute("href", timeout=5000)
            assert link is not None and link.startswith(f"{base}/publish?room={room}#token=")
            grant = server.gateway.tokens.verify(link.split("#token=")[1], room=room, role="anchor")
            assert grant.subject == "console"

            # a wrong key is told so
            denied = await open_page(browser, f"{base}/console#key=not-the-key-0123456789")
            await until(denied, "window.stagecast.state === 'denied'", 5)
            assert "401" in await denied.inner_text("#message")
            # every page fits a phone-width screen (no sideways scrolling)
            for path in ("/", "/publish?room=x", "/watch?room=x&autoplay=0", "/console"):
                phone = await open_page(browser, base + path, width=360, height=740)
                assert await phone.evaluate("document.documentElement.scrollWidth") <= 360, path
                await phone.context.close()
            for page in (watch, console, denied):
                assert page.errors == []
    finally:
        await anchor.close()


@pytest.mark.timeout(60)
async def test_chromium_anchor_starts_near_the_bitrate_it_needs(server: RunningServer) -> None:
    """The WHIP answer tells the browser where its bandwidth estimate starts
    (``media.anchor_start_kbps``): a 720p camera sends >= 540p within seconds. From Chrome's own
    300 kbps start it sent 360p for its first ~8 s (measured on this machine)."""
    room = "ramp"
    url = f"{server.base_url}/publish?room={room}&quality=720#token={server.anchor_token(room)}"
    async with chromium(fake_media=True) as browser:
        pub = await open_page(browser, url)
        await until(pub, "window.stagecast.stream && !document.querySelector('#go').disabled", 10)
        await pub.click("#go")
        await until(pub, "window.stagecast.state === 'live'", 10, "the anchor going live")
        t0 = time.monotonic()
        await until(
            pub,
            "(window.stagecast.stats?.video?.width || 0) >= 960",
            5,
            "a >= 540p picture from the start",
        )
        print(f"Chromium anchor at >= 540p {time.monotonic() - t0:.1f} s after going live")
        await pub.click("#stop")
        assert pub.errors == []


def _speech_like_wav(path: Path, seconds: int = 10) -> Path:
    """A mono 48 kHz WAV with pauses, as a host talks: 400 ms of tone, 1.6 s of silence."""
    import wave

    t = np.arange(96000) / 48000
    period = np.where(t < 0.4, 0.3 * np.sin(2 * np.pi * 440 * t), 0.0)
    pcm = (np.tile(period, seconds // 2) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.tobytes())
    return path


async def _chromium_audio_rate(server: RunningServer, room: str, wav: Path) -> tuple[float, int]:
    """(audio packets per second over 4 s, audio frames a WHEP viewer decoded meanwhile) from a
    Chromium anchor whose microphone plays ``wav``."""
    from gateway.synthetic import whep_watch

    url = f"{server.base_url}/publish?room={room}#token={server.anchor_token(room)}"
    async with chromium(fake_media=True, audio_file=wav) as browser:
        pub = await open_page(browser, url)
        await until(pub, "window.stagecast.stream && !document.querySelector('#go').disabled", 10)
        await pub.click("#go")
        await until(pub, "window.stagecast.state === 'live'", 10, "the anchor going live")
        assert await wait_for(lambda: server.gateway.stages.live_hub(room) is not None, 5)
        hub = server.gateway.stages.live_hub(room)
        assert hub is not None
        viewer = await whep_watch(server.base_url, room, kinds=("audio",))
        await asyncio.sleep(1.0)
        meter = hub.meters["audio"]
        frames0, bytes0, heard0 = meter.total_frames, meter.total_bytes, viewer.audio_frames
        t0 = time.monotonic()
        await asyncio.sleep(4.0)
        rate = (meter.total_frames - frames0) / (time.monotonic() - t0)
        size = (meter.total_bytes - bytes0) / max(1, meter.total_frames - frames0)
        print(f"audio bytes per packet {size:.1f}")
        heard = viewer.audio_frames - heard0
        await viewer.close()
        await pub.click("#stop")
        assert pub.errors == []
    return rate, heard


@pytest.mark.timeout(90)
async def test_chromium_anchor_sends_opus_dtx_when_asked(tmp_path: Path) -> None:
    """With ``media.anchor_opus_dtx`` the WHIP answer carries ``usedtx=1`` and Chromium's Opus
    encoder stops sending 50 packets a second while its microphone is silent; without it, it
    sends them all. The viewer hears the tone either way."""
    wav = _speech_like_wav(tmp_path / "speech.wav")
    rates = {}
    for dtx in (True, False):
        with run_server(media={"anchor_opus_dtx": dtx}) as server:
            rate, heard = await _chromium_audio_rate(server, f"dtx{int(dtx)}", wav)
        print(f"Chromium anchor, Opus DTX {'on' if dtx else 'off'}: {rate:.1f} audio packets/s")
        assert heard > 0
        rates[dtx] = rate
    assert rates[False] > 45
    assert rates[True] < 0.7 * rates[False]
