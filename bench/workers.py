"""Workers benchmark: viewers per machine with a node of 1 and of 2 processes (``stagecast serve
--workers K``), measured as CPU per viewer summed over the node's processes (from /proc), per
process, beside delivery and the probe's glass-to-glass latency.

The viewers of ``bench.capacity``: N *light* viewers (``bench.load_viewers --light``: real
ICE/DTLS/WHEP peers counting SRTP packets without decrypting) and one probe, every one POSTing
to the front, which assigns it to a process. The anchor (aiortc, 720p30 H264 ~1.5 Mbps + tone)
sends a pre-encoded clip by default (``--anchor clip``: no encoder competing with the load side
for its core; the probe counts frames) or ``bench.capacity``'s stamped x264 frames
(``--anchor x264``: the probe's glass-to-glass latency too).

This machine has 2 cores, and the load side needs CPU too, so the load cannot be kept off every
core of a 2-process node. Pinning: with K=1 the node is on CPU 0 and the load (viewers, anchor,
probe, this script) on CPU 1, as in ``bench.capacity``; with K=2 the front is on CPU 0 and the
worker on CPU 1, beside the load. CPU *time* per process (``/proc``, user + system) is what the
node spends whatever else shares its core, so the headline is per process:
``core/viewer`` = (its cores at N - at the ramp's first step) / the viewers it gained (the
first step, e.g. N=10, has every process serving and every worker's pull running, so a
worker's pull is not counted per viewer); only steps with >= 99 % delivery count. The
projected capacity of the machine = the N at which the first of its processes would reach
``--budget`` of a core (0.95), with viewers spread as the front spreads them: K=1 can use one
core, K=2 both.
Delivery and latency with K=2 are measured with the load side on the worker's core: they show
the node keeps up, not its limit.

    python -m bench.workers                       # K = 1,2; N = 10,60,120; a clip anchor
    python -m bench.workers --viewers 10,30,50 --rounds 2   # interleaved K=1/K=2 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.capacity import OPERATOR_KEY, anchor_packets, start_fleet
from bench.fanout import (
    ANCHOR_GRAIN,
    ROOM,
    SECRET,
    Children,
    LoadFleet,
    pct,
    use_anchor_encoder,
    wait_healthy,
)
from gateway.launcher import free_port, free_udp_port
from gateway.synthetic import (
    LoopTrack,
    StampedVideoTrack,
    ToneAudioTrack,
    encoded_clip,
    whep_watch,
    whip_publish,
)
from relay.auth.tokens import TokenAuthority


@dataclass
class Point:
    k: int
    n: int
    load_average: float = 0.0
    window_s: float = 0.0
    cores: list[float] = field(default_factory=list)  # per process: front, worker 1, ...
    viewers: list[int] = field(default_factory=list)  # per process, from the merged /metrics
    delivery_min: float | None = None
    delivery_mean: float | None = None
    probe_p50_ms: float | None = None
    probe_p95_ms: float | None = None
    client_cores: float = 0.0
    core_per_viewer: list[float | None] = field(default_factory=list)  # marginal, per process
    total_core_per_viewer: float | None = None  # summed over the node's processes
    projected: int | None = None  # viewers when its first process reaches the budget


def own_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


_VIEWERS = re.compile(r"^stagecast_viewers\{([^}]*)\} ([0-9.e+-]+)$")


async def viewers_per_process(base_url: str, k: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:  # a starved node answers late
        r = await client.get(base_url + "/metrics", headers={"X-API-Key": OPERATOR_KEY})
    counts = [0] * k
    for line in r.text.splitlines():
        m = _VIEWERS.match(line)
        if m is None:
            continue
        worker = re.search(r'worker="([0-9]+)"', m.group(1))
        i = int(worker.group(1)) if worker else 0
        if i < k:
            counts[i] += int(float(m.group(2)))
    return counts


async def node_processes(
    front: psutil.Process, k: int, timeout: float = 60
) -> list[psutil.Process]:
    """The front and its k-1 workers, once every worker answers /readyz."""
    deadline = time.monotonic() + timeout
    while True:
        workers = front.children()
        ready = 0
        for w in workers:
            argv = w.cmdline()
            if "--port" in argv:
                port = argv[argv.index("--port") + 1]
                with contextlib.suppress(httpx.HTTPError):
                    async with httpx.AsyncClient(timeout=1) as c:
                        if (await c.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            ready += 1
        if ready == k - 1 and len(workers) == k - 1:
            await asyncio.sleep(1.0)  # the front's next poll sees them
            return [front, *sorted(workers, key=lambda p: p.pid)]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{k - 1} workers did not become ready")
        await asyncio.sleep(0.2)


async def run_k(k: int, counts: list[int], args: argparse.Namespace) -> list[Point]:
    log_dir = Path(tempfile.mkdtemp(prefix=f"stagecast-workers{k}-"))
    children = Children(log_dir)
    env = {
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": OPERATOR_KEY,
        "STAGECAST_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "1000",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "1000",
        # the overload guard off: on a machine shared with other work, a starved loop would
        # refuse viewers, and this measures CPU per viewer, not admission
        "STAGECAST_LIMITS__MAX_LOOP_LAG": "1000",
        "STAGECAST_LIMITS__MAX_LOOP_BUSY": "1",
    }
    tokens = TokenAuthority(SECRET)
    publisher = probe = None
    fleet: LoadFleet | None = None
    points: list[Point] = []
    try:
        port = free_port()
        serve = ["taskset", "-c", "0", sys.executable, "-m", "gateway.cli", "serve"]
        serve += ["--port", str(port), "--udp-port", str(free_udp_port()), "--workers", str(k)]
        front = await children.start("node", serve, env=env)
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, front, timeout=180)  # a loaded machine starts it slowly
        procs = await node_processes(front.ps, k)
        for i, p in enumerate(procs[1:], start=1):
            p.cpu_affinity([i % 2])  # worker 1 on CPU 1 (the front on CPU 0)
        token = tokens.mint(ROOM, "anchor", "bench", 3600)
        if args.anchor == "clip":  # pre-encoded: no encoder on the load side's core
            publisher = await whip_publish(
                url,
                ROOM,
                token,
                video=LoopTrack(encoded_clip(1280, 720)),
                audio=ToneAudioTrack(440),
                video_codec="H264",
                prepacked=True,
            )
        else:
            use_anchor_encoder("ultrafast", args.kbps)
            publisher = await whip_publish(
                url,
                ROOM,
                token,
                video=StampedVideoTrack(1280, 720, 30, grain=ANCHOR_GRAIN),
                audio=ToneAudioTrack(440),
                video_codec="H264",
            )
        await asyncio.sleep(2.0)
        probe = await whep_watch(url, ROOM, timeout=60, decode=args.anchor != "clip")
        fleet = await start_fleet(children, url, args.procs, "1")
        clients = [psutil.Process(os.getpid()), *fleet.processes()]
        base: Point | None = None
        for n in counts:
            await fleet.resize(n, timeout=120 + n * 3)  # joins are slow on a loaded machine
            await asyncio.sleep(3.0)
            await fleet.mark()
            probe.samples.clear()
            sent0 = await anchor_packets(publisher.pc)
            cpu0 = [own_seconds(p) for p in procs]
            ccpu0 = sum(own_seconds(p) for p in clients)
            t0 = time.monotonic()
            await asyncio.sleep(args.window)
            elapsed = time.monotonic() - t0
            cpu = [own_seconds(p) - c for p, c in zip(procs, cpu0, strict=True)]
            ccpu = sum(own_seconds(p) for p in clients) - ccpu0
            sent = await anchor_packets(publisher.pc) - sent0
            read = await fleet.read()
            pt = Point(k, n, os.getloadavg()[0], elapsed, [c / elapsed for c in cpu])
            pt.viewers = await viewers_per_process(url, k)
            pt.client_cores = ccpu / elapsed
            if read.packets and sent:
                rate = sent / elapsed
                ratios = [
                    (p or 0) / (rate * e) for p, e in zip(read.packets, read.elapsed, strict=True)
                ]
                pt.delivery_min, pt.delivery_mean = min(ratios), sum(ratios) / len(ratios)
            lat = [s.latency_ms for s in probe.samples]
            pt.probe_p50_ms, pt.probe_p95_ms = pct(lat, 50), pct(lat, 95)
            delivered = pt.delivery_min is not None and pt.delivery_min >= 0.99
            if base is None:
                base = pt  # the ramp's first step: every process serving (and pulling) already
            elif delivered and sum(pt.viewers) > sum(base.viewers):
                extra = [c - b for c, b in zip(pt.cores, base.cores, strict=True)]
                served = [v - b for v, b in zip(pt.viewers, base.viewers, strict=True)]
                pt.core_per_viewer = [
                    e / s if s > 0 else None for e, s in zip(extra, served, strict=True)
                ]
                pt.total_core_per_viewer = sum(extra) / sum(served)
                pt.projected = project(base, pt, args.budget)
            points.append(pt)
            print(row(pt), flush=True)
    finally:
        if fleet is not None:
            with contextlib.suppress(Exception):
                await fleet.close(children)
        for peer in (probe, publisher):
            if peer is not None:
                with contextlib.suppress(Exception):
                    await peer.close()
        await children.stop_all()
        print(f"logs: {log_dir}", flush=True)
    return points


def project(base: Point, pt: Point, budget: float) -> int | None:
    """Viewers of the node when its first process reaches ``budget`` cores, the viewers spread
    over its processes in the shares measured at ``pt`` and each process's cost linear in its
    viewers (its N=0 cores + its marginal core/viewer)."""
    total = sum(pt.viewers) - sum(base.viewers)
    limits = []
    for i, cpv in enumerate(pt.core_per_viewer):
        share = (pt.viewers[i] - base.viewers[i]) / total
        if cpv is None or cpv <= 0 or share <= 0:
            continue
        limits.append((budget - base.cores[i]) / (cpv * share))
    return int(min(limits)) if limits else None


HEAD = (
    "| K | N | load avg | cores per process (sum) | viewers per process "
    "| core/viewer per process | core/viewer summed | projected viewers at 0.95 core/process "
    "| delivery min / mean | probe g2g p50 / p95 ms | load-side cores |"
)


def row(p: Point) -> str:
    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    cores = " + ".join(f"{c:.3f}" for c in p.cores) + f" ({sum(p.cores):.3f})"
    cpv = " / ".join(f(c, 4) for c in p.core_per_viewer) or "-"
    return (
        f"| {p.k} | {p.n} | {p.load_average:.1f} | {cores} | {' / '.join(map(str, p.viewers))} "
        f"| {cpv} | {f(p.total_core_per_viewer, 4)} | {p.projected or '-'} "
        f"| {f(p.delivery_min and p.delivery_min * 100)}% / "
        f"{f(p.delivery_mean and p.delivery_mean * 100)}% "
        f"| {f(p.probe_p50_ms)} / {f(p.probe_p95_ms)} | {p.client_cores:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2", help="node sizes to compare, in order")
    parser.add_argument("--viewers", default="10,60,120", help="the first: the baseline")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2, help="light-viewer processes")
    parser.add_argument("--kbps", type=int, default=1500)
    parser.add_argument("--budget", type=float, default=0.95, help="cores per process")
    parser.add_argument(
        "--anchor",
        choices=("clip", "x264"),
        default="clip",
        help="clip: a pre-encoded 720p H264 loop (~1.5 Mbps, no encoder on the load side: the "
        "probe then counts frames, no glass-to-glass); x264: stamped frames encoded live",
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved K=1/K=2 rounds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    counts = [int(x) for x in args.viewers.split(",")]
    ks = [int(x) for x in args.workers.split(",")]
    results: list[Point] = []
    print(HEAD + "\n|" + "---|" * 11, flush=True)
    for _ in range(args.rounds):
        for k in ks:
            results += asyncio.run(run_k(k, counts, args))
    print("\n" + HEAD + "\n|" + "---|" * 11)
    for p in results:
        print(row(p))
    for k in ks:
        best = [p.projected for p in results if p.k == k and p.projected]
        if best:
            print(f"K={k}: projected viewers per machine {min(best)}-{max(best)}")
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in results], indent=1))


if __name__ == "__main__":
    main()
