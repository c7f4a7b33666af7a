"""Join benchmark: what a burst of WHEP viewers joining at once costs the node, and what it does
to a viewer already watching.

One ``stagecast serve`` process (optionally pinned), one 720p30 WHIP anchor that honours PLI
(aiortc's encoder, x264 ultrafast, CBR), one *watcher* viewer already watching, and
``--procs`` worker subprocesses of light viewers (``bench.load_viewers.SocketCounter``: once a
viewer has its first frame its RTP is counted at the socket, not decrypted). Per burst of N
viewers POSTed at once:

- the node's CPU (``/proc/PID/stat``: the whole process, all threads) from the first POST until
  every viewer has its first frame or was refused; minus what the node spent before the burst
  per packet the anchor sent, times the anchor's packets during it ("gross"), and also minus the
  fan-out to those that already joined ("net": the node's own count of its fan-out loop, plus
  the rest of a viewer's steady cost from a window after the burst times each viewer's seconds
  of watching inside it); per join (refused POSTs included in the cost, not in the count), ms;
- time to first frame per viewer, from its POST (p50 / p95), and the burst's length;
- the share refused with 503 (admission control) and other failures;
- the watcher's longest gap between video frames and its gaps over 200 ms (freezes) during the
  burst and the steady window after it;
- the node's CPU per viewer leaving (all DELETEd at once).

``--ports shared,per-peer`` runs the node on its one UDP port (``webrtc.udp_port``, the default)
and on a port per peer connection (``udp_port = 0``), interleaved like trees: the time to first
frame of 1, 50 and 200 joins at once on each. ``--tree`` runs the node from other checkouts
(the same Python and packages; each tree needs its C extensions built or copied): trees are
run in turn for each repetition (interleaved), so a before/after comparison shares the
machine's load. The POST rate limit and the slow-connection
gate are lifted through settings (as bench.capacity does); admission control stays at its
defaults, so refusals show.

    python -m bench.joins                                    # bursts 1,50,200, this tree
    python -m bench.joins --bursts 1,50 --repeat 3 --tree /work/wt/base --tree .
    python -m bench.joins --ports shared,per-peer            # the one UDP port against per-peer
    python -m bench.joins --bursts 500 --rates 200@50        # also 200 joins at 50 per second
    python -m bench.joins --bursts 200 --no-admission --profile DIR   # py-spy --native stacks
    python -m bench.joins --worker --base-url URL            # (internal) a worker of viewers
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.capacity import anchor_packets
from bench.fanout import (
    ANCHOR_GRAIN,
    ROOM,
    SECRET,
    Child,
    Children,
    LoadWorker,
    _die_with_parent,
    pct,
    use_anchor_encoder,
    wait_healthy,
)
from bench.load_viewers import SocketCounter
from gateway.launcher import free_port, free_udp_port
from gateway.synthetic import (
    StampedVideoTrack,
    ToneAudioTrack,
    Viewer,
    whep_watch,
    whip_publish,
)
from relay.auth.tokens import TokenAuthority
from relay.rtc.adapter import install_ingest_tap

log = logging.getLogger("bench.joins")
OPERATOR_KEY = "joins-bench-operator-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FREEZE_S = 0.2
SETTINGS = Path("relay/server/settings.py")


def process_cpu(pid: int) -> float:
    """CPU seconds of the whole process (every thread, live or gone) from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def process_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def until(predicate: Callable[[], bool], timeout: float, step: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


# -- worker (subprocess): viewers that join on command --------------------------------------------
class JoinPool:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.viewers: list[Viewer] = []
        self.counters: list[SocketCounter] = []

    async def _join(self, delay: float = 0.0) -> dict[str, Any]:
        if delay:
            await asyncio.sleep(delay)
        try:
            viewer = await whep_watch(self.base_url, ROOM, decode=False, timeout=self.timeout)
        except httpx.HTTPStatusError as exc:
            return {"status": exc.response.status_code}
        except Exception as exc:
            log.warning("join failed: %r", exc)
            return {"status": 0}
        # polled: first_frame_at itself is stamped at the packet
        await until(lambda: viewer.first_frame_at is not None, self.timeout, 0.02)
        self.viewers.append(viewer)
        if viewer.first_frame_at is None:
            return {"status": 201, "post_at": viewer.joined_at}
        self.counters.append(SocketCounter(viewer))
        return {"status": 201, "post_at": viewer.joined_at, "first_at": viewer.first_frame_at}

    async def burst(self, n: int, spacing: float = 0.0) -> dict[str, Any]:
        results = await asyncio.gather(*(self._join(i * spacing) for i in range(n)))
        return {"op": "burst", "results": results}

    async def leave(self) -> dict[str, Any]:
        gone, self.viewers, self.counters = self.viewers, [], []
        await asyncio.gather(*(v.close() for v in gone), return_exceptions=True)
        return {"op": "leave", "n": len(gone)}


async def serve_worker(args: argparse.Namespace) -> None:
    pool = JoinPool(args.base_url, args.join_timeout)
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            cmd = json.loads(line)
            if cmd["op"] == "burst":
                reply = await pool.burst(int(cmd["n"]), float(cmd.get("spacing", 0.0)))
            elif cmd["op"] == "leave":
                reply = await pool.leave()
            else:
                break
            print(json.dumps(reply), flush=True)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.leave(), 30)


