"""Churn soak: many viewer join/leave cycles and anchor publish/unpublish cycles against a gateway
process, then what it still holds (tasks, threads, fds, peer connections, memory).

    python -m bench.soak --viewer-cycles 1000 --anchor-cycles 100     # the full soak
    python -m bench.soak --viewer-cycles 60 --anchor-cycles 10        # the short CI form

Only 127.0.0.1 traffic; the gateway runs as a child process and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from gateway.launcher import gateway_process
from gateway.synthetic import StampedVideoTrack, whep_watch, whip_publish
from relay.auth.tokens import TokenAuthority

SECRET = "soak-secret-" + "s" * 40
KEY = "soak-operator-key-0123456789"


@dataclass
class SoakResult:
    viewer_cycles: int
    anchor_cycles: int
    viewer_failures: int
    anchor_failures: int
    seconds: float
    before: dict[str, Any]
    after: dict[str, Any]
    rss_growth_bytes: int


async def _runtime(client: httpx.AsyncClient) -> dict[str, Any]:
    resp = await client.get("/v1/runtime", params={"deep": "true"})
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


async def _settle(
    client: httpx.AsyncClient, baseline: dict[str, Any] | None = None, timeout: float = 20.0
) -> dict[str, Any]:
    """Runtime figures once every session has gone and, given a ``baseline``, tasks, threads and
    fds are back to it (closing peers finish their last tasks a moment after the session ends);
    or whatever they are when the timeout passes: a leak stays above the baseline."""
    deadline = time.monotonic() + timeout
    while True:
        rt = await _runtime(client)
        done = (
            rt["anchor_sessions"] == 0
            and rt["viewer_sessions"] == 0
            and rt["peer_connections"] == 0
        )
        if baseline is not None:
            done = done and all(rt[k] <= baseline[k] for k in ("tasks", "threads", "fds"))
        if done or time.monotonic() > deadline:
            return rt
        await asyncio.sleep(0.5)


async def soak(base: str, viewer_cycles: int, anchor_cycles: int, batch: int) -> SoakResult:
    tokens = TokenAuthority(SECRET)
    headers = {"X-API-Key": KEY}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=15) as client:
        # warm up once so lazily created things (codecs, thread pools) are in the baseline
        warm = await whip_publish(
            base,
            "warm",
            tokens.mint("warm", "anchor", "soak", 600),
            video=StampedVideoTrack(320, 180, 15),
        )
        v = await whep_watch(base, "warm", kinds=("video",), decode=False)
        await asyncio.sleep(1.0)
        await v.close()
        await warm.close()
        before = await _settle(client)
        t0 = time.monotonic()
        room = "soak"
        pub = await whip_publish(
            base,
            room,
            tokens.mint(room, "anchor", "soak", 3600),
            video=StampedVideoTrack(320, 180, 15),
        )
        viewer_failures = 0

        async def one_viewer() -> bool:
            try:
                viewer = await whep_watch(base, room, kinds=("video",), decode=False)
            except httpx.HTTPError:
                return False
            try:
                for _ in range(1000):  # up to 20 s for the first frame
                    if viewer.video_frames:
                        break
                    await asyncio.sleep(0.02)
                return viewer.video_frames > 0
            finally:
                await viewer.close()

        done = 0
        while done < viewer_cycles:
            n = min(batch, viewer_cycles - done)
            results = await asyncio.gather(*(one_viewer() for _ in range(n)))
            viewer_failures += results.count(False)
            done += n
        await pub.close()

        anchor_failures = 0
        for i in range(anchor_cycles):
            r = f"cycle{i % 5}"
            try:
                p = await whip_publish(
                    base,
                    r,
                    tokens.mint(r, "anchor", f"soak{i}", 600),
                    video=StampedVideoTrack(320, 180, 15),
                )
            except httpx.HTTPError:
                anchor_failures += 1
                continue
            deadline = time.monotonic() + 10
            ok = False
            while time.monotonic() < deadline:
                streams = (await client.get("/v1/streams")).json()
                if any(s["room"] == r and s["frames_in"] > 3 for s in streams):
                    ok = True
                    break
                await asyncio.sleep(0.05)
            anchor_failures += 0 if ok else 1
            await p.close()
        seconds = time.monotonic() - t0
        after = await _settle(client, before)
    return SoakResult(
        viewer_cycles,
        anchor_cycles,
        viewer_failures,
        anchor_failures,
        round(seconds, 1),
        before,
        after,
        after["rss_bytes"] - before["rss_bytes"],
    )


def run(viewer_cycles: int, anchor_cycles: int, batch: int = 8) -> SoakResult:
    env = {
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": KEY,
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "1000",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "1000",
        "STAGECAST_SESSIONS__RECONNECT_GRACE": "0",
    }
    with gateway_process(env) as (base, _):
        return asyncio.run(soak(base, viewer_cycles, anchor_cycles, batch))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--viewer-cycles", type=int, default=1000)
    parser.add_argument("--anchor-cycles", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8, help="viewers joining at once")
    parser.add_argument("--json", default=None, help="write the result here too")
    args = parser.parse_args()
    result = run(args.viewer_cycles, args.anchor_cycles, args.batch)
    b, a = result.before, result.after
    print(
        f"viewer cycles {result.viewer_cycles} (failed {result.viewer_failures}), "
        f"anchor cycles {result.anchor_cycles} (failed {result.anchor_failures}) "
        f"in {result.seconds} s"
    )
    for key in (
        "tasks",
        "threads",
        "fds",
        "peer_connections",
        "anchor_sessions",
        "viewer_sessions",
    ):
        print(f"  {key:18} before {b[key]:>6}  after {a[key]:>6}")
    print(
        f"  {'rss MiB':18} before {b['rss_bytes'] / 2**20:6.1f}"
        f"  after {a['rss_bytes'] / 2**20:6.1f}"
        f"  growth {result.rss_growth_bytes / 2**20:+.1f}"
    )
    kinds_before, kinds_after = b.get("task_kinds") or {}, a.get("task_kinds") or {}
    for kind, count in kinds_after.items():
        if count > kinds_before.get(kind, 0):
            print(f"  more tasks of {kind}: {kinds_before.get(kind, 0)} -> {count}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(asdict(result), fh, indent=2)


if __name__ == "__main__":
    main()
