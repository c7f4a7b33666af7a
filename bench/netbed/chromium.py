"""A headless Chromium viewer for the test bed: run inside a leg's namespace, it opens the watch
page, plays for ``--seconds`` and prints one JSON line: frames presented, the page's state and
Chromium's own inbound video counters (NACKs and PLIs sent, packets lost, jitter buffer), also
``--tail`` seconds before the end (``inbound_before_tail``: what it decoded over the last
stretch), the picture's size, and with ``--screenshot PATH`` the page as it ended.

    python -m bench.netbed.chromium http://198.18.0.1:8080 bed --seconds 20 [--tail 5]
                                    [--screenshot watch.png]
    python -m bench.netbed.chromium http://198.18.0.1:8080 bed --seconds 30 --bench

``--bench`` prints what ``bench.netbed.peer viewer`` prints for an aiortc viewer (the same keys,
so ``bench.adaptation`` reads both): the WHEP session id, Chromium's own freezes
(freezeCount/totalFreezesDuration, sampled every half second: a growth of the total is a
freeze that ended then), frames decoded, time to first frame, kbit/s, glass-to-glass p50/p95
from the stamps of the presented frames (the watch page's own stamp reader, every other
frame), the decoded resolution over time, and what its audio receiver made of the run
(packets lost, concealed share, concealment events, jitter buffer, FEC/RED blocks used).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import time
from typing import Any

from bench.netbed.playback import gaps

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
AUDIO_KEYS = (
    "packetsLost", "packetsReceived", "packetsDiscarded", "concealedSamples",
    "silentConcealedSamples", "totalSamplesReceived", "concealmentEvents",
    "insertedSamplesForDeceleration", "removedSamplesForAcceleration", "jitterBufferDelay",
    "jitterBufferEmittedCount", "jitterBufferTargetDelay", "fecPacketsReceived",
    "fecPacketsDiscarded",
)  # fmt: skip
"""Chromium's inbound-rtp audio counters the bench keeps (NetEq's: concealment, its jitter
buffer, FEC)."""
INBOUND = """async () => {
  const pc = window.stagecast && window.stagecast.pc;
  if (!pc) return null;
  const out = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audio = AUDIO_KEYS.reduce((a, k) => (a[k] = s[k], a), {});
    }
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      for (const k of ['framesDecoded', 'packetsLost', 'packetsReceived', 'nackCount', 'pliCount',
                       'freezeCount', 'totalFreezesDuration', 'jitterBufferDelay',
                       'jitterBufferEmittedCount', 'retransmittedPacketsReceived',
                       'fecPacketsReceived', 'fecPacketsDiscarded', 'fecBytesReceived',
                       'framesReceived', 'framesDropped', 'frameWidth', 'frameHeight'])
        out[k] = s[k];
    }
  });
  return out;
}""".replace("AUDIO_KEYS", json.dumps(AUDIO_KEYS))


SAMPLE = """async () => {
  const pc = window.stagecast && window.stagecast.pc;
  const out = {firstFrameMs: window.stagecast ? window.stagecast.firstFrameMs : null};
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      for (const k of ['framesDecoded', 'freezeCount', 'totalFreezesDuration', 'frameWidth',
                       'frameHeight', 'bytesReceived', 'packetsLost', 'nackCount', 'pliCount',
                       'retransmittedPacketsReceived', 'jitterBufferTargetDelay',
                       'jitterBufferDelay', 'jitterBufferEmittedCount', 'fecPacketsReceived',
                       'fecPacketsDiscarded']) out[k] = s[k];
    } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioBytes = s.bytesReceived;
      out.audioSamples = s.totalSamplesReceived;
      out.audio = AUDIO_KEYS.reduce((a, k) => (a[k] = s[k], a), {});
    }
  });
  return out;
}""".replace("AUDIO_KEYS", json.dumps(AUDIO_KEYS))
STAMPS = """async () => {
  const { StampReader, latencyMs } = await import('/static/js/stamps.js');
  const video = document.querySelector('#player');
  const reader = new StampReader();
  const bench = window.benchStamps = { latencies: [], frames: 0, times: [] };
  const onFrame = (now, meta) => {
    bench.frames += 1;
    bench.times.push(meta && meta.presentationTime ? meta.presentationTime : now);
    if (bench.frames % 2 === 0 && video.videoWidth) {
      try {
        const stamp = reader.read(video);
        if (stamp) bench.latencies.push(latencyMs(stamp, Date.now()));
      } catch (e) { /* a frame without a readable stamp */ }
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}"""


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def watch_sampled(url: str, room: str, seconds: float, every: float = 0.5) -> dict[str, Any]:
    """Watch for ``seconds`` sampling Chromium's counters every ``every`` s: the keys of
    ``bench.netbed.peer viewer``'s line (monotonic times: one clock in every namespace)."""
    from playwright.async_api import Response, async_playwright

    locations: list[str] = []

    def on_response(resp: Response) -> None:
        if resp.request.method == "POST" and "/whep/" in resp.url and resp.status == 201:
            locations.append(resp.headers.get("location", ""))

    samples: list[tuple[float, dict[str, Any]]] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            page = await browser.new_page()
            page.on("response", on_response)
            joined = time.monotonic()
            await page.goto(f"{url}/watch?room={room}")
            await page.evaluate(STAMPS)
            end = joined + seconds
            while time.monotonic() < end:
                await asyncio.sleep(min(every, max(0.0, end - time.monotonic())))
                samples.append((time.monotonic(), await page.evaluate(SAMPLE)))
            ended = time.monotonic()
            latencies = await page.evaluate(
                "window.benchStamps ? window.benchStamps.latencies : []"
            )
            presented = await page.evaluate("window.benchStamps ? window.benchStamps.frames : 0")
            # the page's clock (ms) onto ours: presentation times of the frames, for the gaps
            before = time.monotonic()
            page_now = await page.evaluate("performance.now()")
            offset = (before + time.monotonic()) / 2 - page_now / 1000
            times = await page.evaluate("window.benchStamps ? window.benchStamps.times : []")
            frame_times = [offset + t / 1000 for t in times]
        finally:
            await browser.close()
    result = bench_result(samples, latencies, presented, locations, joined, ended)
    result["gap_events"] = gaps(sorted(frame_times))
    return result


def bench_result(
    samples: list[tuple[float, dict[str, Any]]],
    latencies: list[float],
    presented: int,
    locations: list[str],
    joined: float,
    ended: float,
) -> dict[str, Any]:
    last = samples[-1][1] if samples else {}
    events = []  # (end, duration): a growth of the total frozen time is a freeze that ended
    before = 0.0
    for at, s in samples:
        total = float(s.get("totalFreezesDuration") or 0.0)
        if total > before:
            events.append((at, total - before))
            before = total
    resolution: list[tuple[float, str]] = []
    for at, s in samples:
        size = f"{s.get('frameWidth')}x{s.get('frameHeight')}" if s.get("frameWidth") else None
        if size is not None and (not resolution or resolution[-1][1] != size):
            resolution.append((round(at - joined, 2), size))
    first_ms = next((s["firstFrameMs"] for _, s in samples if s.get("firstFrameMs")), None)
    span = max(1e-9, ended - joined)
    emitted = float(last.get("jitterBufferEmittedCount") or 0)
    audio = float(last.get("audioSamples") or 0) / 960  # 20 ms Opus frames at 48 kHz
    frozen = sum(d for _, d in events) + (span if first_ms is None else first_ms / 1000)
    return {
        "session": locations[-1].rstrip("/").rsplit("/", 1)[-1] if locations else None,
        "viewer": "chromium",
        "frames": int(last.get("framesDecoded") or 0),
        "presented": presented,
        "stamped": len(latencies),
        "fps": float(last.get("framesDecoded") or 0) / span,
        "kbps": 8
        * float((last.get("bytesReceived") or 0) + (last.get("audioBytes") or 0))
        / 1000
        / span,
        "ttff_s": None if first_ms is None else first_ms / 1000,
        "freezes": int(last.get("freezeCount") or 0),
        "frozen_share": min(1.0, frozen / span),
        "longest_freeze_s": max((d for _, d in events), default=0.0),
        "g2g_p50_ms": percentile(latencies, 50),
        "g2g_p95_ms": percentile(latencies, 95),
        "packets_lost": int(last.get("packetsLost") or 0),
        "nacks": last.get("nackCount"),
        "plis": last.get("pliCount"),
        "rtx_received": last.get("retransmittedPacketsReceived"),
        # its jitter buffer per frame over the run (a playout delay given raises both)
        "jb_target_ms": None
        if not emitted
        else round(1000 * float(last.get("jitterBufferTargetDelay") or 0) / emitted, 1),
        "jb_delay_ms": None
        if not emitted
        else round(1000 * float(last.get("jitterBufferDelay") or 0) / emitted, 1),
        "fec_received": last.get("fecPacketsReceived"),
        "fec_discarded": last.get("fecPacketsDiscarded"),
        "resolution": resolution,
        "joined_at": joined,
        "ended_at": ended,
        "freeze_events": events,
        "audio_frames": audio,
        **audio_result(last.get("audio") or {}),
    }


def audio_result(a: dict[str, Any]) -> dict[str, Any]:
    """What Chromium's audio receiver made of the run: packets lost on the link (a packet RED
    rebuilt still counts lost), the share of the samples it played that were concealment
    (``concealedSamples / totalSamplesReceived``, the silent ones included), concealment
    events, its jitter buffer's delay per sample emitted, and ``fecPacketsReceived`` (Opus
    in-band FEC; this Chromium counts no RED block there: 0 with RED on)."""
    total = float(a.get("totalSamplesReceived") or 0)
    emitted = float(a.get("jitterBufferEmittedCount") or 0)
    lost, received = a.get("packetsLost"), a.get("packetsReceived")
    return {
        "audio_lost": lost,
        "audio_received": received,
        "audio_concealed_share": None
        if not total
        else float(a.get("concealedSamples") or 0) / total,
        "audio_conceal_events": a.get("concealmentEvents"),
        "audio_jb_ms": None
        if not emitted
        else round(1000 * float(a.get("jitterBufferDelay") or 0) / emitted, 1),
        "audio_fec": a.get("fecPacketsReceived"),
        "audio_fec_discarded": a.get("fecPacketsDiscarded"),
    }


HISTOGRAMS = "chrome://histograms/WebRTC.Video"


async def fec_histograms(browser: Any, page: Any) -> dict[str, float]:
    """libwebrtc's own ULPFEC counters, which getStats does not show for video: the receive
    stream records ``WebRTC.Video.ReceivedFecPacketsInPercent`` and
    ``RecoveredMediaPacketsInPercentOfFec`` (media packets rebuilt from parity, per 100 parity
    packets) when it ends, after 10 s or more. The peer connection is closed first; the means
    are read from chrome://histograms (name -> mean)."""
    await page.goto("about:blank")  # the watch page would join again after a close()
    await asyncio.sleep(1.5)
    out: dict[str, float] = {}
    tab = await browser.new_page()
    for _ in range(5):
        await tab.goto(HISTOGRAMS)
        await asyncio.sleep(0.5)
        subprocesses = tab.locator("#subprocess_checkbox")
        if await subprocesses.count() and not await subprocesses.is_checked():
            await subprocesses.check()  # the renderer's histograms (libwebrtc runs there)
            await asyncio.sleep(1.0)
        text = await tab.inner_text("body")
        for line in text.splitlines():
            fields = line.split("Histogram:", 1)[-1].split()
            if "Histogram:" in line and fields and "Fec" in fields[0]:
                mean = line.split("mean =")
                if len(mean) > 1:
                    out[fields[0]] = float(mean[1].split()[0].rstrip(","))
        if out:
            break
    return out


async def watch(
    url: str,
    room: str,
    seconds: float,
    tail: float = 0.0,
    screenshot: str | None = None,
    histograms: bool = False,
) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            page = await browser.new_page()
            await page.goto(f"{url}/watch?room={room}")
            before: dict[str, Any] | None = None
            if 0 < tail < seconds:
                await asyncio.sleep(seconds - tail)
                before = await page.evaluate(INBOUND)
                await asyncio.sleep(tail)
            else:
                await asyncio.sleep(seconds)
            frames = await page.evaluate("window.stagecast ? window.stagecast.framesPresented : 0")
            state = await page.evaluate("window.stagecast ? window.stagecast.state : null")
            inbound = await page.evaluate(INBOUND)
            video = await page.evaluate(
                "(() => { const v = document.querySelector('#player');"
                " return v ? [v.videoWidth, v.videoHeight] : null; })()"
            )
            if screenshot:
                await page.screenshot(path=screenshot, full_page=True)
            fec = await fec_histograms(browser, page) if histograms else None
        finally:
            await browser.close()
    return {
        "fec_histograms": fec,
        "frames": frames,
        "state": state,
        "inbound": inbound,
        "inbound_before_tail": before,
        "tail": tail,
        "video": video,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netbed.chromium")
    parser.add_argument("url")
    parser.add_argument("room")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--bench", action="store_true", help="the bench viewer's result line")
    parser.add_argument("--tail", type=float, default=0.0, help="counters this long before the end")
    parser.add_argument("--screenshot", help="a PNG of the page at the end")
    parser.add_argument(
        "--fec-histograms", action="store_true", help="libwebrtc's ULPFEC counters at the end"
    )
    args = parser.parse_args(argv)
    if args.bench:
        seen = asyncio.run(watch_sampled(args.url, args.room, args.seconds))
    else:
        seen = asyncio.run(
            watch(
                args.url, args.room, args.seconds, args.tail, args.screenshot, args.fec_histograms
            )
        )
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