# -- the watcher: a viewer already watching, with every video frame's arrival time -----------------
@dataclass(eq=False)
class Watcher:
    viewer: Viewer
    arrivals: list[float] = field(default_factory=list)

    @classmethod
    async def start(cls, base_url: str) -> Watcher:
        deadline = time.monotonic() + 60
        while True:  # a node busy starting up (loop late) refuses with 503 for a while
            try:
                viewer = await whep_watch(base_url, ROOM, decode=False, timeout=20)
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 503 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
        watcher = cls(viewer)
        for t in viewer.pc.getTransceivers():
            if t.kind == "video":
                install_ingest_tap(t.receiver, watcher._packet)
        if not await until(lambda: bool(watcher.arrivals), 20, 0.05):
            raise RuntimeError("the watcher got no video")
        return watcher

    def _packet(self, packet: Any, codec: Any) -> None:
        if packet.marker:
            self.arrivals.append(time.monotonic())

    def gaps(self, start: float, end: float) -> list[float]:
        times = [t for t in self.arrivals if start <= t <= end]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if times:
            gaps += [times[0] - start, end - times[-1]]
        else:
            gaps.append(end - start)
        return gaps


# -- one node under test ---------------------------------------------------------------------------
@dataclass
class Burst:
    tree: str
    n: int
    rate: float = 0.0  # joins per second (0: all at once)
    seconds: float = 0.0
    joined: int = 0
    refused: int = 0  # 503
    failed: int = 0  # any other failure, or no first frame
    cpu_s: float = 0.0  # node CPU over the burst
    base_cores: float = 0.0  # the node's rate before the burst
    after_cores: float = 0.0  # a steady window after it
    gross_ms_per_join: float | None = None
    net_ms_per_join: float | None = None
    ttff_p50_ms: float | None = None
    ttff_p95_ms: float | None = None
    watcher_max_gap_ms: float = 0.0
    watcher_freezes: int = 0
    leave_ms_per_viewer: float | None = None
    client_ms_per_join: float | None = None  # the viewer workers' CPU over the burst, per join
    rss_mib: float = 0.0
    loadavg: float = 0.0  # the machine's 1-minute load average at the burst's end
    # the node's loop over the burst (``--stall-trace``, trees that have metrics.stall_trace)
    loop_longest_ms: float | None = None  # its longest step (the tick's lateness)
    loop_lateness: dict[str, int] = field(default_factory=dict)  # histogram, ms buckets
    loop_stalls: list[dict[str, Any]] = field(default_factory=list)  # the longest, with stacks
    gc_collections: list[int] = field(default_factory=list)  # per generation, over the burst


