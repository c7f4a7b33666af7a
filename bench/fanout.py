"""Fan-out benchmark: server CPU per viewer and server-added latency, gateway vs. naive relay.

One run measures, on this machine and over loopback only (no ICE servers):

1. ``p2p``: an anchor track straight into a decoding viewer (RTCPeerConnection to
   RTCPeerConnection, this process, same encoder as the server paths' anchor): the latency floor.
2. ``gateway``: ``stagecast serve`` as a subprocess; one WHIP anchor (720p30 stamped pattern +
   tone); N non-decoding load viewers (``bench.load_viewers`` subprocesses) plus decoding probe
   viewers that read the stamps. Per N: server CPU over a steady window, CPU per viewer (total,
   and marginal over N=0), glass-to-glass latency, server-added latency, time to first frame, and
   the fraction of the anchor's frames the load viewers received. A second p2p link runs beside
   the server path in every window; server-added latency is the probe's percentile minus that
   link's, so client-side CPU contention cancels out.
3. ``naive``: ``bench.naive_server`` (aiortc ``MediaRelay``: decode once, re-encode per viewer) at
   small N with the same metrics.

    python -m bench.fanout                       # full run, 5.5-9 minutes
    python -m bench.fanout --quick               # ~2 minutes (gateway N=1,25; naive N=1,3)
    python -m bench.fanout --json results.json --viewers 1,25,50,100 --naive-viewers 1,3,6
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np
import psutil
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack

from gateway.launcher import free_udp_port
from gateway.synthetic import (
    Publisher,
    StampedVideoTrack,
    ToneAudioTrack,
    Viewer,
    whep_watch,
    whip_publish,
)
from relay.auth.tokens import TokenAuthority
from relay.media.reassembly import is_h264_filler
from relay.rtc.adapter import use_bench_h264_encoder
from relay.rtc.peer import close_quietly, rtc_configuration

ROOM = "bench"
SECRET = "stagecast-bench-secret-" + "b" * 32
TARGET_ADDED_P50_MS = 15.0
TARGET_ADDED_P95_MS = 40.0
TARGET_CORE_PER_VIEWER = 0.004


# -- processes ----------------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the child if the benchmark dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _own_session() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``_die_with_parent`` in a session of its own: with the kernel's autogroups (Debian's
    default), a session is a scheduling group that shares the machine equally with the others.
    A server pinned to one core in the benchmark's group got that group's weight split by
    where the group runs: with the load side busy on the other core and other groups on the
    server's, it was runnable but got 0.06 core at load 15-20 and ended every peer on consent
    expiry while idle."""
    os.setsid()
    _die_with_parent()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass(eq=False)
class Child:
    name: str
    proc: asyncio.subprocess.Process
    ps: psutil.Process
    log_path: Path | None

    async def stop(self, timeout: float = 5.0) -> None:
        """terminate -> wait -> kill -> reap."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Children:
    """Every subprocess the benchmark starts; ``stop_all`` runs on every exit path."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.items: list[Child] = []
        self._logs: list[TextIO] = []

    async def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        pipes: bool = False,
        own_session: bool = False,
    ) -> Child:
        """``own_session``: the child gets its own scheduling group (``_own_session``)."""
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("w")
        self._logs.append(log)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipes else log,
            stderr=log,
            env={**os.environ, **(env or {})},
            preexec_fn=_own_session if own_session else _die_with_parent,
        )
        child = Child(name, proc, psutil.Process(proc.pid), log_path)
        self.items.append(child)
        return child

    async def stop(self, child: Child) -> None:
        await child.stop()
        if child in self.items:
            self.items.remove(child)

    async def stop_all(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.items), return_exceptions=True)
        self.items.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


