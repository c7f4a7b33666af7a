"""Audience on stage through the pages, in two headless Chromiums with controlled fake devices:
the anchor's camera is red and its microphone a 440 Hz tone (publish page), the viewer's camera
blue and its microphone 1000 Hz (watch page). The viewer raises a hand, the anchor approves on
the publish page, the viewer's tile appears in the program (decoded by an aiortc viewer), the
viewer hears the anchor but not itself (its mix-minus, analysed in the page), the anchor sees
the guest's own stream as a tile and hears the guest but not itself; the viewer steps down and
its tile leaves the program."""

from __future__ import annotations

import asyncio
import json
import math
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from gateway.mixer.compositor import rgb_to_yuv
from tests.live.test_browser import chromium, open_page, shots, until
from tests.live.test_live_path import wait_for
from tests.live.test_mixer_live import SMALL_STAGE, publish, shows
from tests.support.mixer_clients import RGB
from tests.support.server import run_server
from tests.support.stage_guest import go_on_stage, raise_hand, watch_admitted

pytestmark = [pytest.mark.browser, pytest.mark.slow]
__all__ = ["shots"]  # the screenshot fixture (tests/live/test_browser.py)

ANCHOR_HZ, GUEST_HZ = 440.0, 1000.0

# Peak level (dBFS) of each frequency in a page's mix-minus over ~1.5 s (Web Audio analyser).
BANDS_JS = """async ([path, freqs]) => {
  const stream = path.split('.').reduce((o, k) => o && o[k], window);
  if (!stream) return null;
  const ctx = new AudioContext();
  await ctx.resume();
  const an = ctx.createAnalyser();
  an.fftSize = 8192;
  an.smoothingTimeConstant = 0;
  ctx.createMediaStreamSource(stream).connect(an);
  const buf = new Float32Array(an.frequencyBinCount);
  const best = freqs.map(() => -200);
  const hz = ctx.sampleRate / an.fftSize;
  for (let i = 0; i < 15; i++) {
    await new Promise((r) => setTimeout(r, 100));
    an.getFloatFrequencyData(buf);
    freqs.forEach((f, j) => {
      const b = Math.round(f / hz);
      for (let k = b - 2; k <= b + 2; k++) best[j] = Math.max(best[j], buf[k]);
    });
  }
  await ctx.close();
  return best;
}"""