class Node:
    def __init__(
        self, children: Children, tree: Path, args: argparse.Namespace, ports: str = "shared"
    ) -> None:
        self.children = children
        self.tree = tree
        self.ports = ports  # "shared": the node's one UDP port; "per-peer": udp_port 0
        self.args = args
        self.child: Child | None = None
        self.workers: list[LoadWorker] = []
        self.publisher: Any = None
        self.watcher: Watcher | None = None
        self.url = ""

    @property
    def label(self) -> str:
        """The tree's name, and the UDP mode when both are measured."""
        both = len(self.args.ports.split(",")) > 1
        return f"{self.tree.name} {self.ports}" if both else self.tree.name

    @property
    def pid(self) -> int:
        assert self.child is not None
        return int(self.child.proc.pid)

    async def start(self) -> None:
        args = self.args
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
            "STAGECAST_LOG_LEVEL": "warning",
            "STAGECAST_API__OPERATOR_KEY": OPERATOR_KEY,
            "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "10000",
            "STAGECAST_LIMITS__SESSION_POST_BURST": "10000",
            "STAGECAST_LIMITS__MAX_SLOW_CONNECTIONS_PER_ADDRESS": "10000",
            "PYTHONPATH": str(self.tree),
        }
        if args.stall_trace and "stall_trace" in (self.tree / SETTINGS).read_text():
            env["STAGECAST_METRICS__STALL_TRACE"] = str(args.stall_trace)
        if args.no_admission:  # (for profiles: a profiled node is slow enough to refuse all)
            env["STAGECAST_LIMITS__MAX_LOOP_LAG"] = "1000"
            env["STAGECAST_LIMITS__MAX_LOOP_BUSY"] = "1"
        name = f"node-{self.tree.name}-{port}"
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
        argv += ["--udp-port", str(free_udp_port() if self.ports == "shared" else 0)]
        if args.cprofile:
            out = args.cprofile / f"{name}.prof"
            argv[1:3] = ["-m", "bench.joins", "--node-cprofile", str(out), "--"]
        if args.server_cpu:
            argv = ["taskset", "-c", args.server_cpu, *argv]
        log_path = self.children.log_dir / f"{name}.log"
        out = log_path.open("w")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.tree,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=_die_with_parent,
        )
        out.close()
        self.child = Child(name, proc, psutil.Process(proc.pid), log_path)
        self.children.items.append(self.child)
        await wait_healthy(self.url, self.child)
        tokens = TokenAuthority(SECRET)
        self.publisher = await whip_publish(
            self.url,
            ROOM,
            tokens.mint(ROOM, "anchor", "bench", 3600),
            video=StampedVideoTrack(1280, 720, 30, grain=ANCHOR_GRAIN),
            audio=ToneAudioTrack(440),
            video_codec="H264",
        )
        await asyncio.sleep(1.0)
        self.watcher = await Watcher.start(self.url)
        for i in range(args.procs):
            argv = [sys.executable, "-m", "bench.joins", "--worker", "--base-url", self.url]
            argv += ["--join-timeout", str(args.join_timeout)]
            if args.client_cpus:
                argv = ["taskset", "-c", args.client_cpus, *argv]
            if args.client_nice:
                argv = ["nice", "-n", str(args.client_nice), *argv]
            child = await self.children.start(f"{name}-w{i}", argv, pipes=True)
            self.workers.append(LoadWorker(child))

    async def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.call({"op": "quit"}, 1)
            await self.children.stop(worker.child)
        for peer in (self.watcher.viewer if self.watcher else None, self.publisher):
            if peer is not None:
                with contextlib.suppress(Exception):
                    await peer.close()
        if self.child is not None:
            if self.args.cprofile and self.child.proc.returncode is None:
                self.child.proc.send_signal(signal.SIGINT)  # cProfile writes on the way out
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.child.proc.wait(), 30)
            await self.children.stop(self.child)

    async def viewers(self) -> int:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            body: dict[str, Any] = (await client.get("/readyz")).json()
            return int(body["viewers"])

    async def runtime(self) -> dict[str, Any]:
        headers = {"X-API-Key": OPERATOR_KEY}
        async with httpx.AsyncClient(base_url=self.url, timeout=90, headers=headers) as client:
            body: dict[str, Any] = (await client.get("/v1/runtime")).json()
            return body

    async def fanout_cpu(self) -> float:
        """The node's own count of CPU in the hub's viewer loop (sends, SRTP, sockets)."""
        headers = {"X-API-Key": OPERATOR_KEY}
        # a node busy with 200 joins on a loaded machine may take seconds to answer
        async with httpx.AsyncClient(base_url=self.url, timeout=90, headers=headers) as client:
            body = (await client.get(f"/v1/rooms/{ROOM}/stream")).json()
            # an overwhelmed node may have lost the anchor (no stream): the burst's row shows it
            return float(body.get("fanout_cpu_s", 0.0))

    async def rate(self, seconds: float) -> tuple[float, float, float]:
        """The node's cores over ``seconds``, those spent outside the fan-out loop, and its CPU
        seconds per packet the anchor sent."""
        fan0, sent0 = await self.fanout_cpu(), await anchor_packets(self.publisher.pc)
        cpu0, t0 = process_cpu(self.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = process_cpu(self.pid), time.monotonic()
        fan1, sent1 = await self.fanout_cpu(), await anchor_packets(self.publisher.pc)
        cpu = cpu1 - cpu0
        return cpu / (t1 - t0), (cpu - (fan1 - fan0)) / (t1 - t0), cpu / max(1, sent1 - sent0)

    def clients_cpu(self) -> float:
        """CPU seconds of the viewer workers (the joining clients' own share of the machine)."""
        return sum(process_cpu(int(w.child.proc.pid)) for w in self.workers)

    def profile(self, out: Path) -> asyncio.Future[Any]:
        """py-spy sampling the node (active threads only: samples ~ CPU) until interrupted."""
        spy = Path(sys.executable).with_name("py-spy")
        argv = [str(spy), "record", "--pid", str(self.pid), "--format", "raw", "--rate", "250"]
        argv += ["--output", str(out), "--native"]  # (native needs the process paused per sample)
        return asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
        )

    async def burst(self, n: int, rate: float = 0.0) -> Burst:
        """``n`` joins at once, or at ``rate`` per second."""
        args = self.args
        assert self.watcher is not None
        result = Burst(self.label, n, rate)
        result.base_cores, base_other, per_packet = await self.rate(args.settle)
        k = len(self.workers)
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        spy = None
        if args.profile:
            spy = self.profile(args.profile / f"{self.tree.name}-{n}-{time.time():.0f}.txt")
            await asyncio.sleep(0.5)  # py-spy attaches
        fan0, sent0 = await self.fanout_cpu(), await anchor_packets(self.publisher.pc)
        rt0 = await self.runtime()
        cpu0, t0 = process_cpu(self.pid), time.monotonic()
        clients0 = self.clients_cpu()
        replies = await asyncio.gather(
            *(
                w.call(
                    {"op": "burst", "n": s, "spacing": k / rate if rate else 0.0},
                    args.join_timeout * 3 + 60 + n / max(rate, 1e-3),
                )
                for w, s in zip(self.workers, shares, strict=True)
                if s
            )
        )
        cpu1, t1 = process_cpu(self.pid), time.monotonic()
        clients1 = self.clients_cpu()
        fan1, sent1 = await self.fanout_cpu(), await anchor_packets(self.publisher.pc)
        loop_over(result, rt0, await self.runtime())
        if spy is not None:
            proc = await spy
            proc.send_signal(signal.SIGINT)
            await proc.wait()
        result.after_cores, after_other, _ = await self.rate(args.settle)
        t2 = time.monotonic()
        results = [r for reply in replies for r in reply["results"]]
        ttff = [r["first_at"] - r["post_at"] for r in results if "first_at" in r]
        watching = [t1 - r["first_at"] for r in results if "first_at" in r]
        result.seconds = t1 - t0
        result.joined = len(ttff)
        result.refused = sum(1 for r in results if r["status"] == 503)
        result.failed = n - result.joined - result.refused
        result.cpu_s = cpu1 - cpu0
        if result.joined:
            # what the node did before the burst (the anchor's ingest, the watcher), scaled by
            # the anchor's packets during it: a starved anchor sends fewer, and those cost less
            gross = result.cpu_s - per_packet * (sent1 - sent0)
            # fan-out to those already in: the loop's own count, plus the rest of a viewer's
            # steady cost (RTCP, consent checks, wakeups) from the window after the burst
            other = max(0.0, after_other - base_other) / result.joined
            base_fanout = (result.base_cores - base_other) / result.base_cores * per_packet
            fanout = (fan1 - fan0) - base_fanout * (sent1 - sent0)
            net = gross - fanout - other * sum(watching)
            result.gross_ms_per_join = 1000 * gross / result.joined
            result.net_ms_per_join = 1000 * net / result.joined
            result.client_ms_per_join = 1000 * (clients1 - clients0) / result.joined
            result.ttff_p50_ms = 1000 * (pct(ttff, 50) or 0.0)
            result.ttff_p95_ms = 1000 * (pct(ttff, 95) or 0.0)
        gaps = self.watcher.gaps(t0, t2)
        result.watcher_max_gap_ms = 1000 * max(gaps)
        result.watcher_freezes = sum(1 for g in gaps if g > FREEZE_S)
        result.rss_mib = process_rss_mib(self.pid)
        result.loadavg = os.getloadavg()[0]
        left_cpu0 = process_cpu(self.pid)
        left = await asyncio.gather(*(w.call({"op": "leave"}, 120) for w in self.workers))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await self.viewers() <= 1:
                break
            await asyncio.sleep(0.1)
        gone = sum(int(r["n"]) for r in left)
        if gone:
            result.leave_ms_per_viewer = 1000 * (process_cpu(self.pid) - left_cpu0) / gone
        return result


