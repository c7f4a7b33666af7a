"""Time to first frame for a Chromium viewer over ICE-TCP vs UDP, on loopback (indicative).

One ``stagecast serve`` process with the shared UDP port and the ICE-TCP port on 127.0.0.1, one
aiortc WHIP anchor (stamped 640x360 at 30 fps), two headless Chromiums: one as is (it takes the
UDP candidate), one with UDP switched off (``--webrtc-ip-handling-policy=
disable_non_proxied_udp``: it can only take the TCP one). Runs alternate between them; each run
is a fresh page and peer connection, timed in the page from ``createOffer`` to the first decoded
video frame (``getStats`` polled every 10 ms), with the ICE connected time on the way.

    python -m bench.ice_tcp_first_frame --runs 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from typing import Any

import httpx
from playwright.async_api import async_playwright

from gateway.launcher import free_port
from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from relay.auth.tokens import TokenAuthority

SECRET = "bench-secret-" + "b" * 40
ROOM = "ttff"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
NO_UDP = "--webrtc-ip-handling-policy=disable_non_proxied_udp"
WATCH = """
async ([room]) => {
  const t0 = performance.now();
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.pc = pc;
  let connected = null;
  pc.addEventListener('iceconnectionstatechange', () => {
    const now = performance.now() - t0;
    if (pc.iceConnectionState === 'connected' && connected === null) connected = now;
  });
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    const check = () => pc.iceGatheringState === 'complete' && done();
    pc.addEventListener('icegatheringstatechange', check);
    check();
    setTimeout(done, 5000);
  });
  const gathered = performance.now() - t0;
  const resp = await fetch('/whep/' + room, {
    method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
  });
  const answered = performance.now() - t0;
  await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
  while (performance.now() - t0 < 15000) {
    const stats = await pc.getStats();
    let frames = 0, protocol = null;
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        protocol = stats.get(stats.get(s.selectedCandidatePairId).localCandidateId).protocol;
      }
    });
    if (frames > 0) {
      const first = performance.now() - t0;
      pc.close();
      return { first, connected, gathered, answered, protocol };
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  pc.close();
  return { first: null, connected, gathered, answered, protocol: null };
}
"""


async def wait_healthy(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if proc.returncode is not None:
                raise RuntimeError("the node exited")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the node never became healthy")


async def run(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    port, media, stream = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_AUTH__ANONYMOUS_AUDIENCE": "true",
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_WEBRTC__UDP_PORT": str(media),
        "STAGECAST_WEBRTC__TCP_PORT": str(stream),
        "STAGECAST_WEBRTC__ADDRESSES": '["127.0.0.1"]',
        "STAGECAST_LIMITS__MAX_LOOP_LAG": "1000",
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    results: dict[str, list[dict[str, Any]]] = {"udp": [], "tcp": []}
    anchor = None
    try:
        await wait_healthy(url, proc)
        token = TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600)
        video = StampedVideoTrack(640, 360, 30)
        anchor = await whip_publish(url, ROOM, token, video=video, audio=ToneAudioTrack(440))
        await asyncio.sleep(1.5)
        async with async_playwright() as pw:
            udp = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            tcp = await pw.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, NO_UDP])
            try:
                for i in range(args.runs + 1):  # the first of each warms the browser up
                    for mode, browser in (("udp", udp), ("tcp", tcp)):
                        page = await browser.new_page()
                        await page.goto(url + "/healthz")
                        got = await page.evaluate(WATCH, [ROOM])
                        await page.close()
                        if i:
                            results[mode].append(got)
                        print(mode, json.dumps(got), flush=True)
                        await asyncio.sleep(0.5)
            finally:
                await udp.close()
                await tcp.close()
    finally:
        if anchor is not None:
            await anchor.close()
        proc.terminate()
        await proc.wait()
    return results


def summary(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["mode  runs  first frame p50 [min-max] ms   ICE connected p50 ms  selected"]
    for mode, runs in results.items():
        firsts = [r["first"] for r in runs if r["first"] is not None]
        connected = [r["connected"] for r in runs if r["connected"] is not None]
        protocols = sorted({str(r["protocol"]) for r in runs})
        if not firsts:
            lines.append(f"{mode:5} {len(runs):4}  no frame")
            continue
        lines.append(
            f"{mode:5} {len(runs):4}  {statistics.median(firsts):6.0f} "
            f"[{min(firsts):.0f}-{max(firsts):.0f}]"
            f"{statistics.median(connected) if connected else float('nan'):22.0f}  "
            f"{','.join(protocols)}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    results = asyncio.run(run(args))
    print(f"\n{started}, load {os.getloadavg()[0]:.1f}")
    print(summary(results))


if __name__ == "__main__":
    main()