async def wait_healthy(base_url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if child.proc.returncode is not None:
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(
        f"{child.name} did not become healthy in {timeout:.0f} s:\n{child.log_tail()}"
    )


# -- load viewers (subprocesses) ----------------------------------------------------------------
class LoadWorker:
    def __init__(self, child: Child) -> None:
        self.child = child
        self.n = 0

    async def call(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = self.child.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.child.name} exited:\n{self.child.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        return reply


@dataclass
class LoadRead:
    video: list[int]
    audio: list[int]
    packets: list[int | None]  # None: the viewer's stats could not be read
    elapsed: list[float]  # each viewer's worker's window, s
    connected: int = 0
    feedback_sent: int = 0  # transport-cc feedback packets the light viewers sent (since the mark)


class LoadFleet:
    """N load viewers spread evenly over ``procs`` worker subprocesses."""

    def __init__(self, workers: list[LoadWorker]) -> None:
        self.workers = workers
        self.failed = 0

    @classmethod
    async def start(
        cls, children: Children, base_url: str, procs: int, loop: str, tag: str, nice: int = 0
    ) -> LoadFleet:
        workers = []
        for i in range(procs):
            argv = [sys.executable, "-m", "bench.load_viewers", "--base-url", base_url]
            argv += ["--room", ROOM, "--loop", loop, "--nice", str(nice)]
            workers.append(LoadWorker(await children.start(f"{tag}-load{i}", argv, pipes=True)))
        return cls(workers)

    @property
    def count(self) -> int:
        return sum(w.n for w in self.workers)

    async def resize(self, n: int, timeout: float) -> list[float]:
        k = len(self.workers)
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        replies = await asyncio.gather(
            *(
                w.call({"op": "set", "n": s}, timeout)
                for w, s in zip(self.workers, shares, strict=True)
            )
        )
        ttff: list[float] = []
        for w, r in zip(self.workers, replies, strict=True):
            w.n = int(r["n"])
            self.failed += int(r["failed"])
            ttff += [float(x) for x in r["ttff"]]
        return ttff

    async def mark(self) -> None:
        await asyncio.gather(*(w.call({"op": "mark"}, 10) for w in self.workers))

    async def read(self) -> LoadRead:
        replies = await asyncio.gather(*(w.call({"op": "read"}, 10) for w in self.workers))
        video = [int(x) for r in replies for x in r["video"]]
        audio = [int(x) for r in replies for x in r["audio"]]
        packets = [None if x is None else int(x) for r in replies for x in r["packets"]]
        elapsed = [float(r["elapsed"]) for r in replies for _ in r["video"]]
        connected = sum(int(r.get("connected", 0)) for r in replies)
        feedback = sum(int(r.get("feedback_sent", 0)) for r in replies)
        return LoadRead(video, audio, packets, elapsed, connected, feedback)

    def processes(self) -> list[psutil.Process]:
        return [w.child.ps for w in self.workers]

    async def close(self, children: Children) -> None:
        with contextlib.suppress(Exception):
            await self.resize(0, 60)
        for w in self.workers:
            await children.stop(w.child)


# -- anchor encoder -----------------------------------------------------------------------------
ANCHOR_GRAIN = 4  # StampedVideoTrack grain: 1.5 Mbps of picture, no filler (see below)
ANCHOR_FILLER = [0]
"""Filler-data packets the bench anchors in this process sent (the gateway forwards none)."""


def use_anchor_encoder(preset: str, kbps: int) -> None:
    """Give aiortc's H264 encoder in THIS process (the anchor's) an x264 preset and a fixed
    constant bitrate.

    aiortc sets no preset, so libx264 runs ``medium``, which would take a good part of this
    machine's cores (DESIGN.md); a real anchor (browser, OBS) uses a hardware or fast software
    encoder. aiortc also follows REMB, re-opening the encoder (a new IDR) at every >10% change, and
    on the bare test pattern undershoots its target (BENCHMARKS.md, "Code figures"); CBR
    (``nal-hrd=cbr``, filler) at a fixed ``kbps`` makes every run carry the same packet rate, and
    the anchors' ``ANCHOR_GRAIN`` makes it all picture data (without it half was filler, which the
    gateway now drops). The p2p reference and the anchor of every server path share this encoder, so
    server-added latency is unaffected; the servers are not patched (the naive server's per-viewer
    encoders stay aiortc's). ``preset="aiortc"`` leaves aiortc alone. The patch is the adapter's
    (relay/rtc/adapter.py ``use_bench_h264_encoder``), where its guard tests see it.
    """
    if preset == "aiortc":
        return

    def count_filler(payloads: list[bytes]) -> None:
        ANCHOR_FILLER[0] += sum(1 for p in payloads if is_h264_filler(p))

    use_bench_h264_encoder(preset, kbps, count_filler)


# -- peers ----------------------------------------------------------------------------------------
def prefer_codec(transceiver: Any, codec: str) -> None:
    caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    chosen = [c for c in caps if c.name.lower() == codec.lower()]
    transceiver.setCodecPreferences(chosen + [c for c in caps if c.name.lower() == "rtx"])


@dataclass(eq=False)
class DirectLink:
    """Anchor track -> RTCPeerConnection -> RTCPeerConnection -> decoding viewer; no server."""

    pub: RTCPeerConnection
    viewer: Viewer
    video: StampedVideoTrack

    @classmethod
    async def open(cls, codec: str) -> DirectLink:
        pub = RTCPeerConnection(rtc_configuration(()))
        sub = RTCPeerConnection(rtc_configuration(()))
        video = StampedVideoTrack(grain=ANCHOR_GRAIN)
        prefer_codec(pub.addTransceiver(video, direction="sendonly"), codec)
        pub.addTransceiver(ToneAudioTrack(), direction="sendonly")
        viewer = Viewer(sub, "", httpx.AsyncClient(), {}, time.monotonic())

        @sub.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            viewer.tasks.append(asyncio.create_task(viewer._consume(track)))

        await pub.setLocalDescription(await pub.createOffer())
        await sub.setRemoteDescription(pub.localDescription)
        await sub.setLocalDescription(await sub.createAnswer())
        await pub.setRemoteDescription(sub.localDescription)
        return cls(pub, viewer, video)

    async def close(self) -> None:
        await self.viewer.close(delete=False)
        await close_quietly(self.pub)


# -- measurement ----------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class Row:
    path: str
    n: int
    window_s: float = 0.0
    server_cpu: float | None = None  # cores
    cpu_per_viewer_total: float | None = None
    cpu_per_viewer_marginal: float | None = None
    viewers_per_core: float | None = None  # marginal
    g2g_p50_ms: float | None = None
    g2g_p95_ms: float | None = None
    g2g_max_ms: float | None = None
    ref_p50_ms: float | None = None  # the p2p reference running in the same window
    ref_p95_ms: float | None = None
    added_p50_ms: float | None = None  # g2g minus the same-window p2p reference
    added_p95_ms: float | None = None
    probe_samples: int = 0
    probe_fraction: float | None = None
    probe_ttff_s: float | None = None
    load_fraction_mean: float | None = None
    load_fraction_min: float | None = None
    load_join_ttff_p50_s: float | None = None
    load_join_ttff_max_s: float | None = None
    load_failed: int = 0
    load_connected: int | None = None  # load viewers whose peer connection was still up
    server_viewers: int | None = None  # viewer sessions the server counted (load + probes)
    load_packets_per_s: float | None = None  # RTP packets/s all load viewers received
    us_per_packet: float | None = None  # marginal server CPU per packet delivered to a viewer
    cpu_per_viewer_at_rate: float | None = None  # us_per_packet x the anchor's packet rate
    anchor_frames: int = 0
    anchor_video_kbps: float | None = None  # what the anchor sent in the window (RTP payload)
    anchor_packets_per_s: float | None = None  # video + audio RTP packets: each viewer gets these
    client_main_cpu: float | None = None  # anchor encoder + probe decoding + p2p peers
    client_load_cpu: float | None = None  # load viewer subprocesses
    server_rtt_p50_ms: float | None = None  # GET /healthz round trips during the window
    server_rtt_max_ms: float | None = None
    machine_busy: float | None = None  # cores busy machine-wide (of psutil.cpu_count())
    other_cpu: float | None = None  # machine_busy minus server and bench: other processes
    quiet_wait_s: float | None = None  # waited for other processes to calm down first
    notes: list[str] = field(default_factory=list)


@dataclass
class Settings:
    codec: str
    viewers: list[int]
    naive_viewers: list[int]
    window: float
    settle: float
    probes: int
    load_procs: int
    anchor_preset: str
    anchor_kbps: int
    loop: str
    skip_naive: bool
    skip_gateway: bool = False
    reference: bool = True
    load_nice: int = 0
    quiet_threshold: float = 0.3
    quiet_wait: float = 20.0
    reassembly_wait: float = 1.0
    join_timeout: float = 20.0


class Window:
    """CPU and frame counters over one steady window."""

    def __init__(self, server: psutil.Process | None, load: list[psutil.Process]) -> None:
        self.server = server
        self.load = load
        self.me = psutil.Process()

    def snapshot(self) -> tuple[float, float | None, float, float, float]:
        return (
            time.monotonic(),
            cpu_seconds(self.server) if self.server else None,
            cpu_seconds(self.me),
            sum(cpu_seconds(p) for p in self.load),
            machine_busy_seconds(),
        )


async def sent_counters(pc: RTCPeerConnection | None) -> dict[str, int]:
    """RTP packets (all kinds) and video payload bytes an anchor's peer connection has sent."""
    if pc is None:
        return {}
    out = {"packets": 0, "video_bytes": 0}
    with contextlib.suppress(Exception):
        for stat in (await pc.getStats()).values():
            if getattr(stat, "type", None) == "outbound-rtp":
                out["packets"] += int(stat.packetsSent)
                if stat.kind == "video":
                    out["video_bytes"] += int(stat.bytesSent)
    return out


async def server_viewer_count(base_url: str) -> int | None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            return int((await client.get("/readyz")).json()["viewers"])
    return None


async def sample_response_times(base_url: str, seconds: float) -> list[float]:
    """GET /healthz twice a second for ``seconds``: how late the server's event loop answers."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=seconds + 5) as client:
        while (now := time.monotonic()) < deadline:
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/healthz")
                out.append(1000 * (time.monotonic() - now))
            await asyncio.sleep(max(0.0, min(0.5 - (time.monotonic() - now), deadline - now)))
    return out


async def steady_window(
    row: Row,
    *,
    seconds: float,
    server: psutil.Process | None,
    fleet: LoadFleet | None,
    probes: list[Viewer],
    anchor: StampedVideoTrack,
    reference: DirectLink | None = None,
    anchor_pc: RTCPeerConnection | None = None,
    base_url: str | None = None,
) -> None:
    win = Window(server, fleet.processes() if fleet else [])
    sent0 = await sent_counters(anchor_pc)
    if fleet:
        await fleet.mark()
    first = [len(p.samples) for p in probes]
    ref_first = len(reference.viewer.samples) if reference else 0
    probe_frames0 = [p.video_frames for p in probes]
    counter0 = anchor.counter
    t0, s0, m0, l0, b0 = win.snapshot()
    if base_url:
        response_times = await sample_response_times(base_url, seconds)
        row.server_rtt_p50_ms = pct(response_times, 50)
        row.server_rtt_max_ms = max(response_times, default=None)
        row.server_viewers = await server_viewer_count(base_url)
    else:
        await asyncio.sleep(seconds)
    t1, s1, m1, l1, b1 = win.snapshot()
    counter1 = anchor.counter
    sent1 = await sent_counters(anchor_pc)
    load = await fleet.read() if fleet else None
    dt = t1 - t0
    if sent0 and sent1:
        row.anchor_video_kbps = 8 * (sent1["video_bytes"] - sent0["video_bytes"]) / dt / 1000
        row.anchor_packets_per_s = (sent1["packets"] - sent0["packets"]) / dt
    row.window_s = round(dt, 2)
    row.anchor_frames = counter1 - counter0
    expected = max(1, counter1 - counter0)
    if s0 is not None and s1 is not None:
        row.server_cpu = (s1 - s0) / dt
    row.client_main_cpu = (m1 - m0) / dt
    row.client_load_cpu = (l1 - l0) / dt if fleet else None
    row.machine_busy = (b1 - b0) / dt
    ours = row.client_main_cpu + (row.client_load_cpu or 0.0) + (row.server_cpu or 0.0)
    row.other_cpu = max(0.0, row.machine_busy - ours)
    latencies = [s.latency_ms for p, i in zip(probes, first, strict=True) for s in p.samples[i:]]
    row.probe_samples = len(latencies)
    row.g2g_p50_ms, row.g2g_p95_ms = pct(latencies, 50), pct(latencies, 95)
    row.g2g_max_ms = max(latencies) if latencies else None
    if reference is not None:
        ref = [s.latency_ms for s in reference.viewer.samples[ref_first:]]
        row.ref_p50_ms, row.ref_p95_ms = pct(ref, 50), pct(ref, 95)
        if row.g2g_p50_ms is not None and row.ref_p50_ms is not None:
            row.added_p50_ms = row.g2g_p50_ms - row.ref_p50_ms
        if row.g2g_p95_ms is not None and row.ref_p95_ms is not None:
            row.added_p95_ms = row.g2g_p95_ms - row.ref_p95_ms
    got = [p.video_frames - f for p, f in zip(probes, probe_frames0, strict=True)]
    row.probe_fraction = min(got) / expected if got else None
    if load is not None and load.video:
        # Each worker counted over its own window (mark -> read), a little longer than ours:
        # expect the anchor's frame rate times that window.
        rate = expected / dt
        fractions_ = [v / (rate * e) for v, e in zip(load.video, load.elapsed, strict=True)]
        row.load_fraction_mean = float(np.mean(fractions_))
        row.load_fraction_min = min(fractions_)
        row.load_connected = load.connected
        rates = [p / e for p, e in zip(load.packets, load.elapsed, strict=True) if p is not None]
        if len(rates) == len(load.packets):
            row.load_packets_per_s = sum(rates)


async def wait_first_frames(viewers: list[Viewer], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    # Viewer has no event for its first frame: poll.
    while time.monotonic() < deadline:
        if all(v.first_frame_at is not None for v in viewers):
            return
        await asyncio.sleep(0.02)


async def run_p2p(cfg: Settings, log: Callable[[str], None]) -> Row:
    row = Row("p2p", 0)
    link = await DirectLink.open(cfg.codec)
    try:
        await wait_first_frames([link.viewer], cfg.join_timeout)
        row.probe_ttff_s = link.viewer.time_to_first_frame
        await asyncio.sleep(cfg.settle)
        waited, _ = await wait_quiet([psutil.Process()], cfg.quiet_threshold, cfg.quiet_wait)
        row.quiet_wait_s = round(waited, 1)
        await steady_window(
            row,
            seconds=cfg.window,
            server=None,
            fleet=None,
            probes=[link.viewer],
            anchor=link.video,
            anchor_pc=link.pub,
        )
    finally:
        await link.close()
    log(f"  p2p: g2g p50 {fmt(row.g2g_p50_ms)} ms p95 {fmt(row.g2g_p95_ms)} ms")
    return row


async def wait_quiet(
    ours: list[psutil.Process], threshold: float, max_wait: float
) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until processes other than ours use < ``threshold`` cores,
    sampled over 1 s; returns (seconds waited, last sample). The machine may be shared."""
    started = time.monotonic()
    other = 0.0
    while True:
        t0, b0 = time.monotonic(), machine_busy_seconds()
        c0 = sum(cpu_seconds(p) for p in ours)
        await asyncio.sleep(1.0)
        dt = time.monotonic() - t0
        ours_cpu = (sum(cpu_seconds(p) for p in ours) - c0) / dt
        other = max(0.0, (machine_busy_seconds() - b0) / dt - ours_cpu)
        waited = time.monotonic() - started
        if other < threshold or waited >= max_wait:
            return waited, other


async def is_live(base_url: str) -> bool:
    async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as client:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.head(f"/whep/{ROOM}")).status_code == 200
    return False


class ServerPath:
    """One anchor into a server; for each N: load viewers, fresh probes, a steady window."""

    def __init__(
        self,
        path: str,
        cfg: Settings,
        children: Children,
        server: Child,
        base_url: str,
        token: str | None,
        log: Callable[[str], None],
    ) -> None:
        self.path, self.cfg, self.children, self.server = path, cfg, children, server
        self.base_url, self.token, self.log = base_url, token, log
        self.publisher: Publisher | None = None
        self.anchor_video = StampedVideoTrack(grain=ANCHOR_GRAIN)
        self.fleet: LoadFleet | None = None
        self.reference: DirectLink | None = None
        self.anchor_losses = 0

    async def _publish(self) -> None:
        self.anchor_video = StampedVideoTrack(grain=ANCHOR_GRAIN)
        self.publisher = await whip_publish(
            self.base_url,
            ROOM,
            self.token,
            video=self.anchor_video,
            audio=ToneAudioTrack(),
            video_codec=self.cfg.codec,
        )
        warm = await whep_watch(self.base_url, ROOM, decode=False)
        await wait_first_frames([warm], self.cfg.join_timeout)
        await warm.close()

    async def start(self) -> None:
        await self._publish()
        if self.cfg.reference:
            # The latency floor, measured in the same windows as the server path.
            self.reference = await DirectLink.open(self.cfg.codec)
        self.fleet = await self._start_fleet()

    async def _start_fleet(self) -> LoadFleet:
        return await LoadFleet.start(
            self.children,
            self.base_url,
            self.cfg.load_procs,
            self.cfg.loop,
            self.path,
            self.cfg.load_nice,
        )

    async def recover(self) -> str:
        """The room stopped being live (the anchor session ended): start over with a new anchor
        and new load viewers."""
        self.anchor_losses += 1
        if self.fleet is not None:
            await self.fleet.close(self.children)
            self.fleet = None
        if self.publisher is not None:
            await self.publisher.close()
            self.publisher = None
        await asyncio.sleep(1.0)
        await self._publish()
        self.fleet = await self._start_fleet()
        return "anchor session had ended (see the server log); re-published, viewers re-joined"

    async def phase(self, n: int) -> Row:
        cfg, row = self.cfg, Row(self.path, n)
        if not await is_live(self.base_url):
            row.notes.append(await self.recover())
        fleet = self.fleet
        assert fleet is not None
        if n > fleet.count:
            # Joins are the gateway's busiest moments; do not add a neighbour's load burst.
            ours = [self.server.ps, psutil.Process(), *fleet.processes()]
            await wait_quiet(ours, cfg.quiet_threshold, cfg.quiet_wait)
        failed_before = fleet.failed
        join_ttff = await fleet.resize(n, timeout=cfg.join_timeout * (2 + n / 4))
        row.load_failed = fleet.failed - failed_before
        if join_ttff:
            row.load_join_ttff_p50_s = pct(join_ttff, 50)
            row.load_join_ttff_max_s = max(join_ttff)
        await asyncio.sleep(cfg.settle / 2)
        probes = [
            await whep_watch(self.base_url, ROOM, decode=True, timeout=cfg.join_timeout)
            for _ in range(cfg.probes)
        ]
        try:
            await wait_first_frames(probes, cfg.join_timeout)
            ttffs = [p.time_to_first_frame for p in probes if p.time_to_first_frame is not None]
            row.probe_ttff_s = max(ttffs) if ttffs else None
            if len(ttffs) < len(probes):
                if not await is_live(self.base_url):
                    raise RuntimeError("the room stopped being live while the probes joined")
                row.notes.append("a probe got no frame")
            await asyncio.sleep(cfg.settle)
            ours = [self.server.ps, psutil.Process(), *fleet.processes()]
            waited, other = await wait_quiet(ours, cfg.quiet_threshold, cfg.quiet_wait)
            row.quiet_wait_s = round(waited, 1)
            if other >= cfg.quiet_threshold:
                row.notes.append(f"other processes still used {other:.2f} cores")
            await steady_window(
                row,
                seconds=cfg.window,
                server=self.server.ps,
                fleet=fleet,
                probes=probes,
                anchor=self.anchor_video,
                reference=self.reference,
                anchor_pc=self.publisher.pc if self.publisher else None,
                base_url=self.base_url,
            )
        finally:
            await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)
        if fleet.count != n:
            row.notes.append(f"only {fleet.count} of {n} load viewers joined")
        if not await is_live(self.base_url):
            row.notes.append("the room was not live after this window (anchor session ended)")
        return row

    async def phase_with_retry(self, n: int) -> Row:
        try:
            return await self.phase(n)
        except (httpx.HTTPError, RuntimeError, TimeoutError) as exc:
            first = f"first attempt failed: {exc!r}"[:300]
            self.log(f"  {self.path} N={n}: {first}; retrying once with a new anchor")
        try:
            note = await self.recover()
            row = await self.phase(n)
            row.notes[:0] = [first, note]
            return row
        except (httpx.HTTPError, RuntimeError, TimeoutError) as exc:
            self.log(f"  {self.path} N={n}: FAILED {exc!r}")
            return Row(self.path, n, notes=[first, f"retry failed: {exc!r}"[:300]])

    async def run(self, counts: list[int]) -> list[Row]:
        rows: list[Row] = []
        try:
            await self.start()
            for n in [0, *counts]:
                row = await self.phase_with_retry(n)
                rows.append(row)
                self.log(
                    f"  {self.path} N={n}: server {fmt(row.server_cpu, 3)} cores, "
                    f"g2g p50 {fmt(row.g2g_p50_ms)} p95 {fmt(row.g2g_p95_ms)} ms "
                    f"(p2p {fmt(row.ref_p50_ms)} / {fmt(row.ref_p95_ms)}), "
                    f"load frames {fmt_frac(row.load_fraction_mean)}, "
                    f"client {fmt(row.client_main_cpu, 2)}+{fmt(row.client_load_cpu, 2)}, "
                    f"other {fmt(row.other_cpu, 2)} cores"
                    + (f" [{'; '.join(row.notes)}]" if row.notes else "")
                )
        finally:
            if self.fleet is not None:
                await self.fleet.close(self.children)
            if self.reference is not None:
                await self.reference.close()
            if self.publisher is not None:
                await self.publisher.close()
        return rows


