"""Relay benchmark: latency added per relay hop, and an edge process's CPU per viewer.

Every server is its own process (origin, edge, edge of edge: ``python -m bench.relay_hop child``,
the same code ``stagecast serve`` / ``stagecast relay`` run, plus a probe that records when each
video frame reached the process's hub). CLOCK_MONOTONIC is one clock for every process of the
machine, so the time a frame reached the edge's hub minus the time it reached the origin's hub
is exactly what one hop adds: origin queue -> RTP send -> loopback -> edge receive, reassembly.
Frames are matched by a digest of their payloads (a hop forwards them unchanged).

    python -m bench.relay_hop                     # hop latency, 20 s of 720p30 through 2 hops
    python -m bench.relay_hop --capacity 0,50,100 # + edge CPU per viewer (bench.load_viewers)
    python -m bench.relay_hop --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import fractions
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import httpx
import psutil
from aiortc.mediastreams import MediaStreamTrack

from gateway.launcher import free_udp_port
from gateway.synthetic import FrameClock, StampedVideoTrack, whep_watch, whip_publish
from relay.auth.tokens import TokenAuthority
from relay.media.frames import EncodedFrame
from relay.media.hub import FanoutHub

SECRET = "bench-secret-" + "y" * 40
ROOM = "hop"
LOAD_ARGS = ("--room", ROOM, "--concurrency", "8")


# -- child: one server process with a hub probe -------------------------------------------------
def _child(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import build_gateway, create_app
    from gateway.settings import Settings
    from relay.server.edge import build_edge_node, create_edge_app

    records: list[tuple[str, float]] = []
    publish = FanoutHub.publish

    def probe(self: FanoutHub, frame: EncodedFrame) -> None:
        if frame.kind == "video":
            digest = hashlib.blake2b(b"".join(frame.payloads), digest_size=8).hexdigest()
            records.append((digest, frame.received_at))
        publish(self, frame)

    FanoutHub.publish = probe  # type: ignore[method-assign]
    common: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": args.port,
        "log_level": "warning",
        "auth": {"token_secret": SECRET},
        "limits": {"session_posts_per_second": 1000, "session_post_burst": 1000},
        "webrtc": {"udp_port": free_udp_port()},  # origin and edges on one host: a port each
    }
    if args.role == "origin":
        settings = Settings(**common)
        app = create_app(settings, build_gateway(settings))
    else:
        settings = Settings(
            **common, cluster={"role": "edge", "upstream": args.upstream, "node_id": args.name}
        )
        app = create_edge_app(build_edge_node(settings))
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> Any:
        async with inner(app_) as state:
            yield state
        # written here: uvicorn re-raises SIGTERM after its shutdown, so nothing runs after it
        Path(args.record).write_text(json.dumps(records))  # noqa: ASYNC240 (at exit)

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    def __init__(self, role: str, name: str, upstream: str, workdir: Path) -> None:
        self.port = _free_port()
        self.name = name
        self.record = workdir / f"{name}.json"
        cmd = [sys.executable, "-m", "bench.relay_hop", "child", "--role", role]
        cmd += ["--name", name, "--port", str(self.port), "--record", str(self.record)]
        if upstream:
            cmd += ["--upstream", upstream]
        self.log = (workdir / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/healthz", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> dict[str, list[float]]:
        """Stop the child; its probe's records (digest -> arrival times: a looped clip repeats
        its frames)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        if not self.record.exists():
            return {}
        out: dict[str, list[float]] = {}
        for digest, at in json.loads(self.record.read_text()):
            out.setdefault(digest, []).append(at)
        return out


