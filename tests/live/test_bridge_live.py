"""CDN bridge end to end: a real gateway, a real aiortc anchor, real ffmpeg, a real RTMP server
(Debian's nginx + libnginx-mod-rtmp on a free loopback port) read back with PyAV, and LL-HLS
followed over HTTP the way a player does (blocking playlist reload), decoded, stamps read."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import psutil
import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from relay.media.stamps import Stamp, read_stamp
from tests.live.test_live_path import wait_for
from tests.support.server import RunningServer, free_port, run_server

NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
BRIDGE_SETTINGS = {"backoff_initial": 0.2, "backoff_max": 1.0, "stop_timeout": 2.0}
WIDTH, HEIGHT = 640, 360

needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None or not NGINX_MODULE.exists(),
    reason="nginx with libnginx-mod-rtmp is not installed (scripts/bootstrap installs it)",
)


# -- helpers -----------------------------------------------------------------------------------
class RtmpServer:
    """nginx-rtmp in the foreground (no master, no daemon), everything under a temp dir."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "nginx.conf"
        self.conf.write_text(
            f"load_module {NGINX_MODULE};\n"
            "daemon off;\nmaster_process off;\n"
            f"pid {root}/nginx.pid;\nerror_log {root}/error.log info;\n"
            "events { worker_connections 64; }\n"
            "rtmp { server {\n"
            f"  listen 127.0.0.1:{port};\n"
            "  application live { live on; record off; wait_key on; wait_video on; }\n"
            "} }\n"
        )

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "nginx",
                "-e",
                str(self.root / "error.log"),
                "-p",
                str(self.root),
                "-c",
                str(self.conf),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "error.log").read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen")

    def log_tail(self, lines: int = 30) -> str:
        log = self.root / "error.log"
        return "\n".join(log.read_text().splitlines()[-lines:]) if log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
def rtmp(tmp_path: Path) -> Iterator[RtmpServer]:
    server = RtmpServer(tmp_path / "nginx", free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


def ffmpeg_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ffmpeg" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def operator(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url,
        headers={"X-API-Key": server.gateway.operator_key},
        timeout=15,
    )


async def wait_state(api: httpx.AsyncClient, path: str, states: set[str], timeout: float) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    body: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        body = (await api.get(path)).json()
        if body.get("state") in states:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never reached {states}: {body}")


def sent_at(stamp: Stamp, now: float) -> float:
    """Wall-clock send time of a stamp (its milliseconds are kept modulo 2**40)."""
    now_ms = int(now * 1000)
    return (now_ms - (now_ms - stamp.sent_ms) % (1 << 40)) / 1000


def frame_stamp(frame: av.VideoFrame) -> Stamp | None:
    plane = frame.planes[0]
    luma = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
    return read_stamp(luma[:, : frame.width])


@dataclass
class ReadBack:
    video_codec: str = ""
    audio_codec: str = ""
    width: int = 0
    height: int = 0
    counters: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    audio_frames: int = 0
    error: str | None = None
    retries: list[str] = field(default_factory=list)  # failed starts (the reader retries)


def read_rtmp(url: str, frames: int, timeout: float = 20.0) -> ReadBack:
    """Play the RTMP stream as a CDN edge would (retrying a refused or incomplete start) and
    decode ``frames`` video frames."""
    deadline = time.monotonic() + timeout
    out = ReadBack()
    retries: list[str] = []
    while time.monotonic() < deadline:
        out = ReadBack(retries=retries)
        try:
            with av.open(url, options={"rtmp_live": "live"}, timeout=(10.0, 5.0)) as c:
                if not (c.streams.video and c.streams.audio):
                    raise RuntimeError(f"streams {list(c.streams)}")
                v, a = c.streams.video[0], c.streams.audio[0]
                out.video_codec, out.audio_codec = v.codec_context.name, a.codec_context.name
                for packet in c.demux(v, a):
                    for frame in packet.decode():
                        if isinstance(frame, av.AudioFrame):
                            out.audio_frames += 1
                            continue
                        out.width, out.height = frame.width, frame.height
                        stamp = frame_stamp(frame)
                        if stamp is not None:
                            out.counters.append(stamp.counter)
                            out.latencies_ms.append(
                                (time.time() - sent_at(stamp, time.time())) * 1000
                            )
                    if len(out.counters) >= frames or time.monotonic() > deadline:
                        return out
        except Exception as exc:
            out.error = repr(exc)
            retries.append(out.error)
            time.sleep(0.3)
    return out


