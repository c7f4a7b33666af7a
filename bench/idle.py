"""Idle cost: what a node spends while nothing happens, with one ingest and no viewer, and with
one light viewer.

Per checkout (``--tree``, run in turn for each repetition so before/after share the machine's
load): ``stagecast serve`` as a subprocess; its CPU over ``--seconds`` from ``/proc/PID/stat``
(the whole process, every thread) and its memory (RSS, PSS and USS from
``/proc/PID/smaps_rollup``), (a) with nothing connected, (b) with one 720p30 WHIP anchor and no
viewer, (c) with one light viewer too (``bench.load_viewers --light``: counts RTP at its socket),
and that viewer's time from its POST to its first frame (a join after the node has released its
idle code pages, ``relay.ops.code_pages``, once ``--seconds`` >= 30).
The anchor is ffmpeg's WHIP muxer (``bench.peer``'s source: testsrc2, x264 constrained baseline
CBR ``--kbps``, Opus) or, with ``--anchor aiortc``, an aiortc peer in this process. ``--janus``
adds Janus (``bench.janus``: a streaming mountpoint fed the same source as plain RTP, no
viewer) as the C reference. Every row gives the load average: the machine may be shared.
``--paired N`` runs every tree's node with its own ffmpeg anchor at the same time and measures
their CPU over the same N windows (the fairest before/after on a loaded machine), also in ns
(the live threads' ``schedstat``: /proc/PID/stat's 10 ms ticks are 0.0005 core in 20 s), and
their wake-ups a second (voluntary context switches).

    python -m bench.idle --seconds 60
    python -m bench.idle --seconds 30 --repeat 3 --tree /work/wt/base --tree . --janus
    python -m bench.idle --seconds 20 --paired 8 --tree /work/wt/base --tree .
    python -m bench.idle --seconds 20 --paired 6 --variant STAGECAST_WEBRTC__UDP_QUIET_READS=5

``--variant ENV=VALUE[,ENV=VALUE]`` (paired only) adds a node from the first tree with those
settings in its environment, beside every tree's own: settings compared in the same windows.
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

import httpx
import imageio_ffmpeg

from bench.fanout import (
    ANCHOR_GRAIN,
    ROOM,
    SECRET,
    Child,
    Children,
    LoadWorker,
    use_anchor_encoder,
    wait_healthy,
)
from bench.janus import JanusPorts, janus_argv, janus_installed, write_janus_config
from bench.joins import process_cpu
from bench.peer import Source, rtp_source_argv, whip_source_argv
from gateway.launcher import free_port, free_udp_port
from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from relay.auth.tokens import TokenAuthority

STAGES = ("alone", "ingest", "viewer")


@dataclass
class Stage:
    cores: float
    rss: float
    pss: float
    uss: float
    load: float


@dataclass
class Idle:
    tree: str
    stages: dict[str, Stage] = field(default_factory=dict)
    ttff: float | None = None  # the light viewer's POST to first frame, s


def memory_mib(pid: int) -> tuple[float, float, float]:
    """RSS, PSS and USS (private clean + dirty) of the process, MiB."""
    kb: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        parts = line.split()
        kb[parts[0].rstrip(":")] = int(parts[1])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return kb.get("Rss", 0) / 1024, kb.get("Pss", 0) / 1024, uss / 1024


def threads_usage(pid: int) -> tuple[float, int]:
    """CPU seconds in ns resolution (``schedstat``) and sleeps (voluntary context switches: each
    is a wake-up) summed over the process's live threads: /proc/PID/stat counts in 10 ms
    ticks, one tick in a 20 s window is 0.0005 core, about the size of what is compared. A
    thread that ended within the window (a code-page look) is missing from both."""
    cpu_ns, sleeps = 0, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    sleeps += int(line.split()[1])
    return cpu_ns / 1e9, sleeps


def ffmpeg_loaded(pid: int) -> bool:
    """Whether the process has FFmpeg's libraries (PyAV) mapped."""
    return "libavcodec" in Path(f"/proc/{pid}/maps").read_text()


def memory_cells(pid: int) -> str:
    return " / ".join(f"{m:.1f}" for m in memory_mib(pid)) + (
        " MiB (PyAV loaded)" if ffmpeg_loaded(pid) else " MiB (no PyAV)"
    )