def derive(rows: list[Row], p2p: Row | None) -> None:
    """Per-viewer CPU (total and marginal over N=0); latency added over the standalone p2p run
    where no same-window reference was measured."""
    base = next((r for r in rows if r.n == 0), None)
    for r in rows:
        if r.server_cpu is not None and r.n > 0:
            r.cpu_per_viewer_total = r.server_cpu / r.n
            if base is not None and base.server_cpu is not None:
                r.cpu_per_viewer_marginal = (r.server_cpu - base.server_cpu) / r.n
                if r.cpu_per_viewer_marginal > 0:
                    r.viewers_per_core = 1 / r.cpu_per_viewer_marginal
                if r.load_packets_per_s:
                    # Robust to a server that falls behind and drops: cost per packet it did
                    # deliver, scaled to one viewer that gets every packet the anchor sends.
                    r.us_per_packet = 1e6 * (r.server_cpu - base.server_cpu) / r.load_packets_per_s
                    if r.anchor_packets_per_s:
                        r.cpu_per_viewer_at_rate = r.us_per_packet * r.anchor_packets_per_s / 1e6
        if r.ref_p50_ms is not None or p2p is None:
            continue
        if r.g2g_p50_ms is not None and p2p.g2g_p50_ms is not None:
            r.added_p50_ms = r.g2g_p50_ms - p2p.g2g_p50_ms
        if r.g2g_p95_ms is not None and p2p.g2g_p95_ms is not None:
            r.added_p95_ms = r.g2g_p95_ms - p2p.g2g_p95_ms


