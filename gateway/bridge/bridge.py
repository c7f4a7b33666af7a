"""One CDN bridge: follows its room's program hub and keeps one ffmpeg fed while it is live.

A run = a hub viewer + an ffmpeg + a writer thread. The supervisor restarts a run whose ffmpeg
ended on its own (crash, refused or lost target) with backoff, parks in ``waiting`` while the
room is not live, and stops everything (never leaving a process behind) when told to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from relay.media.frames import MediaKind
from relay.media.hub import FanoutHub, Viewer
from relay.media.viewer_queue import ViewerQueue

from ..settings import BridgeSettings
from .argv import BridgeKind, FfmpegPlan, build_argv, frame_rate_of, nominal_frame_rate
from .backoff import Backoff, KeyframeCadence
from .feed import FeedPacket, FrameFeed, Timeline, write_feed
from .fmp4 import TrackInfo, parse_fragment, parse_init
from .hls_output import HlsOutput
from .process import FfmpegProcess, redact_url
from .state import BridgeState

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BridgeStats:
    runs: int = 0
    restarts: int = 0
    frames_in: int = 0
    frames_dropped: int = 0
    keyframe_requests: int = 0
    bytes_out: int = 0


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a run ended: ``failed`` when ffmpeg (or its feed) stopped on its own."""

    failed: bool
    reason: str | None
    ran_for: float
    permanent: bool = False  # not worth retrying (no ffmpeg binary)


