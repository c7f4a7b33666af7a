"""GOP cache or not: what a Chromium viewer joining a stream whose source ignores keyframe
requests (ffmpeg's WHIP muxer, 2 s GOP) sees with ``media.gop_cache_kb`` off and on.

One gateway per mode (a process, ``gateway.cli serve``), the same ffmpeg source (720p30 x264
CBR, ``--gop`` frames), then ``--joins`` headless Chromium viewers one after the other, each
joining at another point of the GOP. Per join: time from the WHEP POST to the first decoded
frame (``framesDecoded`` in getStats, polled every 10 ms), and over the 2 s that follow the
first 3 s of playing: the jitter buffer's delay per frame (``jitterBufferDelay /
jitterBufferEmittedCount``, what the receiver adds on top of the network), frames decoded per
second, and freezes (``totalFreezesDuration``). A cache that made viewers play behind live
would show up in the jitter buffer figure; one that broke decoding, in fps and freezes.

    python -m bench.gop_cache                     # 12 joins per mode, 2 s GOP
    python -m bench.gop_cache --joins 20 --gop 120
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import imageio_ffmpeg

from bench.fanout import ROOM, SECRET, Children, free_port, pct, wait_healthy
from bench.netbed.chromium import ARGS, CHROMIUM  # one launch recipe for every bench
from bench.peer import Source, whip_source_argv
from relay.auth.tokens import TokenAuthority

JOIN_JS = """
async (url) => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((ok) => {
    if (pc.iceGatheringState === 'complete') return ok();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && ok();
    setTimeout(ok, 2000);
  });
  const t0 = performance.now();
  const resp = await fetch(url, {method: 'POST', body: pc.localDescription.sdp,
                                 headers: {'Content-Type': 'application/sdp'}});
  if (resp.status !== 201) return {error: 'WHEP ' + resp.status};
  const location = new URL(resp.headers.get('location'), url).toString();
  await pc.setRemoteDescription({type: 'answer', sdp: await resp.text()});
  const video = async () => {
    const stats = await pc.getStats();
    for (const s of stats.values()) if (s.type === 'inbound-rtp' && s.kind === 'video') return s;
    return null;
  };
  let ttff = null;
  while (performance.now() - t0 < 10000) {
    const s = await video();
    if (s && s.framesDecoded > 0) { ttff = performance.now() - t0; break; }
    await new Promise((r) => setTimeout(r, 10));
  }
  if (ttff === null) { pc.close(); return {error: 'no frame in 10 s'}; }
  await new Promise((r) => setTimeout(r, 3000));
  const a = await video();
  await new Promise((r) => setTimeout(r, 2000));
  const b = await video();
  pc.close();
  await fetch(location, {method: 'DELETE'});
  const emitted = b.jitterBufferEmittedCount - a.jitterBufferEmittedCount;
  return {
    ttff,
    jitter_ms: emitted ? 1000 * (b.jitterBufferDelay - a.jitterBufferDelay) / emitted : null,
    fps: (b.framesDecoded - a.framesDecoded) / 2,
    freezes_s: b.totalFreezesDuration || 0,
    decoded: b.framesDecoded,
  };
}
"""


async def one_mode(
    cache_kb: int, args: argparse.Namespace, children: Children, browser: Any
) -> list[dict[str, Any]]:
    port = free_port()
    env = {
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_AUTH__ANONYMOUS_AUDIENCE": "true",
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_MEDIA__GOP_CACHE_KB": str(cache_kb),
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "1000",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "1000",
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--udp-port", "0"]
    server = await children.start(f"gateway-{cache_kb}", argv, env=env)
    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    try:
        await wait_healthy(url, server)
        token = TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600)
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        source = Source(kbps=args.kbps, gop=args.gop)
        src = await children.start(
            f"source-{cache_kb}", whip_source_argv(exe, source, f"{url}/whip/{ROOM}", token)
        )
        await asyncio.sleep(4)  # the first GOPs are in
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{url}/healthz")  # same origin as the WHEP endpoint
        step = args.gop / 30 / args.joins * 1.37  # joins land all over the GOP
        for i in range(args.joins):
            r = await page.evaluate(JOIN_JS, f"{url}/whep/{ROOM}")
            r["join"] = i
            results.append(r)
            print(f"  cache {cache_kb} KiB join {i}: {r}", flush=True)
            await asyncio.sleep(step)
        await context.close()
        await children.stop(src)
    finally:
        await children.stop(server)
    return results


def row(name: str, rs: list[dict[str, Any]]) -> str:
    ok = [r for r in rs if "ttff" in r]
    ttff = [float(r["ttff"]) for r in ok]
    jit = [float(r["jitter_ms"]) for r in ok if r.get("jitter_ms") is not None]
    fps = [float(r["fps"]) for r in ok]
    frz = [float(r["freezes_s"]) for r in ok]

    def f(v: float | None, d: int = 0) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    return (
        f"| {name} | {len(ok)}/{len(rs)} | {f(pct(ttff, 50))} / {f(pct(ttff, 95))} / "
        f"{f(max(ttff, default=None))} | {f(statistics.median(jit) if jit else None, 1)} / "
        f"{f(max(jit, default=None), 1)} | {f(statistics.median(fps) if fps else None, 1)} "
        f"| {f(sum(frz), 2)} |"
    )


async def run(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    log_dir = Path(tempfile.mkdtemp(prefix="stagecast-gopcache-"))
    print(f"bench.gop_cache {' '.join(sys.argv[1:])}: load {os.getloadavg()}, logs {log_dir}")
    children = Children(log_dir)
    table = {}
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                for kb in (0, args.cache_kb):
                    table[kb] = await one_mode(kb, args, children, browser)
            finally:
                await browser.close()
    finally:
        await children.stop_all()
    print()
    print(
        "| GOP cache | joins played | ttff p50 / p95 / max ms | jitter buffer ms per frame "
        "median / max | fps after join (median) | freezes total s |"
    )
    print("|---|---|---|---|---|---|")
    for kb, rs in table.items():
        print(row("off" if kb == 0 else f"{kb} KiB", rs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--joins", type=int, default=12)
    parser.add_argument("--gop", type=int, default=60, help="the source's GOP in frames")
    parser.add_argument("--kbps", type=int, default=1500)
    parser.add_argument("--cache-kb", type=int, default=1024)
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