async def stage(pid: int, seconds: float) -> Stage:
    cpu0, t0 = process_cpu(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cores = (process_cpu(pid) - cpu0) / (time.monotonic() - t0)
    return Stage(cores, *memory_mib(pid), os.getloadavg()[0])


async def measure(children: Children, tree: Path, args: argparse.Namespace) -> Idle:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_LIMITS__MAX_LOOP_LAG": "1000",  # a loaded machine must not refuse the viewer
        "STAGECAST_LIMITS__MAX_LOOP_BUSY": "1",
        "PYTHONPATH": str(tree),
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    argv += ["--udp-port", str(free_udp_port())]
    # cwd: the tree's own modules (and its built C extensions) come first
    child = await children.start(
        f"node-{tree.name}-{port}", ["env", "-C", str(tree), *argv], env=env
    )
    result = Idle(tree.name)
    publisher = None
    started: list[Child] = []
    viewers: LoadWorker | None = None
    try:
        await wait_healthy(url, child)
        pid = child.proc.pid
        await asyncio.sleep(args.settle)
        result.stages["alone"] = await stage(pid, args.seconds)
        token = TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600)
        if args.anchor == "ffmpeg":
            exe = imageio_ffmpeg.get_ffmpeg_exe()
            source = Source(kbps=args.kbps)
            started.append(
                await children.start(
                    f"anchor-{port}", whip_source_argv(exe, source, f"{url}/whip/{ROOM}", token)
                )
            )
        else:
            publisher = await whip_publish(
                url,
                ROOM,
                token,
                video=StampedVideoTrack(1280, 720, 30, grain=ANCHOR_GRAIN),
                audio=ToneAudioTrack(440),
                video_codec="H264",
            )
        await asyncio.sleep(args.settle + 2)
        result.stages["ingest"] = await stage(pid, args.seconds)
        viewer_argv = [sys.executable, "-m", "bench.load_viewers", "--base-url", url]
        viewer_argv += ["--room", ROOM, "--light", "--join-timeout", "30"]
        viewer_child = await children.start(f"viewer-{port}", viewer_argv, pipes=True)
        started.append(viewer_child)
        viewers = LoadWorker(viewer_child)
        joined = await viewers.call({"op": "set", "n": 1}, 60)
        if joined.get("n") == 1:
            result.ttff = float(joined["ttff"][0])
            await asyncio.sleep(args.settle)
            result.stages["viewer"] = await stage(pid, args.seconds)
        return result
    finally:
        if viewers is not None:
            with contextlib.suppress(Exception):
                await viewers.call({"op": "quit"}, 5)
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
        for c in started:
            await children.stop(c)
        await children.stop(child)


async def measure_janus(children: Children, args: argparse.Namespace) -> Idle:
    """Janus with the same source on a streaming mountpoint and no viewer (its idle cost with
    one ingest), and with nothing sent to it."""
    ports = JanusPorts(free_port(), free_port(), free_port())
    folder = Path(tempfile.mkdtemp(prefix="stagecast-idle-janus-"))
    config = write_janus_config(folder, ports, event_loops=0)
    server = await children.start("janus", janus_argv(config))
    result = Idle("janus")
    src: Child | None = None
    try:
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{ports.http}/janus/info")).is_success:
                        break
                if server.proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"janus did not start:\n{server.log_tail()}")
                await asyncio.sleep(0.2)
        pid = server.proc.pid
        await asyncio.sleep(args.settle)
        result.stages["alone"] = await stage(pid, args.seconds)
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        argv = rtp_source_argv(
            exe, Source(kbps=args.kbps), "127.0.0.1", ports.video_rtp, ports.audio_rtp
        )
        src = await children.start("janus-source", argv)
        await asyncio.sleep(args.settle + 2)
        result.stages["ingest"] = await stage(pid, args.seconds)
        return result
    finally:
        if src is not None:
            await children.stop(src)
        await children.stop(server)