def assert_readback(rb: ReadBack, frames: int, rtmp: RtmpServer) -> None:
    assert rb.error is None, (rb.error, rtmp.log_tail())
    assert (rb.video_codec, rb.audio_codec) == ("h264", "aac")
    assert (rb.width, rb.height) == (WIDTH, HEIGHT)
    assert len(rb.counters) >= frames
    assert rb.counters == sorted(rb.counters), "stamps out of order"
    assert rb.audio_frames > 10


async def publish(server: RunningServer, room: str, codec: str = "H264") -> Any:
    return await whip_publish(
        server.base_url,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(WIDTH, HEIGHT, 30),
        audio=ToneAudioTrack(440),
        video_codec=codec,
    )


# -- RTMP ----------------------------------------------------------------------------------------
@needs_nginx
@pytest.mark.timeout(60)
async def test_rtmp_push_copy_survives_server_restart(rtmp: RtmpServer) -> None:
    with run_server(bridge=BRIDGE_SETTINGS) as server:
        async with operator(server) as api:
            assert (await api.post("/v1/rooms", json={"name": "cdn"})).status_code == 201
            made = await api.post(
                "/v1/rooms/cdn/bridges", json={"kind": "rtmp", "url": rtmp.url("secret-key")}
            )
            assert made.status_code == 201, made.text
            bridge = made.json()
            path = made.headers["location"]
            assert bridge["state"] == "waiting" and bridge["url"].endswith("/live/****")
            assert "secret-key" not in made.text

            pub = await publish(server, "cdn")
            await wait_state(api, path, {"running"}, 15)
            rb = await asyncio.to_thread(read_rtmp, rtmp.url("secret-key"), 45)
            assert_readback(rb, 45, rtmp)

            # the RTMP server dies mid-stream: the bridge says why and retries with backoff
            rtmp.kill()
            failing = await wait_state(api, path, {"retrying", "starting"}, 10)
            await asyncio.sleep(1.0)
            failing = (await api.get(path)).json()
            assert failing["state"] in ("retrying", "starting"), failing
            assert failing["restarts"] >= 1 and failing["reason"], failing
            assert "secret-key" not in failing["reason"]

            rtmp.start()  # back on the same port: the bridge reconnects
            await wait_state(api, path, {"running"}, 15)
            rb = await asyncio.to_thread(read_rtmp, rtmp.url("secret-key"), 30)
            assert_readback(rb, 30, rtmp)
            assert len(ffmpeg_children()) == 1
            await pub.close()
            assert (await wait_state(api, path, {"waiting"}, 10))["pid"] is None
            assert await wait_for(lambda: not ffmpeg_children(), 5)
            # the anchor comes back: the same bridge pushes again; then the gateway shuts down
            pub = await publish(server, "cdn")
            await wait_state(api, path, {"running"}, 15)
            assert len(ffmpeg_children()) == 1
            await pub.close()
    # gateway shut down with its bridge running: no ffmpeg is left behind (nor a zombie)
    assert not ffmpeg_children()


