"""A room's HLS on disk: applies the packager's file actions (in a worker thread), keeps the
playlist, and lets HTTP requests wait for a part or playlist update (LL-HLS blocking reload).

Once it has published, the playlist stays live (RFC 8216 §6.2.1: a new segment every target
duration or so, never a freeze): when no stream has given a part for ``gap`` seconds (anchor
away, ffmpeg restarting), slate parts (black, silence) follow in real time after a
discontinuity until a stream's part comes again, after another one. Players need no reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .fmp4 import TrackInfo
from .llhls import PLAYLIST, Action, DeleteFile, LlHlsPackager, WriteFile
from .slate import Slate, encode_slate

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9_-]+\.(m4s|mp4)")


def _apply(directory: Path, actions: list[Action], playlist: str | None) -> int:
    written = 0
    directory.mkdir(parents=True, exist_ok=True)
    for action in actions:
        path = directory / action.name
        if isinstance(action, WriteFile):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(action.data)
            os.replace(tmp, path)
            written += len(action.data)
        elif isinstance(action, DeleteFile):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if playlist is not None:
        tmp = directory / (PLAYLIST + ".tmp")
        tmp.write_text(playlist)
        os.replace(tmp, directory / PLAYLIST)
    return written


class HlsOutput:
    def __init__(
        self, directory: Path, packager: LlHlsPackager, *, gap: float | None = None
    ) -> None:
        self.directory = directory
        self.packager = packager
        self.playlist_text: str | None = None
        self.hint: str | None = None  # preload hint of the published playlist
        self._in_flight: set[str] = set()
        self.bytes_written = 0
        self.updated_at: float | None = None
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        # how long without a stream's part before the slate: past late parts on a busy machine
        # (a slate costs the stream's parts up to its next keyframe), soon enough for a new
        # playlist version within 1.5 target durations
        self.gap = (
            gap if gap is not None else max(3 * packager.part_target, packager.target_duration)
        )
        packager.resume_margin = self.gap  # a stall shorter than the gap brings no slate
        self.last_part_at: float | None = None  # monotonic, last part of a stream
        self.slate_parts = 0
        self._slate_shape: tuple[int, int, bool, bool] = (1280, 720, True, True)
        self._slates: dict[tuple[int, int, bool, bool], Slate] = {}
        self._filler: asyncio.Task[None] | None = None

    # -- streams (the bridge's ffmpeg runs) -----------------------------------------------------
    async def start_stream(self, init: bytes, tracks: dict[int, TrackInfo]) -> str:
        """A run's fMP4 init segment; returns the stream's name for its parts."""
        video = [t for t in tracks.values() if t.handler == "vide"]
        audio = any(t.handler == "soun" for t in tracks.values())
        if video and video[0].width and video[0].height:
            self._slate_shape = (video[0].width, video[0].height, True, audio)
        elif video or audio:
            width, height, _v, _a = self._slate_shape
            self._slate_shape = (width, height, bool(video), audio)
        await self.update(lambda: self.packager.start_stream(init))
        name = self.packager.stream
        assert name is not None
        if self._filler is None:
            self._filler = asyncio.create_task(self._fill_gaps(), name="hls-slate")
        return name

    async def add_part(
        self, stream: str, data: bytes, duration: float, independent: bool, wall: float | None
    ) -> bool:
        """False when the part was dropped (a dependent part after the slate)."""

        def change() -> list[Action]:
            actions = self.packager.add_part(data, duration, independent, wall, stream=stream)
            if actions:
                self.last_part_at = time.monotonic()
            return actions

        return bool(await self.update(change))

    async def end_stream(self, stream: str) -> None:
        await self.update(lambda: self.packager.end_stream(stream))

    # -- slate ------------------------------------------------------------------------------------
    async def _fill_gaps(self) -> None:
        step = min(0.1, self.packager.part_target / 3)
        while True:
            await asyncio.sleep(step)
            last = self.last_part_at
            if last is None:
                continue
            try:
                slate = await self._slate()  # ready before it is needed (encoded once per size)
                if time.monotonic() - last < self.gap:
                    continue
                log.info("HLS %s: no part for %.1f s: slate", self.directory.name, self.gap)
                await self._play_slate(slate, last)
            except Exception:
                log.exception("HLS slate failed")
                await asyncio.sleep(self.packager.target_duration)

    async def _slate(self) -> Slate:
        shape = self._slate_shape
        slate = self._slates.get(shape)
        if slate is None:
            width, height, video, audio = shape
            slate = await asyncio.to_thread(
                encode_slate,
                width,
                height,
                video=video,
                audio=audio,
                part_target=self.packager.part_target,
            )
            self._slates = {shape: slate}  # the latest size only
        return slate

    async def _play_slate(self, slate: Slate, last: float) -> None:
        """Slate parts in real time until a stream's part comes (``last_part_at`` moves)."""
        packager = self.packager
        if self.last_part_at != last:
            return
        await self.update(lambda: packager.start_stream(slate.init, slate=True))
        name = packager.stream
        assert name is not None
        per_segment = max(1, int(packager.target_duration / slate.duration + 1e-6))
        start = time.monotonic()
        wall = packager.end_program_time or time.time()
        n = 0
        try:
            while self.last_part_at == last:
                part = slate.part(n)
                pdt = wall + n * slate.duration
                independent = n % per_segment == 0

                def change(
                    part: bytes = part, pdt: float = pdt, ind: bool = independent
                ) -> list[Action]:
                    if self.last_part_at != last:  # a stream is back: no slate after it
                        return []
                    return packager.add_part(part, slate.duration, ind, pdt, stream=name)

                if await self.update(change):
                    self.slate_parts += 1
                n += 1
                await asyncio.sleep(max(0.0, start + n * slate.duration - time.monotonic()))
        finally:
            with contextlib.suppress(Exception):
                await self.update(lambda: packager.end_stream(name))

    # -- output -----------------------------------------------------------------------------------
    async def update(self, change: Callable[[], list[Action]]) -> list[Action]:
        """Change the packager (under the writer lock), write the files, then the playlist,
        then wake waiting requests: a playlist never names a file not yet on disk."""
        async with self._lock:
            actions = change()
            if actions:
                await self._write(actions)
            return actions

    async def _write(self, actions: list[Action]) -> None:
        text = self.packager.playlist() if self.packager.segments else None
        hint = self.packager.preload_hint
        self._in_flight = {a.name for a in actions if isinstance(a, WriteFile)}
        try:
            written = await asyncio.to_thread(_apply, self.directory, actions, text)
        finally:
            self._in_flight = set()
        self.bytes_written += written
        self.playlist_text, self.hint = text, hint
        self.updated_at = time.monotonic()
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, ready: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    def file(self, name: str) -> Path | None:
        if not NAME.fullmatch(name):
            return None
        path = self.directory / name
        return path if path.is_file() else None

    def is_pending(self, name: str) -> bool:
        """The hinted next part, or a file being written: worth waiting for."""
        return name == self.hint or name in self._in_flight

    async def close(self) -> None:
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
            self._filler = None

    async def remove(self) -> None:
        await self.close()
        await asyncio.to_thread(shutil.rmtree, self.directory, True)
