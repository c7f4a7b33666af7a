"""One recording file: a hub viewer, the bridge's frame feed and a writer thread that muxes the
encoded frames (no decode, no encode) into a fragmented MP4 on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from relay.media.frames import MediaKind
from relay.media.hub import FanoutHub, Viewer
from relay.media.viewer_queue import ViewerQueue

from ..bridge.backoff import KeyframeCadence
from ..bridge.feed import FeedPacket, FrameFeed, Timeline, write_feed
from .files import BoxBoundary, container_for, mp4_options, recording_path

log = logging.getLogger(__name__)

FileState = Literal["recording", "complete"]


@dataclass(slots=True)
class RecordingMeta:
    """What ``ID.json`` holds beside the media file."""

    id: str
    room: str
    file: str
    format: str
    codecs: dict[str, str]
    started_at: float
    state: FileState = "recording"
    ended_at: float | None = None
    reason: str | None = None
    size: int = 0
    duration_s: float | None = None
    frames: int = 0
    frames_dropped: int = 0
    anchor: str | None = None  # an anchor's own stream; None: the room's program

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RecordingMeta:
        data: dict[str, Any] = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class CuttableFile:
    """A file the writer thread writes through: when a write fails (disk full) the file is cut
    back to its last complete box, so what is on disk still plays. No ``seek``: the muxer
    writes straight through."""

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = path.open("wb")
        self.boundary = BoxBoundary()
        self.cut_at: int | None = None

    def write(self, data: bytes) -> int:
        if self.cut_at is not None:
            raise OSError("recording file was cut after a failed write")
        try:
            self._file.write(data)
            self._file.flush()
        except OSError:
            self.cut()
            raise
        self.boundary.feed(bytes(data))
        return len(data)

    def cut(self) -> None:
        self.cut_at = self.boundary.safe
        with contextlib.suppress(OSError, ValueError):
            self._file.truncate(self.cut_at)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # the buffered tail could not be written: cut to the last whole box
            self.cut_at = self.boundary.safe
            fd = os.open(self._file.name, os.O_WRONLY)
            try:
                os.ftruncate(fd, self.cut_at)
            finally:
                os.close(fd)


@dataclass(eq=False)
class RecordingFile:
    """One file of a room's recording, following one program hub."""

    root: Path
    meta: RecordingMeta
    hub: FanoutHub
    queue_frames: int
    fragment_duration: float
    keyframe_interval: float
    viewer: Viewer | None = None
    feed: FrameFeed | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writer_done: asyncio.Event = field(default_factory=asyncio.Event)
    writer_error: BaseException | None = None

    @property
    def path(self) -> Path:
        return self.root / self.meta.file

    def save_meta(self) -> None:
        meta_path = recording_path(self.root, self.meta.id, ".json")
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(self.meta.to_json())
        tmp.replace(meta_path)

    async def start(self) -> None:
        hub = self.hub
        codecs: dict[MediaKind, str] = {kind: spec.name for kind, spec in hub.codecs.items()}
        fmt = self.meta.format
        await asyncio.to_thread(self.save_meta)
        out: Any = (
            await asyncio.to_thread(CuttableFile, self.path)
            if fmt == "mp4"
            else await asyncio.to_thread(self.path.open, "wb")
        )
        feed = self.feed = FrameFeed(self.queue_frames, "video" in codecs)
        loop = asyncio.get_running_loop()

        def done(error: BaseException | None) -> None:
            self.writer_error = error
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.writer_done.set)

        options = mp4_options(self.fragment_duration) if fmt == "mp4" else {}
        threading.Thread(
            target=write_feed,
            args=(feed, out, codecs, done),
            kwargs={"format": fmt, "options": options},
            name=f"recording-{self.meta.id}",
            daemon=True,
        ).start()
        timeline = Timeline(0.0)
        started: list[bool] = []
        self.viewer = hub.add_viewer(f"recording-{self.meta.id}")
        for kind, queue in self.viewer.queues.items():
            self.tasks.append(asyncio.create_task(self._pump(kind, queue, timeline, started)))
        if "video" in codecs and self.keyframe_interval > 0:
            self.tasks.append(asyncio.create_task(self._keyframes()))

    async def _pump(
        self, kind: MediaKind, queue: ViewerQueue, timeline: Timeline, started: list[bool]
    ) -> None:
        assert self.feed is not None
        feed, hub = self.feed, self.hub
        clock = hub.codecs[kind].clock_rate
        while (frame := await queue.get()) is not None:
            if feed.waiting_keyframe and not (kind == "video" and frame.keyframe):
                self.meta.frames_dropped += 1
                continue
            if not started:
                started.append(True)
                timeline.origin = frame.received_at
            pts = timeline.pts_ms(kind, frame.timestamp, clock, frame.received_at)
            self.meta.frames += 1
            if not feed.put(FeedPacket(kind, frame.codec, pts, frame.data, frame.keyframe)):
                hub.request_keyframe()

    async def _keyframes(self) -> None:
        """Fragments (and VOD segments) start at keyframes: see that one comes every interval."""
        cadence = KeyframeCadence(self.keyframe_interval, time.monotonic())
        seen = self.hub.stats.keyframes_in
        while True:
            await asyncio.sleep(min(0.25, self.keyframe_interval / 4))
            now = time.monotonic()
            if self.hub.stats.keyframes_in != seen:
                seen = self.hub.stats.keyframes_in
                cadence.keyframe(now)
            if cadence.due(now):
                self.hub.request_keyframe()

    @property
    def failed(self) -> bool:
        return self.writer_done.is_set() and self.writer_error is not None

    async def finish(self, reason: str) -> RecordingMeta:
        """Stop following the hub, let the writer drain and close the file, write the meta."""
        if self.viewer is not None:
            self.hub.remove_viewer(self.viewer)
        if self.feed is not None:
            self.feed.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.writer_done.wait(), 10.0)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.feed is not None:
            self.meta.frames_dropped += self.feed.stats.dropped
        if self.writer_error is not None and reason == "stopped":
            reason = f"write failed: {self.writer_error}"
        self.meta.state = "complete"
        self.meta.ended_at = time.time()
        self.meta.reason = reason
        await asyncio.to_thread(self._final_meta)
        return self.meta

    def _final_meta(self) -> None:
        from .files import index_mp4

        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        self.meta.size = size
        if self.meta.format == "mp4" and size:
            with self.path.open("rb") as f:

                def read(offset: int, n: int) -> bytes:
                    f.seek(offset)
                    return f.read(n)

                self.meta.duration_s = round(index_mp4(read, size).duration, 3)
        else:
            self.meta.duration_s = round((self.meta.ended_at or 0) - self.meta.started_at, 3)
        with contextlib.suppress(OSError):
            self.save_meta()


def new_meta(
    recording_id: str, room: str, hub: FanoutHub, anchor: str | None = None
) -> RecordingMeta:
    codecs: dict[str, str] = {kind: spec.name for kind, spec in hub.codecs.items()}
    fmt, suffix = container_for(codecs.get("video"))
    return RecordingMeta(
        recording_id, room, recording_id + suffix, fmt, codecs, time.time(), anchor=anchor
    )