@needs_nginx
@pytest.mark.timeout(60)
async def test_rtmp_vp8_is_transcoded_and_room_close_stops_bridges(rtmp: RtmpServer) -> None:
    with run_server(bridge=BRIDGE_SETTINGS) as server:
        async with operator(server) as api:
            assert (await api.post("/v1/rooms", json={"name": "vp8"})).status_code == 201
            pub = await publish(server, "vp8", codec="VP8")
            assert await wait_for(lambda: server.gateway.stages.live_hub("vp8") is not None, 5)
            made = await api.post(
                "/v1/rooms/vp8/bridges", json={"kind": "rtmp", "url": rtmp.url("vp8")}
            )
            assert made.status_code == 201, made.text
            path = made.headers["location"]
            await wait_state(api, path, {"running"}, 15)
            rb = await asyncio.to_thread(read_rtmp, rtmp.url("vp8"), 30)
            assert_readback(rb, 30, rtmp)
            hls = await api.post("/v1/rooms/vp8/bridges", json={"kind": "hls"})
            assert hls.status_code == 201
            await wait_state(api, hls.headers["location"], {"running"}, 15)
            assert len(ffmpeg_children()) == 2

            # closing the room stops its bridges and their ffmpeg
            assert (await api.delete("/v1/rooms/vp8")).status_code == 204
            assert await wait_for(lambda: not server.gateway.bridges.all(), 5)
            assert (await api.get(path)).status_code == 404
            assert await wait_for(lambda: not ffmpeg_children(), 5), ffmpeg_children()
            assert (await api.get("/hls/vp8/index.m3u8")).status_code == 404
            await pub.close()


# -- failures and the API ------------------------------------------------------------------------
@pytest.mark.timeout(40)
async def test_refused_target_is_retried_then_failed_and_api_errors() -> None:
    settings = {**BRIDGE_SETTINGS, "retry_limit": 3}
    with run_server(bridge=settings) as server:
        async with operator(server) as api:
            no_key = await httpx.AsyncClient(base_url=server.base_url).get("/v1/rooms/x/bridges")
            assert no_key.status_code == 401
            bad = await api.post("/v1/rooms/nope/bridges", json={"kind": "hls"})
            assert bad.status_code == 404
            assert bad.headers["content-type"] == "application/problem+json"
            assert (await api.post("/v1/rooms", json={"name": "r"})).status_code == 201
            for body in (
                {"kind": "rtmp"},
                {"kind": "rtmp", "url": "http://example.com/live/x"},
                {"kind": "rtmp", "url": "rtmp:///nohost"},
                {"kind": "hls", "url": "rtmp://h/a/b"},
                {"kind": "srt", "url": "rtmp://h/a/b"},
            ):
                resp = await api.post("/v1/rooms/r/bridges", json=body)
                assert resp.status_code == 422, (body, resp.text)
                assert resp.headers["content-type"] == "application/problem+json"
            assert (await api.post("/v1/rooms/r/bridges", json={"kind": "hls"})).status_code == 201
            again = await api.post("/v1/rooms/r/bridges", json={"kind": "hls"})
            assert again.status_code == 409

            dead = f"rtmp://127.0.0.1:{free_port()}/live/k"  # nothing listens there
            made = await api.post("/v1/rooms/r/bridges", json={"kind": "rtmp", "url": dead})
            path = made.headers["location"]
            listed = (await api.get("/v1/rooms/r/bridges")).json()
            assert {b["kind"] for b in listed} == {"hls", "rtmp"}
            assert all(b["state"] == "waiting" for b in listed)

            pub = await publish(server, "r")
            failed = await wait_state(api, path, {"failed"}, 20)
            assert "Connection refused" in failed["reason"], failed
            assert failed["restarts"] == 3 and failed["pid"] is None
            # the HLS bridge of the same room is unaffected
            hls = next(
                b for b in (await api.get("/v1/rooms/r/bridges")).json() if b["kind"] == "hls"
            )
            await wait_state(api, f"/v1/rooms/r/bridges/{hls['id']}", {"running"}, 10)

            assert (await api.delete(path)).status_code == 204
            assert (await api.delete(path)).status_code == 404
            await pub.close()
            assert await wait_for(lambda: not ffmpeg_children(), 10)

    with run_server(bridge={**BRIDGE_SETTINGS, "ffmpeg": "/nonexistent/ffmpeg"}) as server:
        async with operator(server) as api:
            await api.post("/v1/rooms", json={"name": "r"})
            made = await api.post("/v1/rooms/r/bridges", json={"kind": "hls"})
            pub = await publish(server, "r")
            failed = await wait_state(api, made.headers["location"], {"failed"}, 10)
            assert "cannot start ffmpeg" in failed["reason"]
            await pub.close()
    assert not ffmpeg_children()