def loop_over(result: Burst, before: dict[str, Any], after: dict[str, Any]) -> None:
    """The node's loop and collector between two ``/v1/runtime`` reads, into ``result``."""
    g0, g1 = before.get("gc_collections"), after.get("gc_collections")
    if g0 and g1:
        result.gc_collections = [b - a for a, b in zip(g0, g1, strict=True)]
    s0, s1 = before.get("loop_stalls"), after.get("loop_stalls")
    if not (s0 and s1):
        return
    h0, h1 = s0["lateness_ms"], s1["lateness_ms"]
    result.loop_lateness = {k: h1[k] - h0.get(k, 0) for k in h1}
    result.loop_stalls = [s for s in s1["stalls"] if s["seq"] > s0["seen"]]
    longest = max((s["ms"] for s in result.loop_stalls), default=None)
    if longest is None:  # nothing over the threshold: the histogram's highest bucket used
        used = [k for k, v in result.loop_lateness.items() if v]
        longest = float(used[-1].strip("<=>ms")) if used else 0.0
    result.loop_longest_ms = longest


def profile_node(out: Path, argv: list[str]) -> None:
    """Run ``gateway.cli`` with ``argv`` under cProfile timed by the thread's CPU clock (a
    wall-clock profile of a loaded machine bills waiting for a core to whichever call was
    running, often a syscall); written on SIGINT."""
    import cProfile

    from gateway.cli import main as cli_main

    profiler = cProfile.Profile(time.thread_time)
    sys.argv = ["stagecast", *argv]
    profiler.enable()
    try:
        cli_main()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(str(out))