async def paired(children: Children, args: argparse.Namespace) -> None:
    """Every tree's node with its own ffmpeg anchor at once, their CPU over the same windows:
    on a shared machine, the load each window sees is the same for all of them."""
    pids: dict[str, int] = {}
    alone: dict[str, str] = {}
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    token = TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600)
    nodes = [(tree, tree.name, {}) for tree in args.tree]
    for variant in args.variant:
        extra = dict(kv.split("=", 1) for kv in variant.split(",") if kv)
        nodes.append((args.tree[0], variant, extra))
    for tree, name, extra in nodes:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = ["env", "-C", str(tree), sys.executable, "-m", "gateway.cli", "serve"]
        argv += ["--port", str(port), "--udp-port", str(free_udp_port())]
        env = {
            "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
            "STAGECAST_LOG_LEVEL": "warning",
            "PYTHONPATH": str(tree),
            **extra,
        }
        node = await children.start(f"node-{tree.name}-{port}", argv, env=env)
        await wait_healthy(url, node)
        await asyncio.sleep(args.settle)
        alone[name] = memory_cells(node.proc.pid)
        source = whip_source_argv(exe, Source(kbps=args.kbps), f"{url}/whip/{ROOM}", token)
        await children.start(f"anchor-{port}", source)
        pids[name] = node.proc.pid
    await asyncio.sleep(args.settle + 5)
    cores: dict[str, list[float]] = {name: [] for name in pids}
    fine: dict[str, list[float]] = {name: [] for name in pids}
    wakes: dict[str, list[float]] = {name: [] for name in pids}
    print(
        "| window | "
        + " | ".join(f"{name} core (schedstat) wake-ups/s" for name in pids)
        + " | load |\n|"
        + "---|" * (len(pids) + 2)
    )
    for window in range(args.paired):
        cpu0, t0 = {name: process_cpu(pid) for name, pid in pids.items()}, time.monotonic()
        use0 = {name: threads_usage(pid) for name, pid in pids.items()}
        await asyncio.sleep(args.seconds)
        wall = time.monotonic() - t0
        for name, pid in pids.items():
            cores[name].append((process_cpu(pid) - cpu0[name]) / wall)
            cpu, sleeps = threads_usage(pid)
            fine[name].append((cpu - use0[name][0]) / wall)
            wakes[name].append((sleeps - use0[name][1]) / wall)
        cells = " | ".join(
            f"{cores[n][-1]:.4f} ({fine[n][-1]:.5f}) {wakes[n][-1]:.1f}" for n in pids
        )
        print(f"| {window} | {cells} | {os.getloadavg()[0]:.1f} |", flush=True)
    for name, values in cores.items():
        print(
            f"{name}: one ingest, no viewer: {min(values):.4f} / {statistics.median(values):.4f}"
            f" core (min / median of {len(values)} windows; schedstat"
            f" {min(fine[name]):.5f} / {statistics.median(fine[name]):.5f}); wake-ups"
            f" {statistics.median(wakes[name]):.1f}/s median; RSS / PSS / USS "
            + memory_cells(pids[name])
            + f"; before the anchor: {alone[name]}"
        )


def row(r: Idle) -> str:
    cells = [r.tree]
    for name in STAGES:
        s = r.stages.get(name)
        cells.append(
            "-"
            if s is None
            else f"{s.cores:.4f} / {s.rss:.1f} / {s.pss:.1f} / {s.uss:.1f} (load {s.load:.1f})"
        )
    cells.append("-" if r.ttff is None else f"{1000 * r.ttff:.0f}")
    return "| " + " | ".join(cells) + " |"


HEAD = (
    "| tree | nothing connected: cores / RSS / PSS / USS MiB | one ingest, no viewer "
    "| one ingest, one light viewer | viewer's first frame, ms |\n|---|---|---|---|---|"
)


async def run(args: argparse.Namespace) -> list[Idle]:
    if args.anchor == "aiortc":
        use_anchor_encoder("ultrafast", args.kbps)
    log_dir = Path(tempfile.mkdtemp(prefix="stagecast-idle-"))
    print(f"logs in {log_dir}", flush=True)
    children = Children(log_dir)
    results: list[Idle] = []
    janus = args.janus
    if janus:
        why = janus_installed()
        if why is not None:
            print(f"skipping Janus: {why}", flush=True)
            janus = False
    if args.paired:
        try:
            await paired(children, args)
        finally:
            await children.stop_all()
        return results
    print(HEAD, flush=True)
    try:
        for _ in range(args.repeat):
            for tree in args.tree:
                results.append(await measure(children, tree, args))
                print(row(results[-1]), flush=True)
            if janus:
                results.append(await measure_janus(children, args))
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
    parser.add_argument("--anchor", choices=["ffmpeg", "aiortc"], default="ffmpeg")
    parser.add_argument("--janus", action="store_true", help="Janus's idle cost too")
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="WINDOWS",
        help="every tree's node and ffmpeg anchor at once, CPU over WINDOWS shared windows",
    )
    parser.add_argument("--tree", action="append", help="checkout to run the node from")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ENV=VALUE[,...]",
        help="with --paired: one more node from the first tree with these settings",
    )
    args = parser.parse_args()
    args.tree = [Path(t).resolve() for t in (args.tree or ["."])]
    results = asyncio.run(run(args))
    print(
        "\n| tree | runs | stage | cores min / median | RSS / PSS / USS MiB (median) "
        "| first frame ms (median) |"
    )
    print("|---|---|---|---|---|---|")
    for tree in dict.fromkeys(r.tree for r in results):
        rs = [r for r in results if r.tree == tree]
        for name in STAGES:
            ss = [r.stages[name] for r in rs if name in r.stages]
            if not ss:
                continue
            cores = [s.cores for s in ss]
            joins = [1000 * r.ttff for r in rs if r.ttff is not None]
            ttff = f"{statistics.median(joins):.0f}" if name == "viewer" and joins else "-"
            low, mid = min(cores), statistics.median(cores)
            print(
                f"| {tree} | {len(ss)} | {name} | {low:.4f} / {mid:.4f} "
                f"| {statistics.median(s.rss for s in ss):.0f} / "
                f"{statistics.median(s.pss for s in ss):.0f} / "
                f"{statistics.median(s.uss for s in ss):.0f} | {ttff} |"
            )


if __name__ == "__main__":
    main()