# -- HLS -----------------------------------------------------------------------------------------
@dataclass
class Entry:
    msn: int
    uri: str | None  # complete segment
    duration: float
    parts: list[tuple[str, float, bool]]
    init: str
    program_time: str | None


@dataclass
class Playlist:
    tags: dict[str, str]
    media_sequence: int
    entries: list[Entry]
    hint: str | None
    discontinuities: int


def parse_playlist(text: str) -> Playlist:
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    tags: dict[str, str] = {}
    entries: list[Entry] = []
    init = ""
    pdt: str | None = None
    parts: list[tuple[str, float, bool]] = []
    hint = None
    disc = 0
    seq = 0
    pending_duration = 0.0
    for line in lines[1:]:
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MAP:"):
            init = re.search(r'URI="([^"]+)"', line).group(1)  # type: ignore[union-attr]
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = line.split(":", 1)[1]
        elif line.startswith("#EXT-X-PART:"):
            attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1]))
            parts.append(
                (
                    attrs["URI"].strip('"'),
                    float(attrs["DURATION"]),
                    attrs.get("INDEPENDENT") == "YES",
                )
            )
        elif line.startswith("#EXT-X-PRELOAD-HINT:"):
            hint = re.search(r'URI="([^"]+)"', line).group(1)  # type: ignore[union-attr]
        elif line == "#EXT-X-DISCONTINUITY":
            disc += 1
        elif line.startswith("#EXTINF:"):
            pending_duration = float(line.split(":", 1)[1].rstrip(","))
        elif line.startswith("#"):
            name, _, value = line[1:].partition(":")
            tags[name] = value
        elif line:
            entries.append(Entry(seq + len(entries), line, pending_duration, parts, init, pdt))
            parts, pdt = [], None
    if parts:
        entries.append(Entry(seq + len(entries), None, 0.0, parts, init, pdt))
    return Playlist(tags, seq, entries, hint, disc)


def decode_fmp4(data: bytes) -> tuple[list[tuple[Stamp | None, av.VideoFrame]], str, str]:
    """Decode init + media; (stamp, frame) per video frame, video codec, audio codec."""
    frames: list[tuple[Stamp | None, av.VideoFrame]] = []
    with av.open(io.BytesIO(data), format="mp4") as c:
        vcodec = c.streams.video[0].codec_context.name
        acodec = c.streams.audio[0].codec_context.name
        for frame in c.decode(video=0):
            frames.append((frame_stamp(frame), frame))
    return frames, vcodec, acodec


@dataclass
class HlsSample:
    """One part (LL-HLS) or segment (classic) as it became available to a client."""

    available_at: float  # wall clock when the playlist listing it came back
    first_sent: float  # stamp (wall clock) of its first and last frames
    last_sent: float

    @property
    def age_of_newest(self) -> float:
        return self.available_at - self.last_sent


@dataclass
class HlsFollow:
    parts: list[HlsSample] = field(default_factory=list)
    segments: list[HlsSample] = field(default_factory=list)
    playlists: list[Playlist] = field(default_factory=list)
    counters: list[int] = field(default_factory=list)
    codecs: set[tuple[str, str]] = field(default_factory=set)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    program_times: list[tuple[int, float, float, float]] = field(default_factory=list)