def row(b: Burst) -> str:
    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    n = f"{b.n} at {b.rate:g}/s" if b.rate else str(b.n)
    return (
        f"| {b.tree} | {n} | {b.joined} | {100 * b.refused / b.n:.0f}% | {b.failed} "
        f"| {b.seconds:.2f} | {b.cpu_s:.2f} | {f(b.gross_ms_per_join)} | {f(b.net_ms_per_join)} "
        f"| {f(b.ttff_p50_ms, 0)} / {f(b.ttff_p95_ms, 0)} | {b.watcher_max_gap_ms:.0f} "
        f"| {b.watcher_freezes} | {f(b.leave_ms_per_viewer)} | {f(b.client_ms_per_join)} "
        f"| {b.base_cores:.3f} "
        f"| {b.after_cores:.3f} | {b.rss_mib:.0f} | {f(b.loop_longest_ms, 0)} "
        f"| {'/'.join(map(str, b.gc_collections)) or '-'} | {b.loadavg:.1f} |"
    )


def stalls_text(b: Burst, top: int = 5) -> str:
    """The burst's loop lateness histogram and its longest steps with the stacks that held them."""
    if not b.loop_lateness:
        return ""
    hist = ", ".join(f"{k} {v}" for k, v in b.loop_lateness.items() if v)
    lines = [f"  {b.tree} {b.n}: loop lateness per 10 ms tick: {hist}"]
    for s in b.loop_stalls[:top]:
        stack = " <- ".join(s["stack"][-5:][::-1])
        cpu, gc_ms = s.get("cpu_ms", 0), s["gc_ms"]
        lines.append(f"    {s['ms']:.0f} ms (cpu {cpu:.0f}, gc {gc_ms:.0f}): {stack}")
    return "\n".join(lines)


HEAD = (
    "| tree | N | joined | refused (503) | failed | burst s | node CPU s | ms/join gross "
    "| ms/join net | ttff p50 / p95 ms | watcher max gap ms | freezes > 200 ms "
    "| ms/leave | client ms/join | cores before | cores after | RSS MiB | loop longest ms "
    "| gc collections 0/1/2 | load |\n" + "|---" * 20 + "|"
)


