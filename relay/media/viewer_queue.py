"""Bounded per-viewer frame queue: a slow viewer drops to the next keyframe and delays nobody."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from relay.media.frames import EncodedFrame, MediaKind

MAX_DELAY = 1.0
"""Seconds of media a queue may hold (by arrival time) on top of its frame limit: a viewer that
far behind is better served by the next keyframe than by stale frames."""

FrameSink = Callable[[EncodedFrame], bool]
"""Sends a frame at once; False when the viewer's transport is backlogged (frame not sent)."""


class ViewerQueue:
    """Frames on their way to one viewer for one kind.

    Video starts at a keyframe and, on overflow, drops everything queued and waits for the next
    keyframe (``offer`` returns False so the hub can ask for one). Audio drops its oldest frame.

    A *direct* queue is drained by a synchronous sink (RTP-level forwarding) once ``bind`` gives
    it one: frames then leave inside ``offer`` and the backlog that matters is the socket's, so a
    sink that reports congestion counts as an overflow. Until bound it holds frames; ``get``
    never yields them (it only reports the close).
    """

    def __init__(
        self, kind: MediaKind, maxlen: int, *, direct: bool = False, max_delay: float = MAX_DELAY
    ) -> None:
        self.kind = kind
        self.maxlen = maxlen
        self.max_delay = max_delay
        self.direct = direct
        self._sink: FrameSink | None = None
        self._frames: deque[EncodedFrame] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self.waiting_keyframe = kind == "video"
        self.held = False  # ``hold``: nothing goes out until ``restart``
        self.sent = 0
        self.sent_bytes = 0
        self.sent_packets = 0
        self.dropped = 0
        self.overflows = 0

    def offer(self, frame: EncodedFrame) -> bool:
        """Queue a frame; False when the viewer needs a keyframe to go on."""
        sink = self._sink
        if sink is not None and not self.waiting_keyframe:  # bound direct queue: nothing held
            # _deliver's success path inlined: this runs per frame and viewer
            if sink(frame):
                self.sent += 1
                self.sent_packets += len(frame.payloads)
                self.sent_bytes += frame.size
                return True
            return self._refused()
        if self._closed:
            return True
        if self.held:
            self.dropped += 1
            return True  # not starving: the keyframe it waits for comes from elsewhere
        if self.kind == "video":
            if self.waiting_keyframe:
                if not frame.keyframe:
                    self.dropped += 1
                    return False
                self.waiting_keyframe = False
            elif len(self._frames) >= self.maxlen or self._too_old(frame):
                self.overflows += 1
                self.dropped += len(self._frames)
                self._frames.clear()
                if not frame.keyframe:  # start again at this keyframe, or wait for the next
                    self.dropped += 1
                    self.waiting_keyframe = True
                    return False
        elif len(self._frames) >= self.maxlen or self._too_old(frame):
            self.overflows += 1
            while self._frames and (len(self._frames) >= self.maxlen or self._too_old(frame)):
                self._frames.popleft()
                self.dropped += 1
        if self._sink is not None:
            return self._deliver(self._sink, frame)
        self._frames.append(frame)
        if not self.direct:
            self._ready.set()
        return True

    def _too_old(self, frame: EncodedFrame) -> bool:
        return bool(self._frames) and frame.received_at - self._frames[0].received_at > (
            self.max_delay
        )

    def _deliver(self, sink: FrameSink, frame: EncodedFrame) -> bool:
        if sink(frame):
            self.sent += 1
            self.sent_packets += len(frame.payloads)
            self.sent_bytes += frame.size
            return True
        return self._refused()

    def _refused(self) -> bool:
        """The sink could not take a frame (its transport is backlogged)."""
        self.dropped += 1
        self.overflows += 1
        if self.kind == "video":
            self.waiting_keyframe = True
            return False
        return True

    def bind(self, sink: FrameSink) -> bool:
        """Send through ``sink`` from now on, starting with what is held; False when the
        viewer now needs a keyframe."""
        self._sink = sink
        ok = True
        while self._frames and not self._closed:
            frame = self._frames.popleft()
            if not self._deliver(sink, frame):
                self._frames.clear()
                ok = False
        return ok

    def restart(self) -> None:
        """Forget queued frames and wait for a keyframe (new source, or the viewer asked)."""
        self._frames.clear()
        self.waiting_keyframe = self.kind == "video"
        self.held = False

    def hold(self) -> None:
        """Send nothing (drop what is held and what comes) until ``restart``: a viewer leaving
        a layer that overruns its link for another layer's keyframe (``Switch.drain``)."""
        self.restart()
        self.held = True
        self.waiting_keyframe = True  # off the bound fast path in ``offer``

    def close(self) -> None:
        self._closed = True
        self._sink = None
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._frames)

    async def get(self) -> EncodedFrame | None:
        """Next frame, or None once the queue is closed and empty (a direct queue: once closed)."""
        if self.direct:
            while not self._closed:
                self._ready.clear()
                await self._ready.wait()
            return None
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