async def follow_hls(client: httpx.AsyncClient, room: str, seconds: float) -> HlsFollow:
    """A player's view: blocking playlist reloads for the next part; every new part and segment
    fetched and decoded at once; their availability time and frame stamps recorded."""
    out = HlsFollow()
    base = f"/hls/{room}/"
    seen_parts: set[str] = set()
    seen_segments: set[str] = set()
    inits: dict[str, bytes] = {}
    segment_bytes: dict[int, bytes] = {}
    decoded: dict[int, int] = {}  # msn -> frames already attributed to parts
    params: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        resp = await client.get(base + "index.m3u8", params=params)
        now = time.time()
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert resp.headers["cache-control"] == "no-cache"
        pl = parse_playlist(resp.text)
        out.playlists.append(pl)
        for entry in pl.entries:
            if entry.init not in inits:
                got = await client.get(base + entry.init)
                assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
                inits[entry.init] = got.content
            for uri, _dur, _ind in entry.parts:
                if uri in seen_parts:
                    continue
                seen_parts.add(uri)
                got = await client.get(base + uri)
                assert got.status_code == 200, uri
                assert "max-age" in got.headers["cache-control"]
                buf = segment_bytes.get(entry.msn, b"") + got.content
                segment_bytes[entry.msn] = buf
                try:
                    frames, *_ = decode_fmp4(inits[entry.init] + buf)
                except av.error.FFmpegError:
                    continue
                new = frames[decoded.get(entry.msn, 0) :]
                decoded[entry.msn] = len(frames)
                stamps = [s for s, _f in new if s is not None]
                if stamps and params:  # (parts listed before we started following: not timed)
                    out.parts.append(
                        HlsSample(now, sent_at(stamps[0], now), sent_at(stamps[-1], now))
                    )
            if entry.uri is not None and entry.uri not in seen_segments:
                seen_segments.add(entry.uri)
                if not params:
                    continue  # listed before we started following: not timed
                got = await client.get(base + entry.uri)
                assert got.status_code == 200
                frames, vcodec, acodec = decode_fmp4(inits[entry.init] + got.content)
                out.codecs.add((vcodec, acodec))
                stamps = [s for s, _f in frames if s is not None]
                out.sizes |= {(f.width, f.height) for _s, f in frames}
                out.counters += [s.counter for s in stamps]
                if stamps:
                    out.segments.append(
                        HlsSample(now, sent_at(stamps[0], now), sent_at(stamps[-1], now))
                    )
                if entry.program_time:
                    pdt = datetime.fromisoformat(entry.program_time).timestamp()
                    out.program_times.append((entry.msn, pdt, entry.duration, now))
        last = pl.entries[-1]
        if last.parts:
            params = {"_HLS_msn": last.msn, "_HLS_part": len(last.parts)}
        else:
            params = {"_HLS_msn": last.msn + 1, "_HLS_part": 0}
    return out


def summarize(name: str, samples: list[HlsSample], hold_back: float, extra: float) -> float:
    ages = sorted(s.age_of_newest for s in samples)
    p50 = statistics.median(ages)
    p95 = ages[min(len(ages) - 1, int(len(ages) * 0.95))]
    delay = p50 + hold_back
    print(
        f"{name}: n={len(ages)} newest-frame age at availability p50={p50 * 1000:.0f} ms "
        f"p95={p95 * 1000:.0f} ms; player delay ~ {delay:.2f} s "
        f"(p50 + hold-back {hold_back:.2f} s), worst ~ {delay + extra:.2f} s"
    )
    return delay + extra