def solid_y4m(path: Path, rgb: tuple[int, int, int], w: int = 320, h: int = 180) -> Path:
    y, u, v = rgb_to_yuv(rgb)
    frame = (
        b"FRAME\n"
        + np.full(w * h, y, np.uint8).tobytes()
        + np.full(w * h // 4, u, np.uint8).tobytes()
        + np.full(w * h // 4, v, np.uint8).tobytes()
    )
    path.write_bytes(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode() + frame * 30)
    return path


def tone_wav(path: Path, hz: float, seconds: float = 2.0) -> Path:
    rate = 48000
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.3 * 32767 * np.sin(2 * math.pi * hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


async def bands(page: Any, path: str) -> dict[float, float]:
    levels = await page.evaluate(BANDS_JS, [path, [ANCHOR_HZ, GUEST_HZ]])
    assert levels is not None, f"no stream at {path}"
    return dict(zip((ANCHOR_HZ, GUEST_HZ), levels, strict=True))


async def hears(
    page: Any, path: str, loud: float, quiet: float, timeout: float
) -> dict[float, float]:
    """Until ``loud`` stands 20 dB above ``quiet`` in the page's stream at ``path``."""
    deadline = time.monotonic() + timeout
    while True:
        lv = await bands(page, path)
        if lv[loud] > -70 and lv[loud] - lv[quiet] > 20:
            return lv
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: wanted {loud} Hz over {quiet} Hz, got {lv}")


@pytest.mark.timeout(240)
async def test_a_viewer_raises_a_hand_goes_on_stage_through_the_pages_and_steps_down(
    tmp_path: Path, shots: Path
) -> None:
    room = "pagestage"
    with run_server(stage=SMALL_STAGE) as server:
        gw = server.gateway
        anchor_token = gw.tokens.mint(room, "anchor", "host", 600)
        async with (
            chromium(
                fake_media=True,
                video_file=solid_y4m(tmp_path / "red.y4m", RGB["red"]),
                audio_file=tone_wav(tmp_path / "a.wav", ANCHOR_HZ),
            ) as anchor_browser,
            chromium(
                fake_media=True,
                video_file=solid_y4m(tmp_path / "blue.y4m", RGB["blue"]),
                audio_file=tone_wav(tmp_path / "g.wav", GUEST_HZ),
            ) as guest_browser,
        ):
            publish = await open_page(
                anchor_browser,
                f"{server.base_url}/publish?room={room}&quality=360#token={anchor_token}",
            )
            await until(publish, "window.stagecast.stream !== null", 15, "the camera")
            await publish.click("#go")
            await until(publish, "window.stagecast.state === 'live'", 20, "the anchor live")
            program = await watch_admitted(server.base_url, f"/whep/{room}")
            try:
                assert await shows(program, {(0.5, 0.5): "red"}, 20), program.colour_at(0.5, 0.5)

                watch = await open_page(guest_browser, f"{server.base_url}/watch?room={room}")
                await until(watch, "window.stagecast.state === 'playing'", 20, "the viewer playing")
                await watch.fill("#guest-name", "Gina")
                await watch.click("#raise")
                await until(watch, "window.stagecast.stage.state === 'pending'", 10, "hand raised")

                # the anchor sees the raised hand on the publish page and approves it
                pending = publish.locator("#requests li[data-state='pending']", has_text="Gina")
                await pending.wait_for(timeout=5000)
                await pending.locator("button.approve").click()
                assert await shows(program, {(0.25, 0.5): "red", (0.75, 0.5): "blue"}, 20), (
                    program.colour_at(0.25, 0.5),
                    program.colour_at(0.75, 0.5),
                )
                tile_at = time.time() * 1000
                approved_at = await publish.evaluate("window.stagecast.cohosts.decided[0].at")
                marks = await watch.evaluate(
                    "[stagecast.stage.approvedAt, stagecast.stage.publishedAt]"
                )
                print(
                    f"approval (click) -> token at the guest {marks[0] - approved_at:.0f} ms, "
                    f"WHIP answered {marks[1] - approved_at:.0f} ms, tile in the program "
                    f"{tile_at - approved_at:.0f} ms"
                )
                await until(watch, "window.stagecast.stage.state === 'on-stage'", 10, "on stage")
                guest_id = await watch.evaluate("window.stagecast.stage.anchorId")
                assert [s.grant.subject.startswith("guest-") for s in gw.anchors.in_room(room)] == [
                    False,
                    True,
                ]
                # the guest hears the anchor, never itself; its program audio is muted
                lv = await hears(watch, "stagecast.stage.mixminusStream", ANCHOR_HZ, GUEST_HZ, 20)
                print(f"guest's mix-minus (dBFS): {lv}")
                assert await watch.evaluate("document.querySelector('#player').muted")
                # the anchor's page: the guest's own stream as a tile, the guest in its ears
                await until(
                    publish,
                    f"(window.stagecast.cohosts.tiles[{guest_id!r}] || {{}}).frames > 10",
                    15,
                    "the co-host tile playing",
                )
                own = "new URL(window.stagecast.session.location).pathname.split('/').pop()"
                await until(publish, f"window.stagecast.cohosts.mixminus === {own}", 15, "its own")
                lv = await hears(
                    publish, "stagecast.cohosts.mixminusStream", GUEST_HZ, ANCHOR_HZ, 20
                )
                print(f"anchor's mix-minus (dBFS): {lv}")
                assert int(await publish.locator("#viewers").inner_text()) >= 2
                await publish.screenshot(path=shots / "publish-stage.png", full_page=True)
                await watch.screenshot(path=shots / "watch-stage.png", full_page=True)

                # the guest steps down: its tile leaves the program, it keeps watching
                await watch.click("#leave-stage")
                await until(watch, "window.stagecast.stage.state === 'left'", 10, "left the stage")
                assert await wait_for(lambda: len(gw.anchors.in_room(room)) == 1, 10)
                assert await shows(program, {(0.25, 0.5): "red", (0.75, 0.5): "red"}, 20)
                await until(publish, "Object.keys(window.stagecast.cohosts.tiles).length === 0", 10)
                await until(watch, "window.stagecast.state === 'playing'", 5, "still watching")
                assert not await watch.evaluate("document.querySelector('#mute').disabled")

                # again, and this time the anchor removes the guest from the publish page
                await watch.click("#raise")
                pending = publish.locator("#requests li[data-state='pending']", has_text="Gina")
                await pending.wait_for(timeout=5000)
                await pending.locator("button.approve").click()
                await until(watch, "window.stagecast.stage.state === 'on-stage'", 20, "on stage")
                assert await shows(program, {(0.75, 0.5): "blue"}, 20)
                on_stage = publish.locator("#requests li[data-state='joined']", has_text="Gina")
                await on_stage.locator("button.remove").click()
                await until(watch, "window.stagecast.stage.state === 'left'", 10, "removed")
                assert "took you off" in await watch.locator("#guest-status").inner_text()
                assert await wait_for(lambda: len(gw.anchors.in_room(room)) == 1, 10)
                assert await shows(program, {(0.75, 0.5): "red"}, 20)
                await until(watch, "window.stagecast.state === 'playing'", 5, "still watching")
                assert watch.errors == [] and publish.errors == []
            finally:
                await program.close()


@pytest.mark.timeout(240)
async def test_the_console_runs_a_show(tmp_path: Path, shots: Path) -> None:
    """The console's show panel: the stage's tiles, a raised hand approved there (an aiortc
    guest goes on stage), per-anchor mute, the layout picker, recording and an HLS bridge
    started and stopped, a chatting viewer muted, the charts filling, the nodes listed, and the
    guest removed."""
    room = "consoleshow"
    with run_server(
        stage=SMALL_STAGE,
        recording={"dir": str(tmp_path / "rec"), "min_free_mb": 0, "stop_free_mb": 0},
    ) as server:
        gw = server.gateway
        host = await publish(server, room, "red")
        assert await wait_for(lambda: gw.stages.live_hub(room) is not None, 10)
        viewer_token = gw.tokens.mint(room, "audience", "chatty", 600)
        async with (
            chromium(fake_media=False) as browser,
            httpx.AsyncClient(base_url=server.base_url, timeout=20) as client,
            websockets.connect(
                f"ws://127.0.0.1:{server.settings.port}/rooms/{room}/messages?access_token={viewer_token}"
            ) as chat,
        ):
            console = await open_page(
                browser, f"{server.base_url}/console#key={gw.operator_key}", width=1300
            )
            card = console.locator(f".room[data-room='{room}']")
            await card.wait_for(timeout=10_000)
            await card.locator("button.run-show").click()
            await until(console, f"window.stagecast.show.room === {room!r}", 5)
            host_id = gw.stages.get(room).anchor_ids[0]  # type: ignore[union-attr]
            await until(
                console,
                f"(stagecast.show.stage.tiles[{host_id!r}] || {{}}).frames > 5",
                15,
                "host tile",
            )

            # a raised hand, approved in the console; the guest (aiortc) goes on stage
            hand = await raise_hand(client, room, "Gus")
            joining = asyncio.create_task(go_on_stage(server.base_url, hand, "blue", 1000.0))
            pending = console.locator("#show .requests li[data-state='pending']", has_text="Gus")
            await pending.wait_for(timeout=5000)
            await pending.locator("button.approve").click()
            _, guest = await joining
            try:
                assert await wait_for(lambda: len(gw.anchors.in_room(room)) == 2, 10)
                guest_id = (await hand.state())["anchor_id"]
                await until(
                    console,
                    f"(stagecast.show.stage.tiles[{guest_id!r}] || {{}}).frames > 5",
                    15,
                    "guest tile",
                )
                # mute the guest in the program mix
                row = console.locator(f"#show .mixer-controls li[data-anchor='{guest_id}']")
                await row.locator("input.mute").check()
                stage = gw.stages.get(room)
                assert stage is not None
                assert await wait_for(
                    lambda: guest_id in stage.audio and stage.audio[guest_id].muted, 5
                )
                # the layout picker
                await console.select_option("#show select.layout", "speaker")
                assert await wait_for(
                    lambda: stage.layout is not None and stage.layout.mode == "speaker", 5
                )
                # recording on and off
                await console.click("#show button.rec-start")
                await until(
                    console,
                    "document.querySelector('#show .rec-state').dataset.recording === 'yes'",
                    10,
                )
                await console.click("#show button.rec-stop")
                await until(
                    console,
                    "document.querySelector('#show .rec-state').dataset.recording === 'no'",
                    15,
                )
                # an HLS bridge on and off
                await console.click("#show .bridge-form button")
                await console.locator("#show .bridges li").wait_for(timeout=10_000)
                await console.locator("#show .bridges li button").click()
                await console.locator("#show .bridges li").wait_for(
                    state="detached", timeout=15_000
                )
                # a chatting viewer is muted from the console
                await chat.send(json.dumps({"type": "chat", "text": "buy my stuff"}))
                line = console.locator("#show .show-chat li", has_text="buy my stuff")
                await line.wait_for(timeout=10_000)
                await line.locator("button").click()
                await console.locator("#show .mutes li", has_text="chatty").wait_for(timeout=10_000)
                # charts have been filling; the node is listed
                await until(
                    console,
                    "Number(document.querySelector('#show .chart-viewers').dataset.points) >= 3",
                    15,
                )
                await until(console, "document.querySelectorAll('#nodes tr').length === 1", 5)
                await console.locator("#show").screenshot(path=shots / "console-show.png")
                # the guest is removed from the console: off stage, its token revoked
                await row.locator("button").click()  # arms it
                await row.locator("button", has_text="Confirm").click()
                assert await wait_for(lambda: len(gw.anchors.in_room(room)) == 1, 10)
                assert (await hand.state())["state"] == "removed"
                assert console.errors == []
            finally:
                await guest.close()
        await host.close()
