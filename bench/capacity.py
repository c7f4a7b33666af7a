"""Capacity benchmark: how many 720p30 viewers one gateway or relay-edge process serves before
frames drop, and its CPU per viewer, with the server alone on its own core.

On this 2-core machine the process under test is pinned to CPU 0 (``taskset``) and everything
else to CPU 1: the anchor (x264 ultrafast, CBR 1.5 Mbps, stamped frames + tone), one decoding
probe viewer reading glass-to-glass stamps, the origin when an edge is measured, and N *light*
viewers (``bench.load_viewers --light``: real aiortc peers that do ICE, DTLS and WHEP, then count
SRTP packets at the socket instead of decrypting them, so one core holds hundreds).

Per N, over a steady window: the server's CPU (psutil; it has a core to itself, so CPU time is
not inflated by the load side), marginal CPU per viewer over N=0, packets each light viewer got
against what the anchor sent (min / mean), the probe's latency p50/p95, and /healthz response
time (the server's event loop). ``capacity`` is the largest N whose minimum delivery is >= 99 %,
probe p95 stays within 100 ms of N=0's and the server is below 0.95 core, counted in viewers
actually admitted (the node refuses new viewers with 503 once its loop is busy or late).

    python -m bench.capacity                          # gateway, N = 0,50,100,200,300
    python -m bench.capacity --target edge --viewers 0,100,200,300,400
    python -m bench.capacity --viewers 0,100 --perf   # + the send-side share (needs perf)
    python -m bench.capacity --ports both             # the node's one UDP port, then per-peer
    python -m bench.capacity --viewers 0,50,100 --transport-cc --estimation both --rounds 2

``--ports``: ``shared`` (default) runs the node(s) on one UDP port each (``webrtc.udp_port``, the
nodes' default), ``per-peer`` on a port per peer connection (``udp_port = 0``), ``both`` runs the
same ramp on each, one after the other, and prints both tables (the shared socket must not cost
more per viewer).

``--estimation``: ``on`` (default) is the product as shipped, a bandwidth estimator and layer
selector per viewer; ``off`` runs the node with ``media.viewer_estimation = false`` (neither);
``both`` runs the ramp with each, alternating, ``--rounds`` times, and prints the ratio of their
core per viewer at each N (issue 17: the estimator and selector may cost <= 10 % more). With
``--transport-cc`` the light viewers offer transport-cc and send its feedback every 50 ms, as
Chromium does, so "on" includes numbering and recording every packet and taking ~20 feedbacks
a second per viewer ("feedback/s/viewer" column); "off" answers no transport-cc, so they send none.
By default a light process sends all its viewers' feedback at once, so the node reads it in a
few large batches; ``--feedback-slices 10`` spreads it as Chromium viewers' phases would, and the
node then wakes for one or two datagrams at a time (``bench.port_pacing``: 3-5x the cost per
datagram; ``webrtc.udp_max_reads`` paces the reads).

With ``--perf``, ``perf record`` samples the server during each window and the table adds the
share of its CPU inside ``net_rx_action``: on loopback the kernel delivers each datagram to the
viewer's socket and wakes the viewer's process inside the server's ``sendto`` (``bench.udp_cost``
times it), work that a NIC leaves to the viewer's machine. "core/viewer send side" is the
marginal CPU per viewer without it; the plain marginal figure stays the headline.

"rx-buffer drops" are the datagrams the kernel dropped at full UDP receive buffers during the
window (``RcvbufErrors``, machine-wide), as a share of what the viewers should have got: when
delivery falls short by about that much, the load side fell behind and the server did send.

"full GCs so far" (gateway only, from ``GET /v1/runtime``): the cyclic collector's full passes
since the server started, joins included, and the longest one's pause: while it runs, every
stream on the node waits.

"fan-out core/viewer" is the node's own count (``fanout_cpu_s`` in its stream API): thread CPU
inside the hub's viewer loop, where each viewer's packets are numbered, encrypted and sent (the
kernel's send path, and on loopback the receive path, included). The rest of the marginal figure
is per-viewer RTCP, ICE consent checks and event-loop wakeups.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.fanout import (
    ANCHOR_FILLER,
    ANCHOR_GRAIN,
    ROOM,
    SECRET,
    Children,
    LoadFleet,
    LoadWorker,
    cpu_seconds,
    pct,
    sample_response_times,
    use_anchor_encoder,
    wait_healthy,
)
from gateway.launcher import free_port, free_udp_port
from gateway.synthetic import (
    LoopTrack,
    StampedVideoTrack,
    ToneAudioTrack,
    Viewer,
    encoded_clip,
    whep_watch,
    whip_publish,
)
from relay.auth.tokens import TokenAuthority


@dataclass
class Point:
    n: int
    viewers_seen: int = 0
    server_cores: float = 0.0
    core_per_viewer: float | None = None  # marginal over N=0
    viewers_per_core: float | None = None
    anchor_pkt_s: float = 0.0
    delivery_min: float | None = None
    delivery_mean: float | None = None
    probe_p50_ms: float | None = None
    probe_p95_ms: float | None = None
    probe_frames: int = 0
    healthz_p50_ms: float | None = None
    healthz_max_ms: float | None = None
    client_cores: float = 0.0
    window_s: float = 0.0
    loopback_rx_share: float | None = None  # --perf: server CPU spent delivering to viewers
    send_side_core_per_viewer: float | None = None
    fanout_cores: float | None = None  # the node's own count: CPU inside the hub's viewer loop
    fanout_core_per_viewer: float | None = None
    rss_mib: float = 0.0  # the server's resident memory at the end of the window
    mib_per_viewer: float | None = None  # marginal over N=0
    gc_full: tuple[int, float] | None = None  # full collections so far, longest pause ms
    feedback_per_viewer_s: float | None = None  # transport-cc feedbacks each light viewer sent
    rcvbuf_drops: float | None = None  # share of the viewers' packets the kernel dropped at
    # full receive buffers during the window (machine-wide UDP RcvbufErrors): a load side that
    # falls behind, not a server that did not send


def rcvbuf_errors() -> int:
    """UDP datagrams the kernel dropped at full receive buffers since boot (IPv4 + IPv6)."""
    total = 0
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/snmp").read_text().splitlines()
        heads = [ln.split() for ln in lines if ln.startswith("Udp: ")]
        if len(heads) == 2 and "RcvbufErrors" in heads[0]:
            total += int(heads[1][heads[0].index("RcvbufErrors")])
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/snmp6").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "Udp6RcvbufErrors":
                total += int(value)
    return total


async def anchor_packets(pc: Any) -> int:
    """Packets the anchor sent that viewers should get: all but H.264 filler data."""
    stats = await pc.getStats()
    sent = sum(int(s.packetsSent) for s in stats.values() if s.type == "outbound-rtp")
    return sent - ANCHOR_FILLER[0]


OPERATOR_KEY = "capacity-bench-operator-key"


async def operator_json(base_url: str, path: str) -> Any:
    """A node's operator API answer, or None when it did not give one."""
    try:
        headers = {"X-API-Key": OPERATOR_KEY}
        async with httpx.AsyncClient(base_url=base_url, timeout=5, headers=headers) as client:
            return (await client.get(path)).json()
    except (httpx.HTTPError, ValueError):
        return None