class EncodedFileTrack(MediaStreamTrack):
    """Sends a pre-encoded H264 file (Annex-B) as-is, looped at its frame rate: a 720p30 anchor
    that costs almost nothing, so the machine's cores go to the relays being measured."""

    kind = "video"

    def __init__(self, path: Path, fps: int = 30) -> None:
        super().__init__()
        container = av.open(str(path), format="h264")
        self._packets = [bytes(p) for p in container.demux(video=0) if p.size]
        container.close()
        self._fps = fps
        self._clock = FrameClock(fps)
        self._n = 0

    async def recv(self) -> av.Packet:  # type: ignore[override]
        await self._clock.wait(self._n)
        packet = av.Packet(self._packets[self._n % len(self._packets)])
        packet.pts = self._n * (90000 // self._fps)
        packet.time_base = fractions.Fraction(1, 90000)
        self._n += 1
        return packet


def encode_clip(path: Path, seconds: int = 10) -> None:
    """720p30 ~1.5 Mbps H264 baseline, a keyframe every second, no B-frames."""
    import imageio_ffmpeg

    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}"),
            *("-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast"),
            *("-tune", "zerolatency", "-g", "30", "-bf", "0", "-pix_fmt", "yuv420p"),
            *("-b:v", "1500k", "-maxrate", "1500k", "-bufsize", "1500k", "-f", "h264", str(path)),
        ],
        check=True,
        timeout=120,
    )


def ffmpeg_anchor_argv(url: str, token: str) -> list[str]:
    """A 720p30 ~1.5 Mbps H264 (baseline, GOP 1 s) + Opus WHIP anchor (imageio-ffmpeg's ffmpeg)."""
    import imageio_ffmpeg

    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-hide_banner", "-loglevel", "warning", "-re"),
        *("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-re"),
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"),
        *("-c:v", "libx264", "-profile:v", "baseline", "-preset", "ultrafast"),
        *("-tune", "zerolatency", "-g", "30", "-bf", "0", "-pix_fmt", "yuv420p"),
        *("-b:v", "1500k", "-maxrate", "1500k", "-bufsize", "1500k"),
        *("-c:a", "libopus", "-ar", "48000", "-ac", "2"),
        *("-f", "whip", "-authorization", token, url),
    ]


def hop_latencies(before: dict[str, list[float]], after: dict[str, list[float]]) -> list[float]:
    """ms from a frame's arrival upstream to its arrival downstream: each downstream arrival is
    paired with the latest upstream arrival of the same frame before it."""
    out = []
    for digest, times in after.items():
        up = sorted(before.get(digest, ()))
        for t in times:
            i = bisect.bisect_right(up, t)
            if i:
                out.append((t - up[i - 1]) * 1000)
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def pct(p: float) -> float:
        return round(v[min(len(v) - 1, int(p / 100 * len(v)))], 2)

    return {"n": len(v), "p50": pct(50), "p95": pct(95), "p99": pct(99), "max": round(v[-1], 2)}