def summary(bursts: list[Burst]) -> str:
    lines = ["| tree | N | runs | ms/join net min / median | gross min / median "
             "| ttff p95 ms median | refused max | watcher max gap ms median |",
             "|---" * 8 + "|"]  # fmt: skip
    keys = sorted({(b.tree, b.n, b.rate) for b in bursts}, key=lambda k: (k[2], k[1], k[0]))
    for tree, n, rate in keys:
        runs = [b for b in bursts if b.tree == tree and b.n == n and b.rate == rate]
        net = [b.net_ms_per_join for b in runs if b.net_ms_per_join is not None]
        gross = [b.gross_ms_per_join for b in runs if b.gross_ms_per_join is not None]
        p95 = [b.ttff_p95_ms for b in runs if b.ttff_p95_ms is not None]

        def mm(v: list[float]) -> str:
            return f"{min(v):.1f} / {statistics.median(v):.1f}" if v else "-"

        label = f"{n} at {rate:g}/s" if rate else str(n)
        lines.append(
            f"| {tree} | {label} | {len(runs)} | {mm(net)} | {mm(gross)} "
            f"| {statistics.median(p95) if p95 else 0:.0f} "
            f"| {max(100 * b.refused / b.n for b in runs):.0f}% "
            f"| {statistics.median(b.watcher_max_gap_ms for b in runs):.0f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[Burst]:
    use_anchor_encoder("ultrafast", args.kbps)
    children = Children(Path(tempfile.mkdtemp(prefix="stagecast-joins-")))
    bursts: list[Burst] = []
    sizes = [int(x) for x in args.bursts.split(",") if x]
    rates = [(int(c), float(r)) for c, r in (x.split("@") for x in args.rates.split(",") if x)]
    trees: list[Path] = args.tree
    for folder in (args.profile, args.cprofile):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    print(HEAD, flush=True)
    try:
        for _ in range(args.repeat):
            for tree, ports in itertools.product(trees, args.ports.split(",")):
                node = Node(children, tree, args, ports)
                try:
                    await node.start()
                    for n in sizes:
                        for _ in range(args.ones if n == 1 else 1):
                            b = await node.burst(n)
                            bursts.append(b)
                            print(row(b), flush=True)
                            if text := stalls_text(b):
                                print(text, flush=True)
                    for spec in rates:
                        count, per_second = spec
                        b = await node.burst(count, per_second)
                        bursts.append(b)
                        print(row(b), flush=True)
                finally:
                    await node.stop()
    finally:
        await children.stop_all()
        print(f"logs: {children.log_dir}", flush=True)
    return bursts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bursts", default="1,50,200")
    parser.add_argument(
        "--rates", default="", help="steady joins: COUNT@PER_SECOND,... (e.g. 200@50)"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--ones", type=int, default=5, help="single joins per repetition")
    parser.add_argument("--tree", action="append", help="checkout to run the node from")
    parser.add_argument(
        "--ports",
        default="shared",
        help="UDP modes, comma-separated and interleaved like trees: shared (the node's one "
        "port, the default) and/or per-peer (udp_port 0)",
    )
    parser.add_argument("--procs", type=int, default=2, help="viewer worker processes")
    parser.add_argument("--settle", type=float, default=2.0, help="s before and after a burst")
    parser.add_argument("--join-timeout", type=float, default=20.0)
    parser.add_argument("--kbps", type=int, default=1500)
    parser.add_argument("--server-cpu", default="", help="taskset the node to these CPUs")
    parser.add_argument("--client-cpus", default="", help="taskset the workers to these CPUs")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="run the viewer workers this much nicer than the bench (run under nice -n -10, "
        "10 puts the clients at the machine's default and the node, anchor and watcher ahead)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-admission", action="store_true", help="lift the overload refusal")
    parser.add_argument(
        "--stall-trace",
        type=float,
        default=0.05,
        help="s: the node logs the loop's stack on each step longer than this and the bench "
        "reports its longest step, lateness histogram and gc collections per burst (trees "
        "with metrics.stall_trace); 0: off",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw stacks per burst")
    parser.add_argument(
        "--cprofile", type=Path, default=None, help="run the node under cProfile (slower)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node-cprofile", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("node_argv", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.tree = [Path(t).resolve() for t in (args.tree or ["."])]
    if args.node_cprofile:
        profile_node(args.node_cprofile, args.node_argv)
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.worker:
        import uvloop

        uvloop.run(serve_worker(args))
        return
    bursts = asyncio.run(run(args))
    print()
    print(HEAD)
    print("\n".join(row(b) for b in bursts))
    print()
    print("\n".join(t for b in bursts if (t := stalls_text(b))))
    print()
    print(summary(bursts))
    if args.json:
        args.json.write_text(json.dumps([asdict(b) for b in bursts], indent=1))


if __name__ == "__main__":
    main()