async def fanout_seconds(base_url: str, target: str) -> float | None:
    """The node's own count of CPU spent in the hub's viewer loop (sends, SRTP, sockets)."""
    path = f"/v1/rooms/{ROOM}/stream" if target == "gateway" else "/cluster"
    body = await operator_json(base_url, path)
    if not isinstance(body, dict):
        return None
    if target != "gateway":
        body = body.get("pulls", {}).get(ROOM, {})
    value = body.get("fanout_cpu_s")
    return float(value) if value is not None else None


async def gc_figures(base_url: str) -> tuple[int, float] | None:
    """Full (generation 2) collections since the gateway started and the longest one's pause
    in ms (``GET /v1/runtime``; an edge does not serve it)."""
    body = await operator_json(base_url, "/v1/runtime")
    if not isinstance(body, dict):
        return None
    counts, longest = body.get("gc_collections"), body.get("gc_longest_pause_ms")
    if not counts or not longest:
        return None
    return int(counts[2]), float(longest[2])


async def start_fleet(
    children: Children,
    base_url: str,
    procs: int,
    cpus: str,
    transport_cc: bool = False,
    join_timeout: float = 15.0,
    feedback_slices: int = 1,
) -> LoadFleet:
    workers = []
    for i in range(procs):
        argv = ["taskset", "-c", cpus, sys.executable, "-m", "bench.load_viewers"]
        argv += ["--base-url", base_url, "--room", ROOM, "--loop", "uvloop", "--light"]
        argv += ["--concurrency", "8", "--join-timeout", str(join_timeout)]
        if transport_cc:
            argv += ["--transport-cc", "--feedback-slices", str(feedback_slices)]
        workers.append(LoadWorker(await children.start(f"light{i}", argv, pipes=True)))
    return LoadFleet(workers)


