"""Co-hosting benchmark: what a mixed room costs the WHOLE node, and where it goes.

The node is ``stagecast serve`` in a subprocess (``--tree``: run from that checkout, so a
baseline and a change are measured in turn in the same run, under the same load). The anchors
are ffmpeg WHIP clients (ffmpeg's own ``whip`` muxer), one process each, outside the node:
720p30 ``testsrc2`` at 1.5 Mbps (x264 constrained baseline, GOP 2 s) plus an Opus tone, encoded
once to a file and looped with ``-c copy`` (``--source live``: each ffmpeg encodes live, which
costs the machine ~0.15 core per anchor). The viewers are light aiortc WHEP peers in this process
(count packets, decode nothing): one on the program (``?rendition=720p``) and, for "both", one on
``?rendition=360p``.

Per anchor count (``--anchors``) and viewer set (``720p``: only the program is taken, so the 360p
rendition is not encoded; ``both``): over a steady ``--window``,

- **node cores**: CPU of the node process (every thread, from ``/proc/PID/stat``) and of every
  process under it, per wall second: the headline, what the issue asks for;
- per thread (``/proc/PID/task``): the event loop (main thread: the anchors' receive path, the
  send path, HTTP), the mixer thread (named ``mixer-ROOM`` on Linux) and the rest;
- the mixer thread split by stage (from ``/v1/rooms/ROOM/program``): video decode (all anchors),
  composite (scaling, pasting), encode per rendition, audio (Opus decode, mix, encode);
- the machine's load average at the end of the window (the machine is shared: compare trees of
  the same run only).

With ``--profile DIR`` each tree's 4-anchor "both" cell is followed by a ``py-spy record
--native --threads`` window (as root) written to ``DIR/TREE.txt`` (collapsed stacks).

    python -m bench.mixer                                  # this checkout, 1/2/4 anchors
    python -m bench.mixer --tree /work/wt/base --tree . --repeat 2 --window 15
    python -m bench.mixer --anchors 4 --viewers both --profile /tmp/prof
    python -m bench.mixer --latency                        # + mixer-added glass-to-glass
    setsid python -m bench.mixer --nice -10 ...            # a loaded, shared machine
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ffmpeg
import httpx
import imageio_ffmpeg
import numpy as np
import psutil

from bench.fanout import Child, Children, _die_with_parent, wait_healthy
from bench.joins import CLK_TCK, process_cpu
from bench.peer import Source, whip_source_argv
from gateway.launcher import free_port, free_udp_port
from gateway.synthetic import (
    LoopTrack,
    Publisher,
    StampedVideoTrack,
    ToneAudioTrack,
    Viewer,
    encoded_clip,
    whep_watch,
    whip_publish,
)
from relay.auth.tokens import TokenAuthority

SECRET = "bench-mixer-secret-" + "y" * 40
KEY = "bench-operator-key-0123456789"
ROOM = "mix"
SOURCE = Source(width=1280, height=720, fps=30, kbps=1500, gop=60)


# -- argv (pure) ----------------------------------------------------------------------------------
def clip_argv(exe: str, source: Source, path: str, seconds: float) -> list[str]:
    """ffmpeg encoding ``seconds`` of the anchors' source once, into an MPEG-TS file (Annex-B
    H264 with its parameter sets at every keyframe, Opus): what ``anchor_argv`` loops."""
    video = ffmpeg.input(
        f"testsrc2=size={source.width}x{source.height}:rate={source.fps}", f="lavfi"
    )
    audio = ffmpeg.input("sine=frequency=440:sample_rate=48000", f="lavfi")
    kbps = f"{source.kbps}k"
    out = ffmpeg.output(
        video,
        audio,
        path,
        t=seconds,
        f="mpegts",
        pix_fmt="yuv420p",
        **{
            "c:v": "libx264",
            "profile:v": "baseline",
            "preset": "ultrafast",
            "tune": "zerolatency",
            "bf": 0,
            "g": source.gop,
            "b:v": kbps,
            "maxrate": kbps,
            "bufsize": f"{source.kbps // 2}k",
            "c:a": "libopus",
            "ar": 48000,
            "ac": 2,
            "b:a": "64k",
        },
    )
    compiled: list[str] = out.compile(cmd=exe, overwrite_output=True)
    return [exe, "-hide_banner", "-nostats", "-nostdin", "-loglevel", "error", *compiled[1:]]


def anchor_argv(exe: str, path: str, url: str, token: str) -> list[str]:
    """ffmpeg looping the encoded clip in real time to a WHIP endpoint, stream copied."""
    src = ffmpeg.input(path, re=None, stream_loop=-1)
    out = ffmpeg.output(
        src, url, f="whip", authorization=token, handshake_timeout=5000, **{"c": "copy"}
    )
    compiled: list[str] = out.compile(cmd=exe)
    return [exe, "-hide_banner", "-nostats", "-nostdin", "-loglevel", "error", *compiled[1:]]


def server_argv(python: str, port: int, udp_port: int) -> list[str]:
    argv = [python, "-m", "gateway.cli", "serve", "--host", "127.0.0.1"]
    return [*argv, "--port", str(port), "--udp-port", str(udp_port)]


# -- /proc ----------------------------------------------------------------------------------------
def node_cpu(pid: int) -> float:
    """CPU seconds of the node process (every thread) and every live process under it."""
    total = process_cpu(pid)
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(OSError):
                total += process_cpu(child.pid)
    return total


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of ``pid``: tid -> (name, CPU seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            text = (task / "stat").read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def thread_groups(
    pid: int, t0: dict[int, tuple[str, float]], t1: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds between two ``thread_cpu`` readings by group: ``loop`` (the main thread),
    ``mixer`` (threads named mixer-*), ``other`` (the rest, threads that started within)."""
    groups = {"loop": 0.0, "mixer": 0.0, "other": 0.0}
    for tid, (name, cpu) in t1.items():
        spent = cpu - t0.get(tid, (name, 0.0))[1]
        key = "loop" if tid == pid else "mixer" if name.startswith("mixer-") else "other"
        groups[key] += spent
    return groups