@dataclass(eq=False)
class _Run:
    proc: FfmpegProcess
    feed: FrameFeed
    timeline: Timeline
    cadence: KeyframeCadence
    viewer: Viewer | None = None
    writer_done: asyncio.Event = field(default_factory=asyncio.Event)
    writer_error: BaseException | None = None
    wall_origin: float | None = None  # epoch seconds at output time 0
    hls_stream: str | None = None  # HLS: this run's stream (its init segment's name)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Bridge:
    def __init__(
        self,
        bridge_id: str,
        room: str,
        kind: BridgeKind,
        url: str,
        settings: BridgeSettings,
        ffmpeg: str,
        hls: HlsOutput | None = None,
    ) -> None:
        self.id = bridge_id
        self.room = room
        self.kind = kind
        self.url = url
        self.settings = settings
        self.ffmpeg = ffmpeg
        self.hls = hls
        self.state: BridgeState = "waiting"
        self.reason: str | None = None
        self.since = time.time()
        self.created_at = time.time()
        self.stats = BridgeStats()
        self.pid: int | None = None
        self.backoff = Backoff(
            settings.backoff_initial, settings.backoff_max, limit=settings.retry_limit
        )
        self._hub: FanoutHub | None = None
        self._failed_hub: FanoutHub | None = None
        self._rate: tuple[FanoutHub, int] | None = None  # measured frame rate of that hub
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # -- control ---------------------------------------------------------------------------------
    @property
    def display_url(self) -> str | None:
        return redact_url(self.url) if self.url else None

    def start(self, hub: FanoutHub | None) -> None:
        self._hub = hub
        self._task = asyncio.create_task(self._supervise(), name=f"bridge-{self.id}")

    def set_hub(self, hub: FanoutHub | None) -> None:
        """The room's program hub appeared (anchor live) or ended (None)."""
        if hub is not self._hub:
            self._hub = hub
            self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set_state("stopped", self.reason)

    @property
    def stopped(self) -> bool:
        return self._task is not None and self._task.done()

    def _set_state(self, state: BridgeState, reason: str | None = None) -> None:
        if state != self.state or reason != self.reason:
            if state != self.state:
                log.info(
                    "bridge %s (%s, room %s): %s %s",
                    self.id,
                    self.kind,
                    self.room,
                    state,
                    reason or "",
                )
                self.since = time.time()
            self.state, self.reason = state, reason

    def _current(self, hub: FanoutHub) -> bool:
        return not self._stopping and self._hub is hub and not hub.closed.is_set()

    async def _sleep(self, delay: float | None) -> None:
        """Until woken (hub change, stop) or ``delay`` passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    # -- supervisor ------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        try:
            while not self._stopping:
                self._wake.clear()
                hub = self._hub
                if hub is None or hub.closed.is_set() or hub is self._failed_hub:
                    if self.state != "failed":
                        self._set_state("waiting")
                    await self._sleep(None)  # until the room goes live (again) or stop
                    continue
                end = await self._run(hub)
                if not end.failed:
                    continue
                delay = None if end.permanent else self.backoff.failed(end.ran_for)
                if delay is None:
                    self._failed_hub = hub  # a new stream gets a new chance
                    self.backoff.reset()
                    self._set_state("failed", end.reason)
                    continue
                self.stats.restarts += 1
                self._set_state("retrying", end.reason)
                log.warning("bridge %s: %s; restarting in %.1fs", self.id, end.reason, delay)
                await self._sleep(delay)
        except Exception as exc:
            log.exception("bridge %s supervisor failed", self.id)
            self._set_state("failed", f"internal error: {exc}")
        finally:
            self.pid = None

    async def _frame_rate(self, hub: FanoutHub, span: float = 1.0, limit: float = 3.0) -> int:
        """The program's frame rate, for the RTMP metadata: from ``span`` seconds of its
        frames' RTP timestamps, read by a short-lived hub viewer (once per hub)."""
        if self._rate is not None and self._rate[0] is hub:
            return self._rate[1]
        viewer = hub.add_viewer(f"bridge-{self.id}-rate")
        queue = viewer.queues["video"]
        clock = hub.codecs["video"].clock_rate
        stamps: list[int] = []

        async def collect() -> None:
            while (frame := await queue.get()) is not None:
                stamps.append(frame.timestamp)
                if (frame.timestamp - stamps[0]) % (1 << 32) >= span * clock:
                    return

        task = asyncio.create_task(collect())
        waker = asyncio.ensure_future(self._wake.wait())  # stop or hub change: give up
        try:
            await asyncio.wait({task, waker}, timeout=limit, return_when="FIRST_COMPLETED")
        finally:
            task.cancel()
            waker.cancel()
            hub.remove_viewer(viewer)
        measured = frame_rate_of(stamps, clock)
        rate = nominal_frame_rate(measured)
        if measured is not None:
            self._rate = (hub, rate)
        return rate

    async def _run(self, hub: FanoutHub) -> RunEnd:
        codecs: dict[MediaKind, str] = {kind: spec.name for kind, spec in hub.codecs.items()}
        frame_rate: int | None = None
        if self.kind == "rtmp" and "video" in codecs:
            self._set_state("starting", self.reason)
            frame_rate = await self._frame_rate(hub)
            if not self._current(hub):
                return RunEnd(False, None, 0.0)
        plan = FfmpegPlan(
            ffmpeg=self.ffmpeg,
            kind=self.kind,
            video=codecs.get("video"),
            audio=codecs.get("audio"),
            url=self.url,
            keyframe_interval=self.settings.keyframe_interval,
            fragment_duration=round(self.settings.hls_part_duration * 0.87, 3),
            video_bitrate_kbps=self.settings.video_bitrate_kbps,
            audio_bitrate_kbps=self.settings.audio_bitrate_kbps,
            frame_rate=frame_rate,
        )
        proc = FfmpegProcess(build_argv(plan), f"bridge-{self.id}")
        self._set_state("starting", self.reason)
        self.stats.runs += 1
        started = time.monotonic()
        try:
            await proc.start()
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError | PermissionError)
            return RunEnd(True, f"cannot start ffmpeg: {exc}", 0.0, permanent=missing)
        self.pid = proc.pid
        feed = FrameFeed(self.settings.queue_frames, "video" in codecs)
        cadence = KeyframeCadence(self.settings.keyframe_interval, started)
        run = _Run(proc, feed, Timeline(0.0), cadence)
        loop = asyncio.get_running_loop()

        def writer_done(error: BaseException | None) -> None:
            run.writer_error = error
            with contextlib.suppress(RuntimeError):  # loop closed at interpreter exit
                loop.call_soon_threadsafe(run.writer_done.set)

        threading.Thread(
            target=write_feed,
            args=(run.feed, proc.take_feed_pipe(), codecs, writer_done),
            name=f"bridge-{self.id}-feed",
            daemon=True,
        ).start()
        exited = asyncio.create_task(proc.wait(), name=f"bridge-{self.id}-wait")
        try:
            output = self._read_hls(hub, run) if self.kind == "hls" else self._read_progress(run)
            run.tasks.append(asyncio.create_task(output, name=f"bridge-{self.id}-out"))
            run.viewer = hub.add_viewer(f"bridge-{self.id}-{self.stats.runs}")
            for kind, queue in run.viewer.queues.items():
                run.tasks.append(asyncio.create_task(self._pump(hub, kind, queue, run)))
            if plan.copies_video:
                run.tasks.append(asyncio.create_task(self._keyframes(hub, run)))
            while not exited.done() and self._current(hub):
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({exited, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            failed = exited.done() and self._current(hub)
        finally:
            await self._end_run(hub, run, exited)
        if not failed:
            return RunEnd(False, None, time.monotonic() - started)
        reason = proc.reason()
        if run.writer_error is not None and proc.returncode == 0:
            reason = f"feed stopped: {run.writer_error}"
        return RunEnd(True, reason, time.monotonic() - started)

    async def _end_run(self, hub: FanoutHub, run: _Run, exited: asyncio.Task[int]) -> None:
        if run.viewer is not None:
            hub.remove_viewer(run.viewer)  # its queues close: the pumps end
        run.feed.close()  # the writer drains, closes ffmpeg's stdin: ffmpeg finishes
        try:
            await run.proc.stop(self.settings.stop_timeout)
        finally:
            exited.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exited
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.writer_done.wait(), 5.0)
            # the output reader ends at EOF (now that ffmpeg is gone); the rest is cancelled
            if run.tasks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run.tasks[0]), 2.0)
            for task in run.tasks:
                task.cancel()
            await asyncio.gather(*run.tasks, return_exceptions=True)
            self.stats.frames_dropped += run.feed.stats.dropped
            self.pid = None
            if self.hls is not None and run.hls_stream is not None:
                await self.hls.end_stream(run.hls_stream)

    # -- run tasks ---------------------------------------------------------------------------------
    async def _pump(self, hub: FanoutHub, kind: MediaKind, queue: ViewerQueue, run: _Run) -> None:
        clock = hub.codecs[kind].clock_rate
        feed, timeline = run.feed, run.timeline
        while (frame := await queue.get()) is not None:
            self.stats.frames_in += 1
            if frame.keyframe and kind == "video":
                run.cadence.keyframe(frame.received_at)
            if feed.waiting_keyframe and not (kind == "video" and frame.keyframe):
                self.stats.frames_dropped += 1
                continue
            if run.wall_origin is None:
                timeline.origin = frame.received_at
                run.wall_origin = time.time() - (time.monotonic() - frame.received_at)
            pts = timeline.pts_ms(kind, frame.timestamp, clock, frame.received_at)
            if not feed.put(FeedPacket(kind, frame.codec, pts, frame.data, frame.keyframe)):
                hub.request_keyframe()

    async def _keyframes(self, hub: FanoutHub, run: _Run) -> None:
        """Segments and CDN joins start at keyframes: see that one comes every interval."""
        while True:
            await asyncio.sleep(min(0.1, run.cadence.interval / 4))
            if run.cadence.due(time.monotonic()):
                hub.request_keyframe()
                self.stats.keyframe_requests += 1

    async def _read_progress(self, run: _Run) -> None:
        """RTMP: ffmpeg's ``-progress`` lines; output bytes > 0 means the target takes data."""
        stdout = run.proc.stdout
        while line := await stdout.readline():
            key, _, value = line.decode("ascii", "replace").strip().partition("=")
            if key == "total_size" and value.isdigit():
                self.stats.bytes_out = int(value)
                if int(value) > 0 and self.state == "starting":
                    self._set_state("running")

    async def _read_hls(self, hub: FanoutHub, run: _Run) -> None:
        """HLS: split ffmpeg's fragmented MP4 into the init segment and LL-HLS parts."""
        assert self.hls is not None
        hls = self.hls
        stdout = run.proc.stdout
        init: list[bytes] = []
        tracks: dict[int, TrackInfo] = {}
        moof: bytes | None = None
        while (box := await _read_box(stdout)) is not None:
            kind, data = box
            if kind == "ftyp":
                init = [data]
            elif kind == "moov":
                tracks = parse_init(data)
                if run.hls_stream is not None:
                    await hls.end_stream(run.hls_stream)
                run.hls_stream = await hls.start_stream(b"".join([*init, data]), tracks)
            elif kind == "moof":
                moof = data
            elif kind == "mdat" and moof is not None and run.hls_stream is not None:
                info = parse_fragment(moof, tracks)
                wall = None if run.wall_origin is None else run.wall_origin + info.start
                part = moof + data
                moof = None
                ok = await hls.add_part(run.hls_stream, part, info.duration, info.independent, wall)
                # dropped: after the slate the stream must go on from a keyframe. Ask for one
                # (once per interval: each ask in flight would bring one more)
                if not ok and run.cadence.due(time.monotonic()):
                    hub.request_keyframe()
                    self.stats.keyframe_requests += 1
                self.stats.bytes_out = hls.bytes_written
                if self.state == "starting":
                    self._set_state("running")


async def _read_box(stream: asyncio.StreamReader) -> tuple[str, bytes] | None:
    try:
        header = await stream.readexactly(8)
        size = int.from_bytes(header[:4], "big")
        kind = header[4:8].decode("latin-1")
        if size == 1:
            large = await stream.readexactly(8)
            header += large
            size = int.from_bytes(large, "big")
        if size < len(header):
            raise ValueError(f"bad MP4 box size {size}")
        return kind, header + await stream.readexactly(size - len(header))
    except asyncio.IncompleteReadError:
        return None
