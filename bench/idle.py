"""Idle cost: what a node spends while nothing happens, and with one ingest and no viewer.

Per checkout (``--tree``, run in turn for each repetition so before/after share the machine's
load): ``stagecast serve`` as a subprocess; its CPU over ``--seconds`` from ``/proc/PID/stat``
(the whole process, every thread) and its resident memory, first with nothing connected, then
with one 720p30 WHIP anchor (x264 ultrafast, CBR ``--kbps``) and no viewer.

    python -m bench.idle --seconds 60
    python -m bench.idle --seconds 30 --repeat 3 --tree /work/wt/base --tree .
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.fanout import (
    ANCHOR_GRAIN,
    ROOM,
    SECRET,
    Child,
    Children,
    _die_with_parent,
    use_anchor_encoder,
    wait_healthy,
)
from bench.joins import process_cpu, process_rss_mib
from gateway.launcher import free_port, free_udp_port
from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from relay.auth.tokens import TokenAuthority


@dataclass
class Idle:
    tree: str
    alone_cores: float
    alone_rss_mib: float
    ingest_cores: float
    ingest_rss_mib: float


async def cores(pid: int, seconds: float) -> float:
    cpu0, t0 = process_cpu(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (process_cpu(pid) - cpu0) / (time.monotonic() - t0)


async def measure(children: Children, tree: Path, args: argparse.Namespace) -> Idle:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_LOG_LEVEL": "warning",
        "PYTHONPATH": str(tree),
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    argv += ["--udp-port", str(free_udp_port())]
    log_path = children.log_dir / f"node-{tree.name}-{port}.log"
    with log_path.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=tree,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=_die_with_parent,
        )
    child = Child(log_path.stem, proc, psutil.Process(proc.pid), log_path)
    children.items.append(child)
    publisher = None
    try:
        await wait_healthy(url, child)
        await asyncio.sleep(args.settle)
        alone = await cores(proc.pid, args.seconds)
        alone_rss = process_rss_mib(proc.pid)
        publisher = await whip_publish(
            url,
            ROOM,
            TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600),
            video=StampedVideoTrack(1280, 720, 30, grain=ANCHOR_GRAIN),
            audio=ToneAudioTrack(440),
            video_codec="H264",
        )
        await asyncio.sleep(args.settle)
        ingest = await cores(proc.pid, args.seconds)
        return Idle(tree.name, alone, alone_rss, ingest, process_rss_mib(proc.pid))
    finally:
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
        await children.stop(child)


def row(r: Idle) -> str:
    return (
        f"| {r.tree} | {r.alone_cores:.4f} | {r.alone_rss_mib:.0f} | {r.ingest_cores:.4f} "
        f"| {r.ingest_rss_mib:.0f} |"
    )


HEAD = (
    "| tree | cores, nothing connected | RSS MiB | cores, one ingest | RSS MiB |\n"
    "|---|---|---|---|---|"
)


async def run(args: argparse.Namespace) -> list[Idle]:
    use_anchor_encoder("ultrafast", args.kbps)
    children = Children(Path(tempfile.mkdtemp(prefix="stagecast-idle-")))
    results: list[Idle] = []
    print(HEAD, flush=True)
    try:
        for _ in range(args.repeat):
            for tree in args.tree:
                results.append(await measure(children, tree, args))
                print(row(results[-1]), flush=True)
    finally:
        await children.stop_all()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--kbps", type=int, default=1500)
    parser.add_argument("--tree", action="append", help="checkout to run the node from")
    args = parser.parse_args()
    args.tree = [Path(t).resolve() for t in (args.tree or ["."])]
    results = asyncio.run(run(args))
    print(
        "\n| tree | runs | cores alone min / median | RSS | cores one ingest min / median | RSS |"
    )
    print("|---|---|---|---|---|---|")
    for tree in dict.fromkeys(r.tree for r in results):
        rs = [r for r in results if r.tree == tree]
        a = [r.alone_cores for r in rs]
        i = [r.ingest_cores for r in rs]
        print(
            f"| {tree} | {len(rs)} | {min(a):.4f} / {statistics.median(a):.4f} "
            f"| {statistics.median(r.alone_rss_mib for r in rs):.0f} "
            f"| {min(i):.4f} / {statistics.median(i):.4f} "
            f"| {statistics.median(r.ingest_rss_mib for r in rs):.0f} |"
        )


if __name__ == "__main__":
    main()
