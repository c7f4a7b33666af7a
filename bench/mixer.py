"""Co-hosting mixer benchmark: CPU of a mixed 2- and 4-anchor 720p room, and the mixed path's
glass-to-glass latency against passthrough.

The gateway runs as a subprocess (``stagecast serve``). Load anchors are cheap: they loop a
pre-encoded 720p30 H264 clip (x264 ultrafast, GOP 30, ~1.5 Mbps) through a pre-packed aiortc
sender (no encoder in the bench process) plus a 48 kHz tone. Figures:

1. CPU, per anchor count: the gateway process (ingest of every anchor, the event loop, fan-out
   to one viewer, the mixer) and the mixer thread alone (decode each anchor once, composite,
   encode 720p and 360p, Opus), with the 720p and 360p encodes split out; over a steady window.
2. Latency: a stamped 640x360 anchor (``gateway.synthetic``) alone (passthrough), then with
   three 720p load anchors (mixed; a custom layout draws it full-canvas so a probe can read its
   stamps from the 720p program). Mixer-added latency = mixed minus passthrough percentiles.

    python -m bench.mixer                 # ~1.5 minutes
    python -m bench.mixer --json out.json --window 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np
import psutil

from gateway.launcher import free_udp_port
from gateway.synthetic import (
    LoopTrack,
    Publisher,
    StampedVideoTrack,
    ToneAudioTrack,
    encoded_clip,
    whep_watch,
    whip_publish,
)
from relay.auth.tokens import TokenAuthority

SECRET = "bench-mixer-secret-" + "y" * 40
KEY = "bench-operator-key-0123456789"
ROOM = "mix"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def publish_loop(base: str, token: str, clip: list[tuple[bytes, bool]]) -> Publisher:
    return await whip_publish(
        base,
        ROOM,
        token,
        video=LoopTrack(clip),
        audio=ToneAudioTrack(300 + 200 * (len(clip) % 7)),
        video_codec="H264",
        prepacked=True,
    )


@dataclass
class CpuRow:
    anchors: int
    window_s: float
    process_cores: float
    mixer_cores: float
    encode_720p_cores: float
    encode_360p_cores: float
    mixer_720p_cores: float  # the mixer thread minus the 360p rendition's scale + encode
    video_ticks: int  # output frames the mixer made in the window (30 fps if not starved)
    mixer_ms_per_frame: float  # mixer thread CPU per output frame (audio included)
    projected_mixer_cores_30fps: float  # that cost at a full 30 fps
    projected_720p_cores_30fps: float  # the same without the 360p rendition
    late_ticks: int
    skipped_ticks: int
    machine_load: float


@dataclass
class LatencyRow:
    path: str
    samples: int
    p50_ms: float | None
    p95_ms: float | None


@dataclass
class Results:
    cpu: list[CpuRow] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    mixer_added_p50_ms: float | None = None
    mixer_added_p95_ms: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)


async def program(api: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/v1/rooms/{ROOM}/program")).json()
    return body


async def wait_mode(api: httpx.AsyncClient, mode: str, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = await program(api)
        if p["mode"] == mode and len(p["anchors"]) == n and p["mixer_video_ticks"] > 30:
            return
        if mode == "passthrough" and p["mode"] == mode:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"room never reached {mode} with {n} anchors")


async def measure_cpu(api: httpx.AsyncClient, ps: psutil.Process, n: int, window: float) -> CpuRow:
    await asyncio.sleep(2.0)  # settle: keyframes, queues
    p0, c0, w0 = await program(api), sum(ps.cpu_times()[:2]), time.monotonic()
    psutil.cpu_percent(None)
    await asyncio.sleep(window)
    p1, c1, w1 = await program(api), sum(ps.cpu_times()[:2]), time.monotonic()
    load = psutil.cpu_percent(None) / 100 * psutil.cpu_count()
    wall = w1 - w0

    def enc(name: str) -> float:
        a = p0["mixer_encode_cpu_seconds"].get(name, 0.0)
        return float(p1["mixer_encode_cpu_seconds"].get(name, 0.0) - a) / wall

    mixer = (p1["mixer_cpu_seconds"] - p0["mixer_cpu_seconds"]) / wall
    ticks = p1["mixer_video_ticks"] - p0["mixer_video_ticks"]
    per_frame = mixer * wall / max(1, ticks)
    per_frame_360 = enc("360p") * wall / max(1, ticks)
    return CpuRow(
        anchors=n,
        window_s=round(wall, 2),
        process_cores=round((c1 - c0) / wall, 3),
        mixer_cores=round(mixer, 3),
        encode_720p_cores=round(enc("720p"), 3),
        encode_360p_cores=round(enc("360p"), 3),
        mixer_720p_cores=round(mixer - enc("360p"), 3),
        video_ticks=ticks,
        mixer_ms_per_frame=round(per_frame * 1000, 2),
        projected_mixer_cores_30fps=round(per_frame * 30, 3),
        projected_720p_cores_30fps=round((per_frame - per_frame_360) * 30, 3),
        late_ticks=p1["mixer_late_ticks"] - p0["mixer_late_ticks"],
        skipped_ticks=p1["mixer_skipped_ticks"] - p0["mixer_skipped_ticks"],
        machine_load=round(load, 2),
    )


async def measure_latency(base: str, path: str, window: float) -> LatencyRow:
    probe = await whep_watch(base, ROOM, kinds=("video",))
    try:
        await asyncio.sleep(2.0)
        start = len(probe.samples)
        await asyncio.sleep(window)
        lat = [s.latency_ms for s in probe.samples[start:]]
    finally:
        await probe.close()
    p50, p95 = pct(lat, 50), pct(lat, 95)
    return LatencyRow(
        path,
        len(lat),
        round(p50, 1) if p50 is not None else None,
        round(p95, 1) if p95 is not None else None,
    )


def start_server(port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": KEY,
        "STAGECAST_LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1"]
    argv += ["--udp-port", str(free_udp_port())]
    return subprocess.Popen([*argv, "--port", str(port)], env=env, stdout=subprocess.DEVNULL)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run(proc: subprocess.Popen[bytes], base: str, window: float) -> Results:
    res = Results(machine={"cpus": psutil.cpu_count(), "load_avg_before": os.getloadavg()})
    tokens = TokenAuthority(SECRET)
    pubs: list[Publisher] = []
    try:
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=10) as api:
            for _ in range(100):
                with contextlib.suppress(httpx.HTTPError):
                    if (await api.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            ps = psutil.Process(proc.pid)
            print("encoding the load anchors' clip...", flush=True)
            clip = await asyncio.to_thread(encoded_clip, 1280, 720)

            # 1. CPU of a mixed room with 2 and 4 720p anchors
            for n in (2, 4):
                while len(pubs) < n:
                    tok = tokens.mint(ROOM, "anchor", f"load-{len(pubs)}", 3600)
                    pubs.append(await publish_loop(base, tok, clip))
                viewer = await whep_watch(base, ROOM, decode=False)
                await wait_mode(api, "mixed", n)
                row = await measure_cpu(api, ps, n, window)
                await viewer.close()
                print(row, flush=True)
                res.cpu.append(row)
            for p in pubs:
                await p.close()
            pubs.clear()
            await asyncio.sleep(2.0)

            # 2. latency: a stamped anchor alone (passthrough), then mixed with three others
            stamped = await whip_publish(
                base,
                ROOM,
                tokens.mint(ROOM, "anchor", "stamped", 3600),
                video=StampedVideoTrack(640, 360, 30),
                video_codec="H264",
            )
            pubs.append(stamped)
            await wait_mode(api, "passthrough", 1)
            row_l = await measure_latency(base, "passthrough (1 anchor)", window)
            print(row_l, flush=True)
            res.latency.append(row_l)
            stamped_id = (await program(api))["anchors"][0]
            for i in range(3):
                tok = tokens.mint(ROOM, "anchor", f"load-{i}", 3600)
                pubs.append(await publish_loop(base, tok, clip))
            await wait_mode(api, "mixed", 4)
            ids = (await program(api))["anchors"]
            regions = [{"anchor_id": stamped_id, "x": 0, "y": 0, "w": 1, "h": 1, "z": 0}]
            for i, aid in enumerate(a for a in ids if a != stamped_id):
                regions.append(
                    {
                        "anchor_id": aid,
                        "x": 0.74 - 0.25 * i,
                        "y": 0.74,
                        "w": 0.24,
                        "h": 0.24,
                        "z": 1,
                    }
                )
            r = await api.put(
                f"/v1/rooms/{ROOM}/layout", json={"mode": "custom", "regions": regions}
            )
            r.raise_for_status()
            row_l = await measure_latency(base, "mixed (4 anchors, 720p program)", window)
            print(row_l, flush=True)
            res.latency.append(row_l)
            a, b = res.latency
            if a.p50_ms is not None and b.p50_ms is not None:
                res.mixer_added_p50_ms = round(b.p50_ms - a.p50_ms, 1)
            if a.p95_ms is not None and b.p95_ms is not None:
                res.mixer_added_p95_ms = round(b.p95_ms - a.p95_ms, 1)
    finally:
        for p in pubs:
            with contextlib.suppress(Exception):
                await p.close()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    port = free_port()
    proc = start_server(port)
    try:
        res = asyncio.run(run(proc, f"http://127.0.0.1:{port}", args.window))
    finally:
        stop_server(proc)
    out = json.dumps(asdict(res), indent=2)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out)


if __name__ == "__main__":
    main()
