"""The transcode ladder (``stage.transcode_ladder``, off by default): a lone anchor that sends
one stream still gets lower renditions. Its video is decoded once and the renditions below the
first are scaled and encoded by the mixer's worker (one anchor, full canvas, no audio) in a
thread of its own; the program (first rendition) stays the anchor's stream, passed through,
and every rendition keeps the anchor's audio as it is. A worker that dies is not restarted:
its renditions freeze until the room's program changes (logged)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from relay.media.frames import EncodedFrame
from relay.media.hub import FanoutHub

from ..mixer.layout import LayoutSpec
from ..mixer.specs import RenditionSpec

if TYPE_CHECKING:
    from ..mixer.program import ProgramWorker

log = logging.getLogger(__name__)


class TranscodeLadder:
    def __init__(
        self,
        room: str,
        anchor_id: str,
        request_keyframe: Callable[[], None],
        hubs: Mapping[str, FanoutHub],
        specs: list[RenditionSpec],
        *,
        video_codec: str,
        fps: int,
        gop: int,
        input_frames: int,
        max_pending: int = 240,
    ) -> None:
        from ..mixer.program import ProgramWorker  # numpy and the codecs: only when used

        self.room = room
        self.hubs = dict(hubs)  # rendition name -> hub, as ``specs``
        self._anchor_id = anchor_id
        self._pending = 0
        self._lock = threading.Lock()
        self._max_pending = max_pending
        self.dropped_outputs = 0
        self.error: str | None = None
        self._stopped = False
        loop = asyncio.get_running_loop()
        worker: ProgramWorker

        def emit(rendition: str | None, frame: EncodedFrame) -> None:  # worker thread
            with self._lock:
                if self._pending >= self._max_pending:
                    self.dropped_outputs += 1
                    worker.request_keyframe(rendition)
                    return
                self._pending += 1
            try:
                loop.call_soon_threadsafe(self._deliver, rendition, frame)
            except RuntimeError:  # the loop is gone (shutdown)
                worker.stop()

        def failed(exc: BaseException) -> None:  # worker thread, as it dies
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("room %s: transcode ladder died (%s)", room, self.error)

        worker = self.worker = ProgramWorker(
            video_codec=video_codec,
            audio=False,
            renditions=specs,
            fps=fps,
            gop=gop,
            audio_bitrate=0,
            input_frames=input_frames,
            layout=LayoutSpec,
            controls=dict,
            emit=emit,
            rendition_wanted=self._taken,  # nobody on a lower rendition: decode only
            on_error=failed,
            name=f"ladder-{room}",
        )
        worker.add_input(anchor_id, request_keyframe)
        for name, hub in self.hubs.items():
            hub.attach_source(functools.partial(worker.request_keyframe, name))
        worker.start()

    def _taken(self, name: str) -> bool:  # worker thread: a dict read and an int
        hub = self.hubs.get(name)
        return hub is not None and hub.viewer_count > 0

    def feed(self, frame: EncodedFrame) -> None:
        """One of the anchor's video frames (the event loop)."""
        self.worker.feed(self._anchor_id, frame)

    def _deliver(self, rendition: str | None, frame: EncodedFrame) -> None:
        with self._lock:
            self._pending -= 1
        hub = self.hubs.get(rendition) if rendition is not None else None
        if hub is not None and frame.kind == "video" and not self._stopped:
            hub.publish(frame)

    def stop(self) -> None:
        """The thread frees its codecs and ends on its own (``join`` at shutdown)."""
        self._stopped = True
        with contextlib.suppress(Exception):
            self.worker.stop()

    @property
    def alive(self) -> bool:
        return self.worker.alive