# -- reporting ------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_frac(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


COLUMNS: list[tuple[str, Callable[[Row], str]]] = [
    ("path", lambda r: r.path),
    ("N", lambda r: str(r.n) if r.path != "p2p" else "-"),
    (
        "sessions srv/conn",
        lambda r: (
            f"{r.server_viewers if r.server_viewers is not None else '-'}"
            f" / {r.load_connected if r.load_connected is not None else '-'}"
        ),
    ),
    ("server cores", lambda r: fmt(r.server_cpu, 3)),
    ("core/viewer total", lambda r: fmt(r.cpu_per_viewer_total, 4)),
    ("core/viewer marginal", lambda r: fmt(r.cpu_per_viewer_marginal, 4)),
    ("viewers/core", lambda r: fmt(r.viewers_per_core, 0)),
    ("us/pkt", lambda r: fmt(r.us_per_packet, 1)),
    ("core/viewer @rate", lambda r: fmt(r.cpu_per_viewer_at_rate, 4)),
    ("g2g p50/p95 ms", lambda r: f"{fmt(r.g2g_p50_ms)} / {fmt(r.g2g_p95_ms)}"),
    ("p2p same window p50/p95", lambda r: f"{fmt(r.ref_p50_ms)} / {fmt(r.ref_p95_ms)}"),
    ("added p50/p95 ms", lambda r: f"{fmt(r.added_p50_ms)} / {fmt(r.added_p95_ms)}"),
    ("probe TTFF s", lambda r: fmt(r.probe_ttff_s, 2)),
    ("probe frames", lambda r: fmt_frac(r.probe_fraction)),
    (
        "load frames mean/min",
        lambda r: f"{fmt_frac(r.load_fraction_mean)} / {fmt_frac(r.load_fraction_min)}",
    ),
    (
        "load TTFF p50/max s",
        lambda r: f"{fmt(r.load_join_ttff_p50_s, 2)} / {fmt(r.load_join_ttff_max_s, 2)}",
    ),
    (
        "client cores main+load",
        lambda r: f"{fmt(r.client_main_cpu, 2)} + {fmt(r.client_load_cpu, 2)}",
    ),
    (
        "anchor kbps / pkt/s",
        lambda r: f"{fmt(r.anchor_video_kbps, 0)} / {fmt(r.anchor_packets_per_s, 0)}",
    ),
    (
        "healthz p50/max ms",
        lambda r: f"{fmt(r.server_rtt_p50_ms, 0)} / {fmt(r.server_rtt_max_ms, 0)}",
    ),
    ("machine busy", lambda r: fmt(r.machine_busy, 2)),
    ("other procs", lambda r: fmt(r.other_cpu, 2)),
]