@pytest.mark.timeout(75)
async def test_llhls_playlist_parts_segments_and_delay(tmp_path: Path) -> None:
    hls_dir = tmp_path / "hls"
    with run_server(bridge={**BRIDGE_SETTINGS, "hls_dir": str(hls_dir)}) as server:
        async with (
            operator(server) as api,
            httpx.AsyncClient(base_url=server.base_url, timeout=15) as player,
        ):
            await api.post("/v1/rooms", json={"name": "show"})
            made = await api.post("/v1/rooms/show/bridges", json={"kind": "hls"})
            assert made.status_code == 201 and made.json()["playlist_url"] == "/hls/show/index.m3u8"
            path = made.headers["location"]
            assert (await player.get("/hls/show/index.m3u8")).status_code == 404  # not live yet
            pub = await publish(server, "show")
            await wait_state(api, path, {"running"}, 15)
            await asyncio.sleep(2.5)  # a few segments exist: the player joins a running stream

            follow = await follow_hls(player, "show", 12.0)

            # the playlist: LL-HLS tags, parts within the part target, segments within the target
            pl = follow.playlists[-1]
            assert pl.tags["EXT-X-TARGETDURATION"] == "1"
            assert "CAN-BLOCK-RELOAD=YES" in pl.tags["EXT-X-SERVER-CONTROL"]
            part_target = float(pl.tags["EXT-X-PART-INF"].split("=")[1])
            assert pl.hint is not None
            durations = [d for p in follow.playlists for e in p.entries for _u, d, _i in e.parts]
            assert max(durations) <= part_target + 0.001
            seg_durations = [e.duration for p in follow.playlists for e in p.entries if e.uri]
            assert max(seg_durations) < 1.5
            independent = [e.parts[0][2] for p in follow.playlists for e in p.entries if e.parts]
            assert sum(independent) >= 0.8 * len(independent)  # segments start on keyframes

            # segments decode: H264 + AAC at the program's size, every stamp in order
            assert follow.codecs == {("h264", "aac")}
            assert follow.sizes == {(WIDTH, HEIGHT)}
            assert len(follow.counters) >= 15 * 8  # (30 fps, fewer on a starved machine)
            assert follow.counters == sorted(follow.counters)
            gaps = [b - a for a, b in itertools.pairwise(follow.counters)]
            assert max(gaps) <= 3
            # wall-clock program times: a recent past, advancing by each segment's duration
            pdts = follow.program_times
            assert all(now - 30 < pdt < now for _m, pdt, _d, now in pdts)
            for (m0, t0, d0, _), (m1, t1, _d1, _) in itertools.pairwise(pdts):
                assert m1 == m0 + 1 and t1 - t0 == pytest.approx(d0, abs=0.05)

            # delay: LL-HLS players sit PART-HOLD-BACK behind the newest part, classic players
            # HOLD-BACK (3 target durations) behind the newest segment
            ll = summarize("LL-HLS", follow.parts, 3 * part_target, part_target)
            classic = summarize("classic HLS", follow.segments, 3.0, 1.0)
            assert ll <= 3.0 and classic <= 6.0

            # files on disk; blocking reload limits; preload hint answered once written
            assert (hls_dir / "show" / "index.m3u8").is_file()
            future = await player.get(
                "/hls/show/index.m3u8", params={"_HLS_msn": pl.entries[-1].msn + 5}
            )
            assert future.status_code == 400
            hinted = parse_playlist((await player.get("/hls/show/index.m3u8")).text).hint
            t0 = time.monotonic()
            got = await player.get(f"/hls/show/{hinted}")
            assert got.status_code == 200 and time.monotonic() - t0 < 2.0
            assert (await player.get("/hls/show/../secret")).status_code == 404

            # ffmpeg dies: restarted with backoff, the playlist goes on after a discontinuity
            pid = (await api.get(path)).json()["pid"]
            os.kill(pid, signal.SIGKILL)
            back = await wait_state(api, path, {"retrying", "starting"}, 5)
            back = await wait_state(api, path, {"running"}, 10)
            assert back["restarts"] >= 1 and back["pid"] != pid
            await asyncio.sleep(1.0)
            text = (await player.get("/hls/show/index.m3u8")).text
            assert "#EXT-X-DISCONTINUITY" in text and len(set(re.findall(r"init\d+", text))) == 2

            # the anchor leaves and comes back: one playlist, a discontinuity, a new init
            await pub.close()
            await wait_state(api, path, {"waiting"}, 10)
            pub = await publish(server, "show")
            await wait_state(api, path, {"running"}, 15)
            await asyncio.sleep(1.5)
            text = (await player.get("/hls/show/index.m3u8")).text
            assert "#EXT-X-DISCONTINUITY" in text and re.search(r"init2\.mp4", text)
            await pub.close()
            assert (await api.delete(path)).status_code == 204
            assert not (hls_dir / "show").exists()
    assert not ffmpeg_children()
