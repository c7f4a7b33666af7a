"""A MediaStreamTrack that yields a viewer's queued EncodedFrames to a pre-packed sender."""

from __future__ import annotations

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from relay.media.frames import EncodedFrame, MediaKind
from relay.media.viewer_queue import ViewerQueue


class HubTrack(MediaStreamTrack):
    """Reads one kind of a viewer's frames; ends (MediaStreamError) when the queue closes."""

    def __init__(self, kind: MediaKind, queue: ViewerQueue) -> None:
        super().__init__()
        self.kind = kind
        self._queue = queue

    async def recv(self) -> EncodedFrame:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        self._queue.close()
        super().stop()