async def loopback_rx_share(pid: int, seconds: float, out: Path) -> float | None:
    """Share of the server's CPU samples inside ``net_rx_action``: on loopback the kernel runs
    the receiver's half of each datagram (IP/UDP delivery, socket queueing, waking the viewer's
    process) inside the sender's ``sendto``; over a NIC that work is on the viewer's machine.
    None when ``perf`` is missing or not allowed."""
    try:
        rec = await asyncio.create_subprocess_exec(
            "perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(pid),
            "-o", str(out), "--", "sleep", f"{seconds:.1f}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await rec.wait()
        rep = await asyncio.create_subprocess_exec(
            "perf", "report", "-i", str(out), "--children", "--sort", "sym", "-g", "none",
            "--stdio",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        text, _ = await rep.communicate()
    except FileNotFoundError:
        return None
    for line in text.decode(errors="replace").splitlines():
        fields = line.split()
        if fields and fields[-1] == "net_rx_action" and fields[0].endswith("%"):
            return float(fields[0].rstrip("%")) / 100
    return None if rec.returncode else 0.0


async def measure(
    n: int,
    fleet: LoadFleet,
    server: psutil.Process,
    clients: list[psutil.Process],
    publisher: Any,
    probe: Viewer,
    base_url: str,
    window: float,
    perf_dir: Path | None = None,
    target: str = "gateway",
    join_timeout: float = 15.0,
) -> Point:
    await fleet.resize(n, timeout=3 * join_timeout + n)
    await asyncio.sleep(3.0)  # settle: joins' keyframes and DTLS handshakes done
    fan0, fan_t0 = await fanout_seconds(base_url, target), time.monotonic()
    await fleet.mark()
    probe.samples.clear()
    frames0 = probe.video_frames
    sent0 = await anchor_packets(publisher.pc)
    drops0 = rcvbuf_errors()
    cpu0 = cpu_seconds(server)
    ccpu0 = sum(cpu_seconds(p) for p in clients)
    t0 = time.monotonic()
    perf: asyncio.Task[float | None] | None = None
    if perf_dir is not None:
        perf = asyncio.create_task(
            loopback_rx_share(server.pid, window * 0.8, perf_dir / f"perf-{n}.data")
        )
    healthz = await sample_response_times(base_url, window)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(server) - cpu0
    ccpu = sum(cpu_seconds(p) for p in clients) - ccpu0
    sent = await anchor_packets(publisher.pc) - sent0
    drops = rcvbuf_errors() - drops0
    read = await fleet.read()
    # read outside the window: an API call inside it would stretch the anchor's count past
    # ``elapsed`` and understate delivery
    fan1, fan_t1 = await fanout_seconds(base_url, target), time.monotonic()
    gc_full = await gc_figures(base_url) if target == "gateway" else None
    point = Point(n, viewers_seen=len(read.packets), window_s=elapsed, gc_full=gc_full)
    if read.packets:
        point.feedback_per_viewer_s = read.feedback_sent / len(read.packets) / elapsed
    if perf is not None:
        point.loopback_rx_share = await perf
    point.server_cores = cpu / elapsed
    point.rss_mib = server.memory_info().rss / 2**20
    if fan0 is not None and fan1 is not None:
        point.fanout_cores = (fan1 - fan0) / (fan_t1 - fan_t0)
    point.client_cores = ccpu / elapsed
    point.anchor_pkt_s = sent / elapsed
    if read.packets and sent:
        rate = sent / elapsed
        ratios = [(p or 0) / (rate * e) for p, e in zip(read.packets, read.elapsed, strict=True)]
        point.delivery_min, point.delivery_mean = min(ratios), sum(ratios) / len(ratios)
        point.rcvbuf_drops = drops / (sent * len(read.packets))
    latencies = [s.latency_ms for s in probe.samples]
    point.probe_p50_ms, point.probe_p95_ms = pct(latencies, 50), pct(latencies, 95)
    point.probe_frames = probe.video_frames - frames0
    point.healthz_p50_ms, point.healthz_max_ms = pct(healthz, 50), max(healthz, default=None)
    return point


def table(points: list[Point], target: str) -> str:
    head = (
        "| target | N (admitted) | server cores | core/viewer (marginal) | viewers/core "
        "| anchor pkt/s "
        "| delivery min / mean | probe g2g p50 / p95 ms | probe fps | healthz p50 / max ms "
        "| client cores | loopback rx share | core/viewer send side | fan-out core/viewer "
        "| server MiB (per viewer) | rx-buffer drops | full GCs so far (longest ms) "
        "| feedback/s/viewer |"
    )
    lines = [head, "|" + "---|" * 18]

    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    for p in points:
        gc_cell = "-" if p.gc_full is None else f"{p.gc_full[0]} ({p.gc_full[1]:.1f})"
        lines.append(
            f"| {target} | {p.n} ({p.viewers_seen}) | {p.server_cores:.3f} "
            f"| {f(p.core_per_viewer, 4)} | {f(p.viewers_per_core, 0)} | {p.anchor_pkt_s:.0f} "
            f"| {f(p.delivery_min and p.delivery_min * 100)}% / "
            f"{f(p.delivery_mean and p.delivery_mean * 100)}% "
            f"| {f(p.probe_p50_ms)} / {f(p.probe_p95_ms)} "
            f"| {p.probe_frames / p.window_s if p.window_s else 0:.0f} "
            f"| {f(p.healthz_p50_ms)} / {f(p.healthz_max_ms)} | {p.client_cores:.2f} "
            f"| {f(p.loopback_rx_share and p.loopback_rx_share * 100)}% "
            f"| {f(p.send_side_core_per_viewer, 4)} | {f(p.fanout_core_per_viewer, 4)} "
            f"| {p.rss_mib:.0f} ({f(p.mib_per_viewer, 2)}) "
            f"| {f(p.rcvbuf_drops and p.rcvbuf_drops * 100, 2)}% "
            f"| {gc_cell} | {f(p.feedback_per_viewer_s)} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[Point]:
    counts = [int(x) for x in args.viewers.split(",")]
    log_dir = Path(tempfile.mkdtemp(prefix="stagecast-capacity-"))
    children = Children(log_dir)
    env = {
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": OPERATOR_KEY,
        "STAGECAST_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "1000",
        "STAGECAST_LIMITS__SESSION_POST_BURST": "1000",
        "STAGECAST_MEDIA__VIEWER_ESTIMATION": "true" if args.estimation == "on" else "false",
    }
    if args.loaded:  # as bench.workers: CPU per viewer, not admission, is measured
        env["STAGECAST_LIMITS__MAX_LOOP_LAG"] = "1000"
        env["STAGECAST_LIMITS__MAX_LOOP_BUSY"] = "1"
        env["STAGECAST_SESSIONS__ANCHOR_MEDIA_TIMEOUT"] = "60"
    tokens = TokenAuthority(SECRET)
    pin_server = ["taskset", "-c", args.server_cpu]
    pin_client = ["taskset", "-c", args.client_cpus]
    publisher = probe = None
    fleet: LoadFleet | None = None
    points: list[Point] = []
    try:
        origin_port = free_port()
        serve = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(origin_port)]
        shared = args.ports == "shared"
        serve += ["--udp-port", str(free_udp_port() if shared else 0)]
        origin_pin = pin_server if args.target == "gateway" else pin_client
        origin = await children.start(
            "origin", origin_pin + serve, env=env, own_session=args.target == "gateway"
        )
        origin_url = f"http://127.0.0.1:{origin_port}"
        await wait_healthy(origin_url, origin)
        server, url = origin, origin_url
        if args.target == "edge":
            edge_port = free_port()
            relay = [sys.executable, "-m", "gateway.cli", "relay", "--upstream", origin_url]
            relay += ["--port", str(edge_port), "--node-id", "edge-bench", "--workers", "1"]
            relay += ["--udp-port", str(free_udp_port() if shared else 0)]
            server = await children.start("edge", pin_server + relay, env=env, own_session=True)
            url = f"http://127.0.0.1:{edge_port}"
            await wait_healthy(url, server)
        token = tokens.mint(ROOM, "anchor", "bench", 3600)
        if args.anchor == "clip":  # pre-encoded: no encoder on the load side's core
            publisher = await whip_publish(
                origin_url,
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
                origin_url,
                ROOM,
                token,
                video=StampedVideoTrack(1280, 720, 30, grain=ANCHOR_GRAIN),
                audio=ToneAudioTrack(440),
                video_codec="H264",
            )
        await asyncio.sleep(2.0)
        probe = await whep_watch(url, ROOM, timeout=20, decode=args.anchor != "clip")
        fleet = await start_fleet(
            children,
            url,
            args.procs,
            args.client_cpus,
            args.transport_cc,
            args.join_timeout,
            args.feedback_slices,
        )
        clients = [psutil.Process(os.getpid()), *fleet.processes()]
        if args.target == "edge":
            clients.append(origin.ps)
        base: Point | None = None
        for n in counts:
            perf_dir = log_dir if args.perf else None
            point = await measure(
                n,
                fleet,
                server.ps,
                clients,
                publisher,
                probe,
                url,
                args.window,
                perf_dir,
                args.target,
                args.join_timeout,
            )
            if base is None and n == 0:
                base = point
            if base is not None and point.viewers_seen > 0:
                # per viewer actually served: admission control may refuse some (503)
                extra = point.server_cores - base.server_cores
                point.core_per_viewer = extra / point.viewers_seen
                if point.core_per_viewer > 0:
                    point.viewers_per_core = 1 / point.core_per_viewer
                if point.loopback_rx_share is not None and base.loopback_rx_share is not None:
                    own = point.server_cores * (1 - point.loopback_rx_share)
                    own0 = base.server_cores * (1 - base.loopback_rx_share)
                    point.send_side_core_per_viewer = (own - own0) / point.viewers_seen
                point.mib_per_viewer = (point.rss_mib - base.rss_mib) / point.viewers_seen
                if point.fanout_cores is not None and base.fanout_cores is not None:
                    extra_fan = point.fanout_cores - base.fanout_cores
                    point.fanout_core_per_viewer = extra_fan / point.viewers_seen
            points.append(point)
            print(table([point], args.target).splitlines()[-1], flush=True)
            if point.server_cores > 0.98:
                print("server core saturated; stopping the ramp", flush=True)
                break
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


def capacity(points: list[Point]) -> int | None:
    base = next((p for p in points if p.n == 0), None)
    best = None
    for p in points:
        if p.viewers_seen == 0:
            continue
        ok = (
            (p.delivery_min or 0) >= 0.99
            and p.server_cores < 0.95
            and p.probe_p95_ms is not None
            and (
                base is None
                or base.probe_p95_ms is None
                or p.probe_p95_ms <= base.probe_p95_ms + 100
            )
        )
        if ok:
            best = max(best or 0, p.viewers_seen)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=("gateway", "edge"), default="gateway")
    parser.add_argument("--viewers", default="0,50,100,200,300")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2, help="light-viewer processes")
    parser.add_argument("--kbps", type=int, default=1500)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--transport-cc",
        action="store_true",
        help="light viewers offer transport-cc (the server numbers and records every packet)",
    )
    parser.add_argument(
        "--feedback-slices",
        type=int,
        default=1,
        help="with --transport-cc: each light process sends its viewers' feedback in this many "
        "slices per 50 ms (1: all at once; 10: as spread as Chromium viewers' own phases make "
        "it, each read on its own by the node)",
    )
    parser.add_argument(
        "--ports",
        choices=("shared", "per-peer", "both"),
        default="shared",
        help="the node(s) on one UDP port each (webrtc.udp_port, the default), a port per peer "
        "connection (udp_port 0), or both one after the other in this run",
    )
    parser.add_argument(
        "--perf",
        action="store_true",
        help="sample the server with perf: split off the viewers' loopback receive path",
    )
    parser.add_argument(
        "--estimation",
        choices=("on", "off", "both"),
        default="on",
        help="the per-viewer bandwidth estimator and layer selector on (as shipped), off "
        "(media.viewer_estimation = false), or both, alternating, in this run",
    )
    parser.add_argument(
        "--anchor",
        choices=("x264", "clip"),
        default="x264",
        help="x264: stamped frames encoded live (the probe's glass-to-glass); clip: a "
        "pre-encoded 720p H264 loop (~1.5 Mbps), no encoder on the load side's core (a loaded "
        "machine starves the live encoder: the anchor times out); the probe counts frames",
    )
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=15.0,
        help="s a light viewer may take to join and get its first frame (longer on a loaded "
        "machine)",
    )
    parser.add_argument(
        "--loaded",
        action="store_true",
        help="for a machine shared with other work, where only CPU per viewer is compared: "
        "admit every viewer however late or busy the node's loop, and keep a room whose "
        "anchor's media stalls up to 60 s (a starved node ended the room during a join burst)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="with --ports/--estimation both: repeat the pair"
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    ports = ["shared", "per-peer"] if args.ports == "both" else [args.ports]
    estimation = ["on", "off"] if args.estimation == "both" else [args.estimation]
    modes = [(p, e) for p in ports for e in estimation]
    results: list[tuple[str, str, str, list[Point]]] = []
    for r in range(args.rounds):
        for p, e in modes:
            label = f"UDP ports: {p}; estimation {e}" + (
                f"; round {r + 1}" if args.rounds > 1 else ""
            )
            print(f"\n{label}; load average {os.getloadavg()[0]:.1f}", flush=True)
            print(table([], args.target), flush=True)
            mode_args = argparse.Namespace(**{**vars(args), "ports": p, "estimation": e})
            results.append((label, p, e, asyncio.run(run(mode_args))))
    for label, _, _, points in results:
        print(f"\n{label}")
        print(table(points, args.target))
        cap = capacity(points)
        print(f"capacity ({args.target}, one core): {cap if cap is not None else 'none'} viewers")
    if len(estimation) == 2:
        print("\n" + estimation_ratios(results))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        data = [{"mode": label, "points": [asdict(x) for x in pts]} for label, _, _, pts in results]
        args.json.write_text(json.dumps(data if len(data) > 1 else data[0]["points"], indent=1))


def estimation_ratios(results: list[tuple[str, str, str, list[Point]]]) -> str:
    """Core per viewer with the estimator and selector over without, per N and UDP port mode,
    each round's "on" ramp against the "off" ramp next to it (the same minutes), medians over
    the rounds; only steps where both delivered >= 95 % count."""
    lines = [
        "| ports | N | core/viewer on | core/viewer off | on / off "
        "| fan-out on | fan-out off | on / off |",
        "|" + "---|" * 8,
    ]
    per: dict[tuple[str, int], list[tuple[float, float, float | None, float | None]]] = {}
    for i, (_, p, e, points) in enumerate(results):
        if e != "on":
            continue
        pair = next((x for x in results[i + 1 :] if x[1] == p and x[2] == "off"), None)
        if pair is None:
            continue
        off_points = {x.n: x for x in pair[3]}
        for on_point in points:
            off_point = off_points.get(on_point.n)
            if off_point is None or on_point.core_per_viewer is None:
                continue
            if off_point.core_per_viewer is None:
                continue
            if (on_point.delivery_min or 0) < 0.95 or (off_point.delivery_min or 0) < 0.95:
                continue  # a step that lost its stream (or most of it) measures nothing
            per.setdefault((p, on_point.n), []).append(
                (
                    on_point.core_per_viewer,
                    off_point.core_per_viewer,
                    on_point.fanout_core_per_viewer,
                    off_point.fanout_core_per_viewer,
                )
            )

    def med(values: list[float]) -> float:
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    for (p, n), rows in sorted(per.items()):
        on = med([r[0] for r in rows])
        off = med([r[1] for r in rows])
        fan_on_values = [r[2] for r in rows if r[2] is not None]
        fan_off_values = [r[3] for r in rows if r[3] is not None]
        fan_on = med(fan_on_values) if fan_on_values else None
        fan_off = med(fan_off_values) if fan_off_values else None
        fan_ratio = f"{fan_on / fan_off:.2f}" if fan_on and fan_off else "-"
        lines.append(
            f"| {p} | {n} ({len(rows)} rounds) | {on:.4f} | {off:.4f} "
            f"| {on / off if off > 0 else float('nan'):.2f} "
            f"| {'-' if fan_on is None else f'{fan_on:.4f}'} "
            f"| {'-' if fan_off is None else f'{fan_off:.4f}'} | {fan_ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
