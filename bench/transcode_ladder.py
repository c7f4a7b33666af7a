"""Cost of the transcode ladder: a node's CPU with one 720p30 H264 anchor (x264 ultrafast, CBR
1.5 Mbit/s) and renditions 720p/360p/180p, ``stage.transcode_ladder`` off and on, first with
no viewer, then with one (non-decoding) viewer on 360p and one on 180p.

    python -m bench.transcode_ladder --seconds 15 --repeat 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.fanout import (
    ANCHOR_GRAIN,
    SECRET,
    Child,
    Children,
    _die_with_parent,
    use_anchor_encoder,
    wait_healthy,
)
from bench.joins import process_cpu
from gateway.launcher import free_port, free_udp_port
from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, Viewer, whep_watch, whip_publish
from relay.auth.tokens import TokenAuthority

ROOM = "ladder-bench"
RENDITIONS = [
    {"name": "720p", "width": 1280, "height": 720, "video_bitrate_kbps": 2000},
    {"name": "360p", "width": 640, "height": 360, "video_bitrate_kbps": 600},
    {"name": "180p", "width": 320, "height": 180, "video_bitrate_kbps": 200},
]


async def cores(pid: int, seconds: float) -> float:
    cpu0, t0 = process_cpu(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (process_cpu(pid) - cpu0) / (time.monotonic() - t0)


async def measure(ladder: bool, args: argparse.Namespace) -> str:
    children = Children(Path(tempfile.mkdtemp(prefix="stagecast-ladder-")))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_AUTH__ANONYMOUS_AUDIENCE": "true",
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_STAGE__RENDITIONS": json.dumps(RENDITIONS),
        "STAGECAST_STAGE__TRANSCODE_LADDER": "true" if ladder else "false",
    }
    log_path = children.log_dir / "node.log"
    with log_path.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            *["--udp-port", str(free_udp_port())],
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=_die_with_parent,
        )
    child = Child("node", proc, psutil.Process(proc.pid), log_path)
    children.items.append(child)
    publisher = None
    viewers: list[Viewer] = []
    try:
        await wait_healthy(url, child)
        publisher = await whip_publish(
            url,
            ROOM,
            TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600),
            video=StampedVideoTrack(1280, 720, 30, grain=ANCHOR_GRAIN),
            audio=ToneAudioTrack(440),
            video_codec="H264",
        )
        await asyncio.sleep(args.settle)
        alone = await cores(proc.pid, args.seconds)
        for name in ("360p", "180p"):
            viewers.append(await whep_watch(url, f"{ROOM}?rendition={name}", decode=False))
        await asyncio.sleep(args.settle)
        frames = [v.video_frames for v in viewers]
        watched = await cores(proc.pid, args.seconds)
        fps = [(v.video_frames - f) / args.seconds for v, f in zip(viewers, frames, strict=True)]
        shown = ", ".join(f"{x:.0f}" for x in fps)
        return f"| {'on' if ladder else 'off'} | {alone:.4f} | {watched:.4f} | {shown} |"
    finally:
        for viewer in viewers:
            with contextlib.suppress(Exception):
                await viewer.close()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
        await children.stop_all()


async def run(args: argparse.Namespace) -> None:
    use_anchor_encoder("ultrafast", 1500)
    print("| ladder | cores, anchor only | cores, + a viewer on 360p and on 180p | their fps |")
    print("|---|---|---|---|")
    for _ in range(args.repeat):
        for ladder in (False, True):
            print(await measure(ladder, args), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