def renice(pid: int, nice: int) -> None:
    """Every thread of ``pid`` to ``nice`` (Linux keeps a nice value per thread; threads
    started later inherit their creator's)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def boost(nice: int) -> str | None:
    """This process (the viewers) and its session's autogroup to ``nice``. With autogroup
    scheduling (Linux's default on many machines) nice only ranks threads inside their
    session's group and groups share the CPU equally: the group's own nice is what counts
    against other sessions' load (run under ``setsid`` so the boost ends with the benchmark)."""
    renice(os.getpid(), nice)
    group = Path("/proc/self/autogroup")
    with contextlib.suppress(OSError):
        group.write_text(str(nice))
    with contextlib.suppress(OSError):
        return group.read_text().strip()
    return None


# -- one cell -------------------------------------------------------------------------------------
@dataclass
class Cell:
    tree: str
    round: int
    anchors: int
    viewers: str  # "720p" or "both"
    mode: str
    window_s: float
    node_cores: float  # the headline: the node process and everything under it
    loop_cores: float  # main thread: receive path, send path, HTTP, timers
    mixer_thread_cores: float
    other_thread_cores: float
    decode_cores: float | None  # all anchors' video decode (mixer thread)
    composite_cores: float | None
    encode_cores: dict[str, float]
    audio_cores: float | None
    video_ticks: int
    decoded_frames: int
    keyframes: int  # encoded by the mixer, every rendition
    late_ticks: int
    skipped_ticks: int
    load_avg_1m: float
    machine_busy_cores: float
    rss_mib: float


async def program(api: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/v1/rooms/{ROOM}/program")).json()
    return body


async def wait_program(api: httpx.AsyncClient, n: int, timeout: float = 30) -> str:
    """Wait until the room has ``n`` anchors and, if mixed, its mixer has ticked a while."""
    deadline = time.monotonic() + timeout
    p: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            p = await program(api)
            if len(p.get("anchors", ())) == n and (
                n == 1 or (p["mode"] == "mixed" and p["mixer_video_ticks"] > 30)
            ):
                return str(p["mode"])
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the room never had {n} anchors: {p}")


def machine_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


async def measure(
    api: httpx.AsyncClient, pid: int, tree: str, rnd: int, n: int, viewers: str, args: Any
) -> Cell:
    mode = await wait_program(api, n)
    await asyncio.sleep(args.settle)
    p0 = await program(api)
    th0, c0, b0, w0 = thread_cpu(pid), node_cpu(pid), machine_busy(), time.monotonic()
    await asyncio.sleep(args.window)
    th1, c1, b1, w1 = thread_cpu(pid), node_cpu(pid), machine_busy(), time.monotonic()
    p1 = await program(api)
    wall = w1 - w0
    groups = thread_groups(pid, th0, th1)
    mixed = p1.get("mode") == "mixed" and p0.get("mode") == "mixed"

    def rate(key: str) -> float | None:
        if not mixed or key not in p1:
            return None
        return round((p1[key] - p0.get(key, 0.0)) / wall, 4)

    enc: dict[str, float] = {}
    if mixed:
        e0, e1 = p0.get("mixer_encode_cpu_seconds", {}), p1.get("mixer_encode_cpu_seconds", {})
        enc = {k: round((v - e0.get(k, 0.0)) / wall, 4) for k, v in e1.items()}

    def ticks(key: str) -> int:
        return int(p1.get(key, 0) - p0.get(key, 0)) if mixed else 0

    rss = psutil.Process(pid).memory_info().rss / 2**20
    return Cell(
        tree=tree,
        round=rnd,
        anchors=n,
        viewers=viewers,
        mode=mode,
        window_s=round(wall, 2),
        node_cores=round((c1 - c0) / wall, 4),
        loop_cores=round(groups["loop"] / wall, 4),
        mixer_thread_cores=round(groups["mixer"] / wall, 4),
        other_thread_cores=round(groups["other"] / wall, 4),
        decode_cores=rate("mixer_decode_cpu_seconds"),
        composite_cores=rate("mixer_composite_cpu_seconds"),
        encode_cores=enc,
        audio_cores=rate("mixer_audio_cpu_seconds"),
        video_ticks=ticks("mixer_video_ticks"),
        decoded_frames=ticks("mixer_decoded_frames"),
        keyframes=ticks("mixer_keyframes"),
        late_ticks=ticks("mixer_late_ticks"),
        skipped_ticks=ticks("mixer_skipped_ticks"),
        load_avg_1m=os.getloadavg()[0],
        machine_busy_cores=round((b1 - b0) / wall, 2),
        rss_mib=round(rss, 1),
    )


def py_spy() -> str:
    """py-spy on PATH, else next to this interpreter (``--py-spy`` names another)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


async def profile(exe: str, pid: int, seconds: float, out: Path) -> None:
    """py-spy sampling whichever thread of ``pid`` holds the GIL (Python time only: native code
    that released the GIL and idle waits are perf's side)."""
    argv = [exe, "record", "--gil", "--threads", "--pid", str(pid), "--duration"]
    argv += [str(int(seconds)), "--rate", "100", "--format", "raw", "--output", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode:
        print(f"py-spy failed: {err.decode(errors='replace')[-400:]}", flush=True)


async def watch(base: str, rendition: str, tries: int = 20) -> Viewer:
    """A light viewer of one rendition; a 503 (the node's overload guard, on a loaded machine)
    is retried after a second."""
    for _ in range(tries - 1):
        try:
            return await whep_watch(base, f"{ROOM}?rendition={rendition}", decode=False)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503:
                raise
        await asyncio.sleep(1.0)
    return await whep_watch(base, f"{ROOM}?rendition={rendition}", decode=False)


async def perf_profile(pid: int, seconds: float, out: Path) -> str:
    """``perf record`` of every thread of ``pid`` (CPU cycles: only running code is sampled),
    summarised by thread name and shared object: which library each thread's CPU goes to."""
    data = out.with_suffix(".perf.data")
    rec = await asyncio.create_subprocess_exec(
        *["perf", "record", "-F", "499", "-p", str(pid), "-o", str(data), "--", "sleep"],
        str(int(seconds)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await rec.wait()
    rep = await asyncio.create_subprocess_exec(
        *["perf", "report", "-i", str(data), "--stdio", "--sort", "comm,dso", "--percent-limit"],
        "0.5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    text, _ = await rep.communicate()
    lines = [ln for ln in text.decode(errors="replace").splitlines() if ln and ln[0] != "#"]
    summary = "\n".join(lines)
    out.with_suffix(".perf.txt").write_text(summary)
    return summary


# -- a node from a checkout -----------------------------------------------------------------------
async def start_node(children: Children, tree: Path, nice: int = 0) -> tuple[Child, str]:
    port = free_port()
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": KEY,
        "STAGECAST_LOG_LEVEL": "warning",
        "PYTHONPATH": str(tree),
    }
    log_path = children.log_dir / f"node-{tree.name}-{port}.log"
    with log_path.open("w") as log:
        proc = await asyncio.create_subprocess_exec(
            *server_argv(sys.executable, port, free_udp_port()),
            cwd=tree,  # ``-m`` puts the working directory first on sys.path
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_die_with_parent,
        )
    child = Child(log_path.stem, proc, psutil.Process(proc.pid), log_path)
    children.items.append(child)
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(base, child)
    if nice:
        renice(proc.pid, nice)
    return child, base


async def run_tree(
    children: Children, tree: Path, rnd: int, clip: str | None, args: Any
) -> list[Cell]:
    cells: list[Cell] = []
    node, base = await start_node(children, tree, args.nice)
    tokens = TokenAuthority(SECRET)
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    anchors: list[Child] = []
    viewers: list[Viewer] = []
    try:
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=10) as api:
            for n in args.anchors:
                while len(anchors) < n:
                    tok = tokens.mint(ROOM, "anchor", f"ffmpeg-{len(anchors)}", 3600)
                    url = f"{base}/whip/{ROOM}"
                    argv = (
                        anchor_argv(exe, clip, url, tok)
                        if clip is not None
                        else whip_source_argv(exe, SOURCE, url, tok)
                    )
                    name = f"anchor-{tree.name}-{rnd}-{len(anchors)}"
                    anchors.append(await children.start(name, argv))
                    if args.nice:
                        renice(anchors[-1].proc.pid, args.nice)
                    await asyncio.sleep(0.5)
                for which in args.viewers:
                    want = ["720p", "360p"] if which == "both" else ["720p"]
                    while len(viewers) > len(want):
                        await viewers.pop().close()
                    while len(viewers) < len(want):
                        rendition = want[len(viewers)]
                        viewers.append(await watch(base, rendition))
                    cell = await measure(api, node.proc.pid, tree.name, rnd, n, which, args)
                    print(fmt_cell(cell), flush=True)
                    cells.append(cell)
                    if args.profile and n == max(args.anchors) and which == "both":
                        out = Path(args.profile) / f"{tree.name}-{rnd}-{n}.txt"
                        out.parent.mkdir(parents=True, exist_ok=True)
                        if shutil.which("perf"):
                            print(await perf_profile(node.proc.pid, args.window, out), flush=True)
                        await profile(args.py_spy, node.proc.pid, args.window, out)
                        print(
                            f"profile: {out} (py-spy), {out.with_suffix('.perf.txt')}", flush=True
                        )
    finally:
        for v in viewers:
            with contextlib.suppress(Exception):
                await v.close()
        for a in anchors:
            await children.stop(a)
        await children.stop(node)
    return cells


def fmt_cell(c: Cell) -> str:
    enc = " ".join(f"{k} {v:.3f}" for k, v in sorted(c.encode_cores.items(), reverse=True))

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return (
        f"{c.tree:>12} r{c.round} {c.anchors} anchors {c.viewers:>4} ({c.mode}): "
        f"NODE {c.node_cores:.3f} core | loop {c.loop_cores:.3f} mixer {c.mixer_thread_cores:.3f} "
        f"other {c.other_thread_cores:.3f} | decode {f(c.decode_cores)} composite "
        f"{f(c.composite_cores)} encode [{enc}] audio {f(c.audio_cores)} | ticks {c.video_ticks} "
        f"decoded {c.decoded_frames} keyframes {c.keyframes} "
        f"late {c.late_ticks} skipped {c.skipped_ticks} | load {c.load_avg_1m:.2f} "
        f"busy {c.machine_busy_cores:.2f} | {c.rss_mib:.0f} MiB"
    )


def summary(cells: list[Cell]) -> str:
    lines = [
        "| tree | anchors | viewers | runs | node cores min / median | loop | mixer thread "
        "| decode | composite | encode 720p / 360p | audio | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((c.tree, c.anchors, c.viewers) for c in cells)

    def med(values: list[float | None]) -> str:
        vs = [v for v in values if v is not None]
        return f"{statistics.median(vs):.3f}" if vs else "-"

    for tree, n, which in keys:
        cs = [c for c in cells if (c.tree, c.anchors, c.viewers) == (tree, n, which)]
        node = [c.node_cores for c in cs]
        lines.append(
            f"| {tree} | {n} | {which} | {len(cs)} "
            f"| **{min(node):.3f}** / {statistics.median(node):.3f} "
            f"| {med([c.loop_cores for c in cs])} | {med([c.mixer_thread_cores for c in cs])} "
            f"| {med([c.decode_cores for c in cs])} | {med([c.composite_cores for c in cs])} "
            f"| {med([c.encode_cores.get('720p') for c in cs])} / "
            f"{med([c.encode_cores.get('360p') for c in cs])} "
            f"| {med([c.audio_cores for c in cs])} "
            f"| {min(c.load_avg_1m for c in cs):.1f}-{max(c.load_avg_1m for c in cs):.1f} |"
        )
    return "\n".join(lines)


# -- latency (optional): a stamped anchor passed through, then drawn full-canvas among three ------
@dataclass
class LatencyRow:
    path: str
    samples: int
    p50_ms: float | None
    p95_ms: float | None


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


async def latency_row(base: str, path: str, window: float) -> LatencyRow:
    probe = await whep_watch(base, ROOM, kinds=("video",))
    try:
        await asyncio.sleep(2.0)
        start = len(probe.samples)
        await asyncio.sleep(window)
        lat = [s.latency_ms for s in probe.samples[start:]]
    finally:
        await probe.close()
    return LatencyRow(path, len(lat), pct(lat, 50), pct(lat, 95))


async def run_latency(children: Children, tree: Path, window: float) -> list[LatencyRow]:
    node, base = await start_node(children, tree)
    tokens = TokenAuthority(SECRET)
    pubs: list[Publisher] = []
    rows: list[LatencyRow] = []
    try:
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=10) as api:
            clip = await asyncio.to_thread(encoded_clip, 1280, 720)
            stamped = await whip_publish(
                base,
                ROOM,
                tokens.mint(ROOM, "anchor", "stamped", 3600),
                video=StampedVideoTrack(640, 360, 30),
                video_codec="H264",
            )
            pubs.append(stamped)
            await wait_program(api, 1)
            rows.append(await latency_row(base, "passthrough (1 anchor)", window))
            stamped_id = (await program(api))["anchors"][0]
            for i in range(3):
                pubs.append(
                    await whip_publish(
                        base,
                        ROOM,
                        tokens.mint(ROOM, "anchor", f"load-{i}", 3600),
                        video=LoopTrack(clip),
                        audio=ToneAudioTrack(300 + 200 * i),
                        video_codec="H264",
                        prepacked=True,
                    )
                )
            await wait_program(api, 4)
            ids = (await program(api))["anchors"]
            regions = [{"anchor_id": stamped_id, "x": 0, "y": 0, "w": 1, "h": 1, "z": 0}]
            for i, aid in enumerate(a for a in ids if a != stamped_id):
                x = 0.74 - 0.25 * i
                regions.append({"anchor_id": aid, "x": x, "y": 0.74, "w": 0.24, "h": 0.24, "z": 1})
            r = await api.put(
                f"/v1/rooms/{ROOM}/layout", json={"mode": "custom", "regions": regions}
            )
            r.raise_for_status()
            rows.append(await latency_row(base, "mixed (4 anchors, 720p program)", window))
    finally:
        for p in pubs:
            with contextlib.suppress(Exception):
                await p.close()
        await children.stop(node)
    return rows


# -- main -----------------------------------------------------------------------------------------
@dataclass
class Results:
    cells: list[Cell] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    mixer_added_p50_ms: float | None = None
    mixer_added_p95_ms: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)


async def run(args: Any) -> Results:
    res = Results(machine={"cpus": psutil.cpu_count(), "load_avg_before": os.getloadavg()})
    if args.nice:
        res.machine["autogroup"] = boost(args.nice)
    with tempfile.TemporaryDirectory(prefix="bench-mixer-") as tmp:
        children = Children(Path(tmp))
        try:
            clip: str | None = None
            if args.source == "copy":
                clip = str(Path(tmp) / "testsrc2-720p30.ts")
                argv = clip_argv(imageio_ffmpeg.get_ffmpeg_exe(), SOURCE, clip, 20)
                print("encoding the anchors' clip (20 s of testsrc2 720p30)...", flush=True)
                await asyncio.to_thread(subprocess.run, argv, check=True)
            for rnd in range(args.repeat):
                for tree in args.tree:
                    res.cells += await run_tree(children, tree, rnd, clip, args)
            if args.latency:
                res.latency = await run_latency(children, args.tree[-1], args.window)
                a, b = res.latency
                if a.p50_ms is not None and b.p50_ms is not None:
                    res.mixer_added_p50_ms = round(b.p50_ms - a.p50_ms, 1)
                if a.p95_ms is not None and b.p95_ms is not None:
                    res.mixer_added_p95_ms = round(b.p95_ms - a.p95_ms, 1)
        finally:
            await children.stop_all()
    res.machine["load_avg_after"] = os.getloadavg()
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchors", default="1,2,4", help="anchor counts, ascending")
    parser.add_argument("--viewers", default="720p,both", help="viewer sets: 720p, both")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before each window")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (trees interleaved)")
    parser.add_argument("--tree", action="append", help="checkout to run the node from")
    parser.add_argument(
        "--source", choices=("copy", "live"), default="copy", help="anchors loop a clip or encode"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the node, anchors and viewers at this nice value, and their autogroup (root "
        "for < 0; start under setsid): on a loaded machine the mixer otherwise skips ticks, and "
        "a cell that does less work costs less",
    )
    parser.add_argument("--profile", default=None, help="py-spy the largest 'both' cell here")
    parser.add_argument("--py-spy", default=py_spy(), help="the py-spy to profile with")
    parser.add_argument("--latency", action="store_true", help="also mixer-added latency")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.anchors = sorted(int(a) for a in args.anchors.split(","))
    args.viewers = [v for v in args.viewers.split(",") if v]
    if any(v not in ("720p", "both") for v in args.viewers):
        parser.error("--viewers takes 720p and/or both")
    args.tree = [Path(t).resolve() for t in (args.tree or ["."])]
    res = asyncio.run(run(args))
    print()
    print(summary(res.cells))
    for row in res.latency:
        print(row)
    if res.latency:
        print(f"mixer-added p50 {res.mixer_added_p50_ms} ms, p95 {res.mixer_added_p95_ms} ms")
    m = res.machine
    print(f"load average before {m['load_avg_before']}, after {m['load_avg_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(res), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
