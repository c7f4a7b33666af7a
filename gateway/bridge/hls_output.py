"""A room's HLS on disk: applies the packager's file actions (in a worker thread), keeps the
playlist, and lets HTTP requests wait for a part or playlist update (LL-HLS blocking reload)."""

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

from .llhls import PLAYLIST, Action, DeleteFile, LlHlsPackager, WriteFile

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
    def __init__(self, directory: Path, packager: LlHlsPackager) -> None:
        self.directory = directory
        self.packager = packager
        self.playlist_text: str | None = None
        self.hint: str | None = None  # preload hint of the published playlist
        self._in_flight: set[str] = set()
        self.bytes_written = 0
        self.updated_at: float | None = None
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    async def apply(self, actions: list[Action]) -> None:
        """Write the files, then the playlist, then wake waiting requests (one writer at a
        time, so a playlist never names a file not yet on disk)."""
        async with self._lock:
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

    async def remove(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.directory, True)
