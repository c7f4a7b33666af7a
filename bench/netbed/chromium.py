"""A headless Chromium viewer for the test bed: run inside a leg's namespace, it opens the watch
page, plays for ``--seconds`` and prints one JSON line: frames presented, the page's state and
Chromium's own inbound video counters (NACKs and PLIs sent, packets lost, jitter buffer).

    python -m bench.netbed.chromium http://198.18.0.1:8080 bed --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from typing import Any

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
INBOUND = """async () => {
  const pc = window.stagecast && window.stagecast.pc;
  if (!pc) return null;
  const out = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      for (const k of ['framesDecoded', 'packetsLost', 'packetsReceived', 'nackCount', 'pliCount',
                       'freezeCount', 'totalFreezesDuration', 'jitterBufferDelay',
                       'jitterBufferEmittedCount', 'retransmittedPacketsReceived']) out[k] = s[k];
    }
  });
  return out;
}"""


async def watch(url: str, room: str, seconds: float) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            page = await browser.new_page()
            await page.goto(f"{url}/watch?room={room}")
            await asyncio.sleep(seconds)
            frames = await page.evaluate("window.stagecast ? window.stagecast.framesPresented : 0")
            state = await page.evaluate("window.stagecast ? window.stagecast.state : null")
            inbound = await page.evaluate(INBOUND)
        finally:
            await browser.close()
    return {"frames": frames, "state": state, "inbound": inbound}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netbed.chromium")
    parser.add_argument("url")
    parser.add_argument("room")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(watch(args.url, args.room, args.seconds))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