async def _cpu_window(proc: psutil.Process, seconds: float) -> float:
    t0 = proc.cpu_times()
    w0 = time.monotonic()
    await asyncio.sleep(seconds)
    t1 = proc.cpu_times()
    return (t1.user + t1.system - t0.user - t0.system) / (time.monotonic() - w0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="relay-hop-"))
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "workdir": str(workdir)}
    origin = Child("origin", "origin", "", workdir)
    await origin.ready()
    edge1 = Child("edge", "edge1", origin.url, workdir)
    await edge1.ready()
    edge2 = Child("edge", "edge2", edge1.url, workdir)
    await edge2.ready()
    token = TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600)
    ffmpeg: subprocess.Popen[bytes] | None = None
    pub = None
    if args.anchor == "file":  # pre-encoded 720p30 sent as-is (no encoder on this machine)
        clip = workdir / "clip.h264"
        await asyncio.to_thread(encode_clip, clip)
        track = EncodedFileTrack(clip)
        pub = await whip_publish(origin.url, ROOM, token, video=track, video_codec="H264")
    elif args.anchor == "ffmpeg":  # x264 ultrafast in its own process: the anchor never starves
        ffmpeg = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
            ffmpeg_anchor_argv(f"{origin.url}/whip/{ROOM}", token),
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "ffmpeg.log").open("wb"),
        )
    else:
        pub = await whip_publish(
            origin.url, ROOM, token, video=StampedVideoTrack(1280, 720, 30), video_codec="H264"
        )
    result["anchor"] = args.anchor
    loaders: list[subprocess.Popen[str]] = []
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 20
            while (await client.head(f"{origin.url}/whep/{ROOM}")).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the anchor did not go live (see {workdir})")
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        viewer = await whep_watch(edge2.url, ROOM, decode=False)  # pulls edge2 <- edge1 <- origin
        await asyncio.sleep(args.seconds)
        result["viewer_frames"] = viewer.video_frames
        if args.capacity:
            result["capacity"] = await capacity(args, edge1, loaders)
        await viewer.close()
    finally:
        for proc in loaders:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.write('{"op": "quit"}\n')
                proc.stdin.flush()
        for proc in loaders:
            with contextlib.suppress(Exception):
                proc.wait(30)
        if pub is not None:
            await pub.close()
        if ffmpeg is not None:
            ffmpeg.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                ffmpeg.wait(10)
            if ffmpeg.poll() is None:
                ffmpeg.kill()
        at_edge2, at_edge1, at_origin = edge2.stop(), edge1.stop(), origin.stop()
    result["hop_ms"] = {
        "origin->edge1": percentiles(hop_latencies(at_origin, at_edge1)),
        "edge1->edge2": percentiles(hop_latencies(at_edge1, at_edge2)),
    }
    result["frames"] = {
        name: sum(len(v) for v in rec.values())
        for name, rec in (("origin", at_origin), ("edge1", at_edge1), ("edge2", at_edge2))
    }
    return result


async def capacity(
    args: argparse.Namespace, edge: Child, loaders: list[subprocess.Popen[str]]
) -> list[dict[str, Any]]:
    """Edge CPU and delivered frame rate at each viewer count (non-decoding load viewers)."""
    procs = args.load_procs
    for _ in range(procs):
        loaders.append(
            subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
                [sys.executable, "-m", "bench.load_viewers", "--base-url", edge.url, *LOAD_ARGS],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )

    def ask(proc: subprocess.Popen[str], cmd: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(cmd) + "\n")
        proc.stdin.flush()
        reply: dict[str, Any] = json.loads(proc.stdout.readline())
        return reply

    rows = []
    base_cpu: float | None = None
    for n in args.capacity:
        share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        await asyncio.gather(
            *(
                asyncio.to_thread(ask, p, {"op": "set", "n": k})
                for p, k in zip(loaders, share, strict=True)
            )
        )
        await asyncio.sleep(2.0)
        await asyncio.gather(*(asyncio.to_thread(ask, p, {"op": "mark"}) for p in loaders))
        cpu = await _cpu_window(edge.ps, args.window)
        reads = await asyncio.gather(*(asyncio.to_thread(ask, p, {"op": "read"}) for p in loaders))
        fps = [f / r["elapsed"] for r in reads for f in r["video"]]
        base_cpu = cpu if base_cpu is None else base_cpu
        row: dict[str, Any] = {
            "viewers": n,
            "edge_cpu_cores": round(cpu, 3),
            "fps_min": round(min(fps), 1) if fps else None,
            "fps_median": round(sorted(fps)[len(fps) // 2], 1) if fps else None,
        }
        if n:
            marginal = (cpu - base_cpu) / n
            row["core_per_viewer"] = round(marginal, 5)
            row["viewers_per_core"] = round(1 / marginal) if marginal > 0 else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("child", help="(internal) one server process with a hub probe")
    child.add_argument("--role", choices=["origin", "edge"], required=True)
    child.add_argument("--name", required=True)
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--upstream", default="")
    child.add_argument("--record", required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--capacity",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="viewer counts on edge1, e.g. 0,50,100",
    )
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument(
        "--anchor",
        choices=["file", "ffmpeg", "aiortc"],
        default="file",
        help="file: a pre-encoded 720p30 clip sent as-is (default); ffmpeg: its WHIP muxer (aiortc"
        " drops it after ~30 s: consent freshness); aiortc: the stamped pattern encoded here",
    )
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "child":
        return _child(args)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
