"""Every recording of this node: started and stopped by the operator (or a room's ``record``
setting on go-live), following the room's program hub: the same hub (an anchor back within the
reconnect grace) keeps one file; a new program (codec change, new stream) starts a new file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.errors import Conflict, NotFound, StagecastError
from relay.media.hub import FanoutHub

from ..settings import RecordingSettings
from ..stage.table import StageTable
from .files import MB, DiskGuard, Mp4Index, index_mp4, new_recording_id, recording_path
from .recorder import RecordingFile, RecordingMeta, new_meta

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], None]
AnchorHubs = Callable[[str], dict[str, FanoutHub]]  # room -> its live anchors' own hubs


class InsufficientStorage(StagecastError):
    status, title, type_slug = 507, "Insufficient storage", "insufficient-storage"


@dataclass(eq=False)
class RoomRecorder:
    """A room being recorded: its current file (while live) and the files made so far."""

    room: str
    anchors: bool = False  # each anchor's own stream too, a file per anchor session
    current: RecordingFile | None = None
    per_anchor: dict[str, RecordingFile] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    reason: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RecordingService:
    def __init__(
        self,
        settings: RecordingSettings,
        stages: StageTable,
        events: EventSink | None = None,
        anchor_hubs: AnchorHubs | None = None,
    ) -> None:
        self.settings = settings
        self._anchor_hubs: AnchorHubs = anchor_hubs or (lambda room: {})
        self._stages = stages
        self._events: EventSink = events or (lambda kind, data: None)
        self._temp: Path | None = None
        self.root = Path(settings.dir) if settings.dir else None
        self.guard = DiskGuard(settings.min_free_mb * MB, settings.stop_free_mb * MB)
        self.recorders: dict[str, RoomRecorder] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._monitor: asyncio.Task[None] | None = None
        stages.subscribe(self._on_hub)

    def directory(self) -> Path:
        if self.root is None:
            self._temp = self.root = Path(tempfile.mkdtemp(prefix="stagecast-rec-"))
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory()).free

    # -- commands --------------------------------------------------------------------------------
    async def start(self, room: str, *, anchors: bool = False) -> RoomRecorder:
        if self._stages.get(room) is None:
            raise NotFound(f"no room {room!r}")
        if room in self.recorders:
            raise Conflict(f"room {room!r} is already being recorded")
        free = await asyncio.to_thread(self.free_bytes)
        if not self.guard.may_start(free):
            raise InsufficientStorage(
                f"{free // MB} MB free for recordings, {self.settings.min_free_mb} MB needed"
            )
        if room in self.recorders:  # started while the free space was read
            raise Conflict(f"room {room!r} is already being recorded")
        rec = self.recorders[room] = RoomRecorder(room, anchors)
        async with rec.lock:  # a hub change meanwhile waits, then finds this file
            hub = self._stages.live_hub(room)
            if hub is not None and not hub.closed.is_set():
                await self._follow(rec, hub)
            if anchors:
                await self._follow_anchors(rec)
        if self._monitor is None:
            self._monitor = asyncio.create_task(self._watch_disk(), name="recordings-disk")
        log.info("recording room %s", room)
        return rec

    async def stop(self, room: str, reason: str = "stopped") -> RoomRecorder:
        rec = self.recorders.pop(room, None)
        if rec is None:
            raise NotFound(f"room {room!r} is not being recorded")
        rec.reason = reason
        async with rec.lock:
            await self._close(rec, reason)
        return rec

    async def shutdown(self) -> None:
        for room in list(self.recorders):
            await self.stop(room, "shutdown")
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        self._stages.unsubscribe(self._on_hub)
        if self._temp is not None:
            await asyncio.to_thread(shutil.rmtree, self._temp, True)

    # -- following the room ----------------------------------------------------------------------
    def _on_hub(self, room: str, hub: FanoutHub | None) -> None:
        rec = self.recorders.get(room)
        stage = self._stages.get(room)
        if rec is None and hub is not None and stage is not None and stage.config.record:
            self._spawn(self._auto_start(room))
        elif rec is not None:
            self._spawn(self._switch(rec, hub))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _auto_start(self, room: str) -> None:
        try:
            await self.start(room)
        except Conflict:
            pass
        except StagecastError as exc:
            log.warning("room %s: recording on go-live refused: %s", room, exc.detail)
            self._events("recording.failed", {"room": room, "reason": exc.detail})

    async def _switch(self, rec: RoomRecorder, hub: FanoutHub | None) -> None:
        async with rec.lock:
            if self.recorders.get(rec.room) is not rec:
                return
            if rec.current is not None and rec.current.hub is hub:
                return
            await self._close(rec, "stream ended" if hub is None else "new program")
            if hub is not None and not hub.closed.is_set():
                await self._follow(rec, hub)

    async def _open(
        self, rec: RoomRecorder, hub: FanoutHub, anchor: str | None = None
    ) -> RecordingFile:
        meta = new_meta(new_recording_id(), rec.room, hub, anchor)
        s = self.settings
        current = RecordingFile(
            self.directory(), meta, hub, s.queue_frames, s.fragment_duration, s.keyframe_interval
        )
        await current.start()
        rec.files.append(meta.id)
        self._events(
            "recording.started",
            {"room": rec.room, "recording_id": meta.id, "file": meta.file, "anchor_id": anchor},
        )
        return current

    async def _follow(self, rec: RoomRecorder, hub: FanoutHub) -> None:
        rec.current = await self._open(rec, hub)

    async def _follow_anchors(self, rec: RoomRecorder) -> None:
        """Open a file for each new anchor session of the room, close those that ended."""
        live = self._anchor_hubs(rec.room)
        for anchor_id, file in list(rec.per_anchor.items()):
            if live.get(anchor_id) is not file.hub or file.hub.closed.is_set():
                del rec.per_anchor[anchor_id]
                await self._finish(rec, file, "anchor left")
        for anchor_id, hub in live.items():
            if anchor_id not in rec.per_anchor and not hub.closed.is_set():
                rec.per_anchor[anchor_id] = await self._open(rec, hub, anchor_id)

    async def _close(self, rec: RoomRecorder, reason: str) -> None:
        current, rec.current = rec.current, None
        if reason != "new program" and reason != "stream ended":
            for file in rec.per_anchor.values():
                await self._finish(rec, file, reason)
            rec.per_anchor.clear()
        if current is not None:
            await self._finish(rec, current, reason)

    async def _finish(self, rec: RoomRecorder, current: RecordingFile, reason: str) -> None:
        meta = await current.finish(reason)
        log.info("recording %s of room %s complete: %s", meta.id, rec.room, reason)
        self._events(
            "recording.completed",
            {
                "room": rec.room,
                "recording_id": meta.id,
                "file": meta.file,
                "size": meta.size,
                "duration_s": meta.duration_s,
                "reason": reason,
                "anchor_id": meta.anchor,
            },
        )

    async def _watch_disk(self) -> None:
        """Stop every recording cleanly (file closed, playable) before the disk fills; end one
        whose writer failed on its own or whose room was closed; follow anchors coming and
        going."""
        while True:
            await asyncio.sleep(self.settings.check_interval)
            if not self.recorders:
                continue
            try:
                free = await asyncio.to_thread(self.free_bytes)
            except OSError:
                log.exception("cannot read the recordings disk's free space")
                continue
            for room, rec in list(self.recorders.items()):
                try:
                    await self._check(room, rec, free)
                except Exception:
                    log.exception("room %s: checking its recording failed", room)

    async def _check(self, room: str, rec: RoomRecorder, free: int) -> None:
        if self.recorders.get(room) is not rec:
            return  # stopped meanwhile
        if self.guard.check(free) == "stop":
            log.warning("room %s: recording stopped, %d MB free", room, free // MB)
            await self.stop(room, "disk full")
        elif any(f.failed for f in (rec.current, *rec.per_anchor.values()) if f):
            await self.stop(room, "stopped")  # the writer's error becomes the reason
        elif self._stages.get(room) is None:
            await self.stop(room, "room closed")
        elif rec.anchors:
            async with rec.lock:
                await self._follow_anchors(rec)

    # -- files -----------------------------------------------------------------------------------
    def recording_of(self, room: str) -> RoomRecorder:
        rec = self.recorders.get(room)
        if rec is None:
            raise NotFound(f"room {room!r} is not being recorded")
        return rec

    def _live_metas(self) -> dict[str, RecordingMeta]:
        files = [f for r in self.recorders.values() for f in (r.current, *r.per_anchor.values())]
        return {f.meta.id: f.meta for f in files if f is not None}

    def active_ids(self) -> set[str]:
        return set(self._live_metas())

    def list(self, room: str | None = None) -> list[RecordingMeta]:
        """Every recording in the directory (oldest first), live ones with their growing size."""
        if self.root is None or not self.root.is_dir():
            return []
        live = self._live_metas()
        out: list[RecordingMeta] = []
        for path in sorted(self.root.glob("*.json")):
            try:
                meta = live.get(path.stem) or RecordingMeta.from_json(path.read_text())
            except (OSError, ValueError, TypeError):
                continue
            if room is not None and meta.room != room:
                continue
            if meta.state == "recording":
                media = self.root / meta.file
                with contextlib.suppress(OSError):
                    meta.size = media.stat().st_size
            out.append(meta)
        return out

    def get(self, recording_id: str) -> RecordingMeta:
        path = recording_path(self.directory(), recording_id, ".json")
        live = self._live_metas().get(recording_id)
        if live is not None:
            return live
        try:
            return RecordingMeta.from_json(path.read_text())
        except FileNotFoundError:
            raise NotFound("no such recording") from None

    def media_path(self, meta: RecordingMeta) -> Path:
        suffix = Path(meta.file).suffix
        return recording_path(self.directory(), meta.id, suffix)

    def index(self, meta: RecordingMeta) -> Mp4Index:
        path = self.media_path(meta)
        with path.open("rb") as f:

            def read(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(n)

            return index_mp4(read, path.stat().st_size)

    def delete(self, recording_id: str) -> None:
        meta = self.get(recording_id)
        if recording_id in self.active_ids():
            raise Conflict("this recording is still being written: stop it first")
        self.media_path(meta).unlink(missing_ok=True)
        recording_path(self.directory(), recording_id, ".json").unlink(missing_ok=True)
