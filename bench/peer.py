"""Side by side with a C server: stagecast and Janus serving the same source to the same light
viewers, server CPU per viewer and per join, in the same run.

The same ffmpeg source (720p30 testsrc2, x264 constrained baseline CBR, Opus) is pushed to
stagecast over WHIP (ffmpeg's own WHIP muxer) and, as plain RTP, to a Janus streaming
mountpoint (``bench.janus`` writes its minimal configuration). The viewers are the same aiortc
peers for both (``bench.load_viewers --light``: they count SRTP packets at the socket once
their first frame is in, ``--janus`` speaks Janus's HTTP API instead of WHEP). Janus runs in
its default configuration (a thread per handle) and with ``event_loops = 1``.

The server is pinned to one core (``--server-cpu``), the source and the viewers to the other.
Per target and N: the server's CPU over a steady window (psutil, children included), the
marginal core per viewer over N = 0, and the server CPU the joins cost (from the first POST
to the last viewer's first frame, minus the steady cost of what was already running, per
join). Targets run interleaved, ``--rounds`` times; the summary gives min / median.

    python -m bench.peer                                 # N = 0,50,100, 2 rounds
    python -m bench.peer --viewers 0,40,120 --rounds 3

Skips Janus with the reason when it is not installed (``apt-get install janus``).
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
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg
import httpx
import imageio_ffmpeg

from bench.fanout import (
    ROOM,
    SECRET,
    Child,
    Children,
    LoadFleet,
    LoadWorker,
    cpu_seconds,
    free_port,
    pct,
    wait_healthy,
)
from bench.janus import JanusPorts, janus_argv, janus_installed, write_janus_config
from relay.auth.tokens import TokenAuthority

TARGETS = ("stagecast", "janus", "janus-1loop")


@dataclass(frozen=True, slots=True)
class Source:
    width: int = 1280
    height: int = 720
    fps: int = 30
    kbps: int = 1500
    gop: int = 60


def _encoded(source: Source) -> tuple[ffmpeg.nodes.FilterableStream, ...]:
    size = f"{source.width}x{source.height}"
    video = ffmpeg.input(f"testsrc2=size={size}:rate={source.fps}", f="lavfi", re=None)
    audio = ffmpeg.input("sine=frequency=440:sample_rate=48000", f="lavfi", re=None)
    return video, audio


VIDEO_ARGS = {
    "c:v": "libx264",
    "profile:v": "baseline",
    "preset": "ultrafast",
    "tune": "zerolatency",
    "bf": 0,
    "pix_fmt": "yuv420p",
}
AUDIO_ARGS = {"c:a": "libopus", "ar": 48000, "ac": 2, "b:a": "64k"}


def _rate(source: Source) -> dict[str, object]:
    kbps = f"{source.kbps}k"
    return {"b:v": kbps, "maxrate": kbps, "bufsize": f"{source.kbps // 2}k", "g": source.gop}


def whip_source_argv(exe: str, source: Source, url: str, token: str) -> list[str]:
    """ffmpeg pushing the source to a WHIP endpoint (one peer connection, audio and video)."""
    video, audio = _encoded(source)
    out = ffmpeg.output(
        video,
        audio,
        url,
        f="whip",
        authorization=token,
        handshake_timeout=5000,
        **VIDEO_ARGS,
        **_rate(source),
        **AUDIO_ARGS,
    )
    return [exe, "-hide_banner", "-nostats", "-nostdin", *out.compile(cmd=exe)[1:]]


def rtp_source_argv(
    exe: str, source: Source, host: str, video_port: int, audio_port: int
) -> list[str]:
    """ffmpeg sending the same encode as plain RTP, video and audio to their own ports (what a
    Janus streaming mountpoint of type rtp listens for)."""
    video, audio = _encoded(source)
    v = ffmpeg.output(
        video["v"],  # explicit streams: without them the first output takes every input
        f"rtp://{host}:{video_port}?pkt_size=1200",
        f="rtp",
        payload_type=96,
        **VIDEO_ARGS,
        **_rate(source),
    )
    a = ffmpeg.output(
        audio["a"], f"rtp://{host}:{audio_port}", f="rtp", payload_type=111, **AUDIO_ARGS
    )
    merged = ffmpeg.merge_outputs(v, a)
    return [exe, "-hide_banner", "-nostats", "-nostdin", *merged.compile(cmd=exe)[1:]]


@dataclass
class Point:
    target: str
    round: int
    n: int
    admitted: int = 0
    server_cores: float = 0.0
    core_per_viewer: float | None = None
    join_ms_cpu: float | None = None  # server CPU per join, steady cost taken out
    ttff_p50: float | None = None
    ttff_p95: float | None = None
    pkt_s_mean: float | None = None
    pkt_s_min: float | None = None
    rss_mib: float = 0.0


@dataclass
class Running:
    server: Child
    base_url: str
    janus: bool
    children: list[Child] = field(default_factory=list)


async def start_target(target: str, children: Children, args: argparse.Namespace) -> Running:
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    pin_server = ["taskset", "-c", args.server_cpu]
    pin_client = ["taskset", "-c", args.client_cpus]
    source = Source(kbps=args.kbps)
    if target == "stagecast":
        port = free_port()
        env = {
            "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
            "STAGECAST_LOG_LEVEL": "warning",
            "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "1000",
            "STAGECAST_LIMITS__SESSION_POST_BURST": "1000",
        }
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
        argv += ["--udp-port", str(args.udp_port)]
        server = await children.start("stagecast", pin_server + argv, env=env)
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, server)
        token = TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600)
        src = await children.start(
            "source", pin_client + whip_source_argv(exe, source, f"{url}/whip/{ROOM}", token)
        )
        return Running(server, url, False, [src])
    ports = JanusPorts(free_port(), free_port(), free_port())
    folder = Path(tempfile.mkdtemp(prefix=f"stagecast-{target}-"))
    config = write_janus_config(folder, ports, event_loops=1 if target == "janus-1loop" else 0)
    server = await children.start(target, pin_server + janus_argv(config))
    url = f"http://127.0.0.1:{ports.http}"
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if server.proc.returncode is not None:
                raise RuntimeError(f"janus exited:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/janus/info")).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"janus did not answer:\n{server.log_tail()}")
            await asyncio.sleep(0.2)
    src = await children.start(
        "source",
        pin_client + rtp_source_argv(exe, source, "127.0.0.1", ports.video_rtp, ports.audio_rtp),
    )
    return Running(server, url, True, [src])


async def start_fleet(
    children: Children, running: Running, procs: int, cpus: str, tag: str
) -> LoadFleet:
    workers = []
    for i in range(procs):
        argv = ["taskset", "-c", cpus, sys.executable, "-m", "bench.load_viewers"]
        argv += ["--base-url", running.base_url, "--room", ROOM, "--loop", "uvloop", "--light"]
        argv += ["--concurrency", "8", "--join-timeout", "30"]
        if running.janus:
            argv.append("--janus")
        workers.append(LoadWorker(await children.start(f"{tag}-light{i}", argv, pipes=True)))
    return LoadFleet(workers)


async def measure_target(
    target: str, rnd: int, counts: list[int], children: Children, args: argparse.Namespace
) -> list[Point]:
    running = await start_target(target, children, args)
    fleet = await start_fleet(children, running, args.procs, args.client_cpus, target)
    server = running.server.ps
    points: list[Point] = []
    try:
        await asyncio.sleep(args.warmup)  # the source's first keyframe, the server settled
        steady = 0.0  # server cores before the joins (the last window's rate)
        t = time.monotonic()
        c = cpu_seconds(server)
        await asyncio.sleep(2.0)
        steady = (cpu_seconds(server) - c) / (time.monotonic() - t)
        for n in counts:
            p = Point(target, rnd, n)
            before, t0 = cpu_seconds(server), time.monotonic()
            joined = fleet.count
            ttff = await fleet.resize(n, timeout=120)
            join_s, join_cpu = time.monotonic() - t0, cpu_seconds(server) - before
            new = fleet.count - joined
            if new > 0:
                p.join_ms_cpu = max(0.0, join_cpu - steady * join_s) / new * 1000
                p.ttff_p50, p.ttff_p95 = pct(ttff, 50), pct(ttff, 95)
            await asyncio.sleep(args.settle)
            await fleet.mark()
            c0, w0 = cpu_seconds(server), time.monotonic()
            await asyncio.sleep(args.window)
            cpu, wall = cpu_seconds(server) - c0, time.monotonic() - w0
            read = await fleet.read()
            p.admitted = len(read.packets)
            p.server_cores = cpu / wall
            steady = p.server_cores
            p.rss_mib = server.memory_info().rss / 2**20
            rates = [(x or 0) / e for x, e in zip(read.packets, read.elapsed, strict=True) if e]
            if rates:
                p.pkt_s_mean, p.pkt_s_min = sum(rates) / len(rates), min(rates)
            points.append(p)
            print(
                f"  {target} round {rnd} N={n}: admitted {p.admitted}, "
                f"{p.server_cores:.3f} cores, join cpu {fmt(p.join_ms_cpu)} ms/join, "
                f"pkt/s mean {fmt(p.pkt_s_mean, 0)} min {fmt(p.pkt_s_min, 0)}",
                flush=True,
            )
    finally:
        await fleet.close(children)
        for child in [*running.children, running.server]:
            await children.stop(child)
    base = points[0] if points and points[0].n == 0 else None
    for p in points:
        if base is not None and p.admitted:
            p.core_per_viewer = (p.server_cores - base.server_cores) / p.admitted
    return points


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summary(points: list[Point]) -> str:
    lines = [
        "| target | N | core/viewer min / median | viewers/core (median) "
        "| server CPU per join ms min / median | ttff p50 / p95 s (median) "
        "| pkt/s per viewer mean / min (median) | server MiB |",
        "|" + "---|" * 8,
    ]
    keys = sorted({(p.target, p.n) for p in points}, key=lambda k: (TARGETS.index(k[0]), k[1]))
    for target, n in keys:
        ps = [p for p in points if p.target == target and p.n == n]

        def med(values: list[float | None]) -> float | None:
            vals = [v for v in values if v is not None]
            return statistics.median(vals) if vals else None

        def low(values: list[float | None]) -> float | None:
            vals = [v for v in values if v is not None]
            return min(vals) if vals else None

        cpv = [p.core_per_viewer for p in ps]
        m = med(cpv)
        rates = (med([p.pkt_s_mean for p in ps]), med([p.pkt_s_min for p in ps]))
        lines.append(
            f"| {target} | {n} | {fmt(low(cpv), 4)} / {fmt(m, 4)} "
            f"| {fmt(1 / m if m else None, 0)} "
            f"| {fmt(low([p.join_ms_cpu for p in ps]))} / {fmt(med([p.join_ms_cpu for p in ps]))} "
            f"| {fmt(med([p.ttff_p50 for p in ps]), 2)} / {fmt(med([p.ttff_p95 for p in ps]), 2)} "
            f"| {fmt(rates[0], 0)} / {fmt(rates[1], 0)} "
            f"| {fmt(med([p.rss_mib for p in ps]), 0)} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[Point]:
    counts = [int(x) for x in args.viewers.split(",")]
    targets = [t for t in args.targets.split(",") if t]
    why = janus_installed()
    if why is not None:
        print(f"skipping Janus: {why}", flush=True)
        targets = [t for t in targets if not t.startswith("janus")]
    log_dir = Path(tempfile.mkdtemp(prefix="stagecast-peer-"))
    print(f"logs in {log_dir}", flush=True)
    children = Children(log_dir)
    points: list[Point] = []
    try:
        for rnd in range(1, args.rounds + 1):
            for target in targets:
                points += await measure_target(target, rnd, counts, children, args)
    finally:
        await children.stop_all()
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", default="0,50,100")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--procs", type=int, default=2, help="light-viewer processes")
    parser.add_argument("--kbps", type=int, default=1500)
    parser.add_argument("--udp-port", type=int, default=0, help="stagecast's webrtc.udp_port")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpus", default="1")
    args = parser.parse_args(argv)
    print(f"bench.peer {' '.join(sys.argv[1:])}: load average {os.getloadavg()}", flush=True)
    points = asyncio.run(run(args))
    print()
    print(summary(points))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
