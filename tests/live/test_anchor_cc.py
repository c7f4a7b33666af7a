"""Transport-cc feedback on the anchor's leg (issue 17, part 4): a Chromium anchor ramps on its
own congestion control; a client without transport-cc keeps aiortc's REMB."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from typing import Any

import pytest

from bench.anchor_ramp import (
    CHROMIUM,
    CHROMIUM_ARGS,
    MAX_BITRATE,
    STATS_JS,
    busy_camera,
    publish_url,
    rates,
)
from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from tests.support.server import RunningServer


def _anchor_congestion(server: RunningServer) -> Any:
    sessions = server.call(lambda: list(server.gateway.anchors.sessions.values()))
    assert len(sessions) == 1
    return sessions[0].congestion


@pytest.mark.timeout(30)
async def test_an_anchor_without_transport_cc_keeps_remb(server: RunningServer) -> None:
    """aiortc (like ffmpeg and OBS) offers abs-send-time and goog-remb, no transport-cc."""
    anchor = await whip_publish(
        server.base_url,
        "remb",
        server.anchor_token("remb"),
        video=StampedVideoTrack(320, 180, 30),
        audio=ToneAudioTrack(440),
    )
    try:
        answer = anchor.pc.remoteDescription.sdp
        assert "goog-remb" in answer and "abs-send-time" in answer
        assert "transport-cc" not in answer
        congestion = _anchor_congestion(server)
        assert congestion is not None and not congestion.negotiated
    finally:
        await anchor.close()


def _no_browser() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed"
    if not os.path.exists(CHROMIUM):
        return f"chromium is not installed at {CHROMIUM}"
    return None


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_chromium_anchor_ramps_to_its_rate_and_720p(server: RunningServer) -> None:
    """Before (REMB only): 720p after 6 s or later, the estimate falling to 0.3-1.7 Mbit/s with
    aiortc's REMB (the same with a 2.5 Mbit/s start). With transport-cc feedback: estimate
    5-6.6 Mbit/s, target >= 90 % of 2.5 Mbit/s at 2.0-2.3 s, 720p at 4.0-4.1 s
    (bench/anchor_ramp, loopback; once 8 s); 720p from the first frames since the publish
    page starts the encoder keeping its resolution."""
    if why := _no_browser():
        if os.environ.get("CI"):
            raise RuntimeError(why)
        pytest.skip(why)
    from playwright.async_api import async_playwright

    room = "twcc"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(publish_url(server.base_url, room, server.anchor_token(room)))
            await _until(page, "window.stagecast.stream && !document.querySelector('#go').disabled")
            await page.click("#go")
            await _until(page, "window.stagecast.state === 'live'")
            t0 = time.monotonic()
            answer = await page.evaluate("window.stagecast.pc.remoteDescription.sdp")
            start = server.gateway.settings.media.anchor_cc_start_kbps
            assert f"x-google-start-bitrate={start}" in answer  # an offer with transport-cc
            # its estimate past the configured 2.5 Mbit/s and the encoder's target near it from
            # 3 s on (the start rate alone gives the target at first; REMB pulls both down), and
            # 720p (Chromium's encoder steps up from 540p by its QP-based quality scaler, at ~4 s
            # mostly, 8 s once in 12 runs; with REMB at 6 s or later: not what this test tells)
            t_rate = t_720 = None
            last: dict[str, Any] = {}
            while time.monotonic() - t0 < 10.0 and (t_rate is None or t_720 is None):
                last = await page.evaluate(STATS_JS) or {}
                now = time.monotonic() - t0
                rate = last.get("target", 0) >= 2e6 and (last.get("avail") or 0) >= 2.5e6
                if t_rate is None and now >= 3.0 and rate:
                    t_rate = now
                if t_720 is None and last.get("w", 0) >= 1280:
                    t_720 = now
                await asyncio.sleep(0.1)
            print(f"rate held at {t_rate} s, 720p at {t_720} s; last {last}")
            congestion = _anchor_congestion(server)
            assert congestion is not None and congestion.negotiated
            assert congestion.stats.feedback_packets > 20  # ~20 a second
            assert t_rate is not None, f"estimate or target fell below 2.5/2 Mbit/s: {last}"
            assert t_720 is not None, f"no 720p within 10 s of going live: {last}"
            # the page starts the encoder at full size (before: 540p or 360p first, 720p
            # after 4-8 s, Chromium's quality scaler stepping up)
            assert t_720 <= 3.0, f"720p only after {t_720:.1f} s"

            await page.click("#stop")
        finally:
            await browser.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_chromium_anchor_sends_its_configured_rate_within_seconds(
    server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Issue 17, part 4: on a clean link a Chromium anchor publishing 720p (maxBitrate 2.5
    Mbit/s) reaches its configured bitrate within 3 s, and stays there. Camera: a detailed 720p
    clip (Chromium's own pattern encodes to ~0.4 Mbit/s whatever it may send). The answer's
    start bitrate (media.anchor_cc_start_kbps) has it send that from its first frames; what
    transport-cc feedback decides is whether it keeps it. bench.anchor_ramp, loopback, load
    18-31, 3 runs: 2.3-2.5 Mbit/s over the run's second half (before kernel receive stamps:
    1.2-2.6; REMB only: 0.5-1.7). The bound on reaching it is 5 s (a loaded machine's Chromium
    is slow to start its encoder); falling back (REMB capping it, arrivals stamped late reading
    as queueing) shows in the encoder's mean target from 3 s to 8 s."""
    if why := _no_browser():
        if os.environ.get("CI"):
            raise RuntimeError(why)
        pytest.skip(why)
    from playwright.async_api import async_playwright

    camera = busy_camera(tmp_path_factory.getbasetemp() / "anchor-720p.mjpeg")
    room = "rate"
    async with async_playwright() as pw:
        args = [*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}"]
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(publish_url(server.base_url, room, server.anchor_token(room)))
            await _until(page, "window.stagecast.stream && !document.querySelector('#go').disabled")
            await page.click("#go")
            await _until(page, "window.stagecast.state === 'live'")
            t0 = time.monotonic()
            samples: list[dict[str, Any]] = []
            while (now := time.monotonic() - t0) < 8.0:
                sample = await page.evaluate(STATS_JS)
                if sample is not None:
                    samples.append({**sample, "t": now})
                await asyncio.sleep(0.2)
            rate = rates(samples)
            shown = [(round(t, 1), round(b / 1e6, 2)) for t, b in rate]
            reached = next((t for t, b in rate if b >= 0.8 * MAX_BITRATE), None)
            # the encoder's target (what its congestion control allows), not the bytes: a loaded
            # machine's encoder misses its target now and then without any feedback to blame
            held = [x["target"] for x in samples if x["t"] >= 3.0]
            print(f"80 % of {MAX_BITRATE} bit/s at {reached} s; Mbit/s over time {shown}")
            congestion = _anchor_congestion(server)
            assert congestion is not None and congestion.negotiated
            assert reached is not None and reached <= 5.0, (
                f"80 % of the configured rate not sent within 5 s (Mbit/s over 0.5 s: {shown}; "
                f"last {samples[-1] if samples else None})"
            )
            # and kept: an estimate that collapses after the start (loop stalls read as
            # queueing, a REMB cap) shows here
            assert held and sum(held) / len(held) >= 0.8 * MAX_BITRATE, (
                f"the target fell back after {reached:.1f} s ({[round(b / 1e6, 2) for b in held]}"
                f" Mbit/s from 3 s; sent over 0.5 s: {shown})"
            )
            await page.click("#stop")
        finally:
            await browser.close()


async def _until(page: Any, expression: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        await asyncio.sleep(0.1)
