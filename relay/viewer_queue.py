"""Bounded per-viewer frame queue: a slow viewer drops to the next keyframe and delays nobody."""

from __future__ import annotations

import asyncio
from collections import deque

from .media import EncodedFrame, MediaKind


class ViewerQueue:
    """Frames waiting to be sent to one viewer for one kind.

    Video starts at a keyframe and, on overflow, drops everything queued and waits for the next
    keyframe (``offer`` returns False so the hub can ask for one). Audio drops its oldest frame.
    """

    def __init__(self, kind: MediaKind, maxlen: int) -> None:
        self.kind = kind
        self.maxlen = maxlen
        self._frames: deque[EncodedFrame] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self.waiting_keyframe = kind == "video"
        self.sent = 0
        self.sent_bytes = 0
        self.sent_packets = 0
        self.dropped = 0
        self.overflows = 0

    def offer(self, frame: EncodedFrame) -> bool:
        """Queue a frame; False when the viewer needs a keyframe to go on."""
        if self._closed:
            return True
        if self.kind == "video":
            if self.waiting_keyframe:
                if not frame.keyframe:
                    self.dropped += 1
                    return False
                self.waiting_keyframe = False
            elif len(self._frames) >= self.maxlen:
                self.dropped += len(self._frames) + 1
                self.overflows += 1
                self._frames.clear()
                self.waiting_keyframe = True
                return False
        elif len(self._frames) >= self.maxlen:
            self._frames.popleft()
            self.dropped += 1
            self.overflows += 1
        self._frames.append(frame)
        self._ready.set()
        return True

    def restart(self) -> None:
        """Forget queued frames and wait for a keyframe (new source, or the viewer asked)."""
        self._frames.clear()
        self.waiting_keyframe = self.kind == "video"

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._frames)

    async def get(self) -> EncodedFrame | None:
        """Next frame, or None once the queue is closed and empty."""
        while not self._frames:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        self.sent += 1
        self.sent_packets += len(frame.payloads)
        self.sent_bytes += sum(len(p) for p in frame.payloads)
        return frame
