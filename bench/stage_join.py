"""Audience on stage: time from an anchor's approval to the guest's tile in the program.

One in-process gateway (real uvicorn and sockets, tests/support/server.py), an aiortc anchor
(red) alone on stage (passthrough), an aiortc program viewer decoding every frame. Each run: a
viewer raises a hand and long-polls its request as the watch page does; the anchor approves
(the clock starts when the approval is answered); the guest publishes blue with the token the
long-poll brought; the clock stops when the viewer's decoded program shows blue where the grid
puts the second tile. The guest then steps down and the program goes back to passthrough.

    python -m bench.stage_join                  # 5 runs on the 320x180 test stage
    python -m bench.stage_join --runs 10 --stage default   # the 720p/360p ladder
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx

from tests.live.test_mixer_live import SMALL_STAGE, publish, shows
from tests.support.server import run_server
from tests.support.stage_guest import tile_after_approval, watch_admitted


async def run(runs: int, stage: dict[str, Any]) -> list[float]:
    room = "benchstage"
    with run_server(stage=stage) as server:
        gw = server.gateway
        anchor_token = gw.tokens.mint(room, "anchor", "anchor-red", 600)
        host = await publish(server, room, "red")
        viewer = await watch_admitted(server.base_url, f"/whep/{room}")
        took: list[float] = []
        try:
            if not await shows(viewer, {(0.5, 0.5): "red"}, 20):
                raise SystemExit("the anchor never showed in the program")
            async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
                for i in range(runs):
                    seconds, hand, guest = await tile_after_approval(
                        server.base_url,
                        client,
                        room,
                        anchor_token,
                        viewer,
                        colour="blue",
                        tone=1000.0,
                        at=(0.75, 0.5),
                        viewer_token=gw.tokens.mint(room, "audience", f"viewer-{i}", 600),
                    )
                    took.append(seconds)
                    m = {k: (v - hand.marks["approved"]) * 1000 for k, v in hand.marks.items()}
                    print(
                        f"run {i + 1}: approval -> tile {seconds * 1000:.0f} ms "
                        f"(token at the guest +{m['token']:.0f} ms, WHIP answered "
                        f"+{m['whip']:.0f} ms)",
                        flush=True,
                    )
                    await hand.leave()
                    await guest.close()
                    deadline = time.monotonic() + 15
                    while (
                        len(gw.anchors.in_room(room)) != 1 or viewer.colour_at(0.75, 0.5) != "red"
                    ):
                        if time.monotonic() > deadline:
                            raise SystemExit("the guest's tile never left")
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(1.0)  # passthrough again, settled
        finally:
            await viewer.close()
            await host.close()
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stage", choices=("small", "default"), default="small")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    stage = SMALL_STAGE if args.stage == "small" else {}
    took = asyncio.run(run(args.runs, stage))
    ms = sorted(t * 1000 for t in took)
    summary = {
        "runs": len(ms),
        "stage": args.stage,
        "p50_ms": round(statistics.median(ms)),
        "min_ms": round(ms[0]),
        "max_ms": round(ms[-1]),
        "all_ms": [round(m) for m in took_ms(took)],
    }
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


def took_ms(took: list[float]) -> list[float]:
    return [t * 1000 for t in took]


if __name__ == "__main__":
    main()