def table(rows: list[Row]) -> str:
    cells = [[name for name, _ in COLUMNS]] + [[f(r) for _, f in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    import aiortc
    import av

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpus": psutil.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", ""),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parent.parent

        def git(*cmd: str) -> str:
            out = subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True)
            return out.stdout

        info["git_head"] = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "gateway", "relay")
        info["uncommitted_in_gateway_relay"] = [ln[3:] for ln in dirty.splitlines()]
    with contextlib.suppress(ImportError):
        import uvloop

        info["uvloop"] = getattr(uvloop, "__version__", "")
    return info


def verdict(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        if r.path != "gateway" or r.n == 0:
            continue
        checks = [
            ("added p50", r.added_p50_ms, TARGET_ADDED_P50_MS, "ms"),
            ("added p95", r.added_p95_ms, TARGET_ADDED_P95_MS, "ms"),
            ("core/viewer (marginal)", r.cpu_per_viewer_marginal, TARGET_CORE_PER_VIEWER, ""),
        ]
        parts = []
        for name, value, target, unit in checks:
            if value is None:
                parts.append(f"{name} n/a")
            else:
                ok = "ok" if value <= target else "MISSED"
                parts.append(f"{name} {value:.4g}{unit} <= {target:g}{unit}: {ok}")
        out.append(f"gateway N={r.n}: " + "; ".join(parts))
    return out


# -- main -----------------------------------------------------------------------------------------
def parse_counts(text: str) -> list[int]:
    counts = sorted({int(x) for x in text.split(",") if x.strip()})
    if any(n <= 0 for n in counts):
        raise argparse.ArgumentTypeError("viewer counts must be positive")
    return counts


@dataclass
class Results:
    p2p: Row | None = None
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_json(self, cfg: Settings) -> dict[str, Any]:
        return {
            "machine": machine_info(),
            "settings": asdict(cfg),
            "elapsed_s": self.elapsed_s,
            "p2p": asdict(self.p2p) if self.p2p else None,
            "rows": [asdict(r) for r in self.rows],
            "errors": self.errors,
            "targets": {
                "added_p50_ms": TARGET_ADDED_P50_MS,
                "added_p95_ms": TARGET_ADDED_P95_MS,
                "core_per_viewer": TARGET_CORE_PER_VIEWER,
            },
        }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run_path(
    name: str,
    argv: list[str],
    env: dict[str, str],
    token: str | None,
    counts: list[int],
    cfg: Settings,
    children: Children,
    results: Results,
) -> None:
    port = free_port()
    server = await children.start(
        name, [*argv, "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(base, server)
        rows = await ServerPath(name, cfg, children, server, base, token, log).run(counts)
        derive(rows, results.p2p)
        results.rows += rows
    finally:
        await children.stop(server)
        if server.log_path is not None:
            for exc, count in server_exceptions(server.log_path).items():
                results.errors.append(f"{name} server log: {count} x {exc}")
            for when, reason in anchor_endings(server.log_path):
                results.errors.append(f"{name} server log: {when} an anchor left: {reason}")


def gateway_env(cfg: Settings) -> dict[str, str]:
    # info: the log then says why an anchor session ended (a few lines per join, none per packet)
    env = {
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_LOG_LEVEL": "info",
        # every load viewer comes from 127.0.0.1: the per-address WHIP/WHEP rate limit would
        # refuse the joins with 429 (admission control stays at its defaults)
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "1000",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "1000",
    }
    if cfg.reassembly_wait > 0:
        env["STAGECAST_MEDIA__REASSEMBLY_WAIT"] = str(cfg.reassembly_wait)
    return env


def server_exceptions(child_log: Path) -> dict[str, int]:
    """Tracebacks in a server's log, keyed by the exception line and the innermost frame that
    is not in site-packages."""
    counts: dict[str, int] = {}
    if not child_log.exists():
        return counts
    where, inside = "", False
    for line in child_log.read_text(errors="replace").splitlines():
        if "Traceback (most recent call last)" in line:
            where, inside = "", True
        elif inside and line.strip().startswith('File "'):
            path = line.strip().split('"')[1]
            if "site-packages" not in path and "/lib/python" not in path:
                where = "/".join(path.rsplit("/", 2)[-2:]) + "," + line.split(",")[1]
        elif inside and line and not line.startswith((" ", "\t")):
            key = line.strip()[:120] + (f" (at {where.strip()})" if where else "")
            counts[key] = counts.get(key, 0) + 1
            inside = False
    return counts


def anchor_endings(child_log: Path) -> list[tuple[str, str]]:
    """(time, reason) of every anchor session the gateway ended, but the bench's own DELETEs."""
    out = []
    if child_log.exists():
        for line in child_log.read_text(errors="replace").splitlines():
            _, found, reason = line.partition(" left room ")
            if found and " anchor " in line and not reason.endswith(": deleted"):
                out.append((line[11:23], reason.split(": ", 1)[-1]))
    return out


async def run(cfg: Settings, log_dir: Path, results: Results) -> None:
    use_anchor_encoder(cfg.anchor_preset, cfg.anchor_kbps)
    children = Children(log_dir)
    try:
        log("p2p reference (no server)...")
        results.p2p = await run_p2p(cfg, log)
        paths: list[tuple[str, list[str], dict[str, str], str | None, list[int]]] = []
        if not cfg.skip_gateway:
            paths.append(
                (
                    "gateway",
                    [
                        sys.executable,
                        "-m",
                        "gateway.cli",
                        "serve",
                        "--udp-port",
                        str(free_udp_port()),
                    ],
                    gateway_env(cfg),
                    TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600),
                    cfg.viewers,
                )
            )
        if not cfg.skip_naive:
            argv = [sys.executable, "-m", "bench.naive_server", "--codec", cfg.codec]
            paths.append(("naive", argv, {}, None, cfg.naive_viewers))
        for name, argv, env, token, counts in paths:
            log(f"{name} ({' '.join(argv[1:4])})...")
            try:
                await run_path(name, argv, env, token, counts, cfg, children, results)
            except (httpx.HTTPError, RuntimeError, TimeoutError) as exc:
                results.errors.append(f"{name}: {exc!r}"[:500])
                log(f"  {name} FAILED: {exc!r}")
    finally:
        await children.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--codec", choices=["H264", "VP8"], default="H264")
    parser.add_argument("--viewers", type=parse_counts, default=None, help="default 1,25,50,100")
    parser.add_argument("--naive-viewers", type=parse_counts, default=None, help="default 1,3,6")
    parser.add_argument("--no-naive", action="store_true", help="skip the MediaRelay baseline")
    parser.add_argument("--no-gateway", action="store_true", help="skip the gateway path")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="no p2p link beside the server path (server-added = minus the standalone p2p run)",
    )
    parser.add_argument("--window", type=float, default=None, help="steady window, s (default 10)")
    parser.add_argument(
        "--settle", type=float, default=None, help="wait before a window (default 3)"
    )
    parser.add_argument("--probes", type=int, default=1, help="decoding probe viewers (1-2)")
    parser.add_argument("--load-procs", type=int, default=2, help="load viewer subprocesses")
    parser.add_argument(
        "--anchor-preset",
        default="ultrafast",
        help="x264 preset of the bench's anchor encoder; 'aiortc': aiortc's (medium, REMB)",
    )
    parser.add_argument(
        "--anchor-kbps", type=int, default=1500, help="anchor's constant H264 bitrate (1500)"
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--load-nice",
        type=int,
        default=0,
        help="niceness of the load viewer subprocesses (0). 10 gives the server the CPU first, "
        "but starved clients then miss ICE consent checks and the server drops them",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.3,
        help="before each window, wait until other processes use fewer cores than this",
    )
    parser.add_argument(
        "--reassembly-wait",
        type=float,
        default=1.0,
        help="gateway media.reassembly_wait, s (its default 0.1 drops the anchor when its loop "
        "lags 100 ms inside a frame: see docs/benchmarks-history.md); 0 keeps the gateway's "
        "default",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=None, help="longest such wait, s (15; quick 5)"
    )
    parser.add_argument("--quick", action="store_true", help="~2 minutes: fewer N, 5 s windows")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--log-dir", type=Path, default=None, help="subprocess logs (default: tmp)")
    parser.add_argument("--budget", type=float, default=None, help="hard limit, s (900; quick 300)")
    args = parser.parse_args(argv)

    quick = args.quick
    cfg = Settings(
        codec=args.codec,
        viewers=args.viewers or ([1, 25] if quick else [1, 25, 50, 100]),
        naive_viewers=args.naive_viewers or ([1, 3] if quick else [1, 3, 6]),
        window=args.window or (5.0 if quick else 10.0),
        settle=args.settle or (2.0 if quick else 3.0),
        probes=max(1, min(2, args.probes)),
        load_procs=max(1, args.load_procs),
        anchor_preset=args.anchor_preset,
        anchor_kbps=args.anchor_kbps,
        loop=args.loop,
        skip_naive=args.no_naive,
        skip_gateway=args.no_gateway,
        reference=not args.no_reference,
        load_nice=args.load_nice,
        quiet_threshold=args.quiet_threshold,
        reassembly_wait=args.reassembly_wait,
        quiet_wait=args.quiet_wait if args.quiet_wait is not None else (5.0 if quick else 15.0),
    )
    budget = args.budget or (300.0 if quick else 900.0)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="stagecast-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    results = Results()
    started = time.monotonic()

    async def bounded() -> None:
        try:
            await asyncio.wait_for(run(cfg, log_dir, results), budget)
        except TimeoutError:
            results.errors.append(f"the run hit its {budget:g} s budget; results are partial")

    try:
        if cfg.loop == "uvloop":
            import uvloop

            uvloop.run(bounded())
        else:
            asyncio.run(bounded())
    except KeyboardInterrupt:
        results.errors.append("interrupted; results are partial")
    results.elapsed_s = round(time.monotonic() - started, 1)
    result = results.to_json(cfg)
    rows = ([results.p2p] if results.p2p else []) + results.rows
    m = result["machine"]
    print(
        f"\nmachine: {m['cpus']} cpus ({m['cpu_model']}), python {m['python']}, "
        f"aiortc {m['aiortc']}, av {m['av']}, codec {cfg.codec}, anchor x264 preset "
        f"{cfg.anchor_preset} CBR {cfg.anchor_kbps} kbps, window {cfg.window:g} s, "
        f"run {result['elapsed_s']} s"
    )
    if m.get("git_head"):
        dirty = m.get("uncommitted_in_gateway_relay") or []
        print(f"code: {m['git_head']}" + (f" + uncommitted {', '.join(dirty)}" if dirty else ""))
    print()
    print(table(rows))
    print()
    for line in verdict(rows):
        print(line)
    notes = [f"{r.path} N={r.n}: {note}" for r in rows for note in r.notes]
    if notes:
        print("\nnotes:")
        for line in notes:
            print(f"  {line}")
    for err in results.errors:
        print(f"ERROR: {err}")
    print(f"\nsubprocess logs: {log_dir}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
