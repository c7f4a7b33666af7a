"""Decides, per room, what feeds the program hubs: nothing, one anchor passed through, or the
mixer. Runs on the event loop; the hubs (one per rendition) never change while the room is
live, so viewers never renegotiate: each switch is ``hub.attach_source``, which rebases
timestamps, restarts viewers on the new source's keyframe and asks for that keyframe.

Rules:

* one live anchor whose codecs are the program's: passthrough (no decode, no encode). Every
  rendition hub carries the anchor's own stream (there is nothing to scale without decoding).
* two or more anchors, or a lone anchor whose codecs differ from the program's: the mixer
  (``ProgramWorker``) encodes in the PROGRAM's video codec (H264 with libx264, VP8 with libvpx),
  whatever each anchor publishes, so the codec viewers negotiated stays valid.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from relay.hub import FanoutHub
from relay.media import EncodedFrame, MediaKind

from .anchor_hub import AnchorHub
from .audio_mix import AudioControl
from .layout import LayoutSpec
from .program import ProgramWorker, RenditionSpec

log = logging.getLogger(__name__)

Mode = Literal["idle", "passthrough", "mixed"]


class AnchorFeed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def hub(self) -> AnchorHub: ...

    def request_keyframe(self) -> None: ...


@dataclass(frozen=True, slots=True)
class MixerConfig:
    renditions: tuple[RenditionSpec, ...]
    fps: int = 30
    gop: int = 60
    audio_bitrate: int = 64000
    input_frames: int = 30
    max_pending: int = 240  # encoded frames handed to the loop and not yet published


class ProgramDirector:
    def __init__(
        self,
        room: str,
        hubs: Mapping[str, FanoutHub],
        config: MixerConfig,
        layout: Callable[[], LayoutSpec],
        controls: Callable[[], Mapping[str, AudioControl]],
    ) -> None:
        self.room = room
        self.hubs = dict(hubs)  # rendition name -> hub, the main program first
        self.config = config
        self._layout = layout
        self._controls = controls
        self.mode: Mode = "idle"
        self.worker: ProgramWorker | None = None
        self._lone: AnchorFeed | None = None
        self._tapped: dict[str, AnchorHub] = {}
        self._stopped: list[ProgramWorker] = []
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.switches = 0
        self.dropped_outputs = 0

    @property
    def main(self) -> FanoutHub:
        return next(iter(self.hubs.values()))

    # -- switching ------------------------------------------------------------------------
    def update(self, anchors: Sequence[AnchorFeed]) -> None:
        """The room's live anchors changed (join order): pick and wire the program's source."""
        live = [a for a in anchors if not a.hub.closed.is_set()]
        if not live:
            self.close()
            for hub in self.hubs.values():
                hub.detach_source()
            return
        if len(live) == 1 and all(h.compatible(live[0].hub.codecs) for h in self.hubs.values()):
            self._passthrough(live[0])
        else:
            self._mixed(live)

    def _passthrough(self, anchor: AnchorFeed) -> None:
        if self.mode == "passthrough" and self._lone is anchor:
            return
        self._untap_all()
        self._stop_worker()
        self._lone = anchor
        self.mode = "passthrough"
        self.switches += 1
        hubs = list(self.hubs.values())
        controls = self._controls
        aid = anchor.id

        def forward(frame: EncodedFrame) -> None:
            if frame.kind == "audio":
                ctl = controls().get(aid)
                if ctl is not None and ctl.muted:
                    return
            for hub in hubs:
                hub.publish(frame)

        def mirror(kind: MediaKind, muted: bool) -> None:
            for hub in hubs:
                if kind in hub.codecs:
                    hub.set_muted(kind, muted)

        anchor.hub.sink = forward
        anchor.hub.on_mute = mirror
        self._tapped[aid] = anchor.hub
        for hub in hubs:
            hub.attach_source(anchor.request_keyframe)
            for kind in hub.codecs:
                hub.set_muted(kind, kind in anchor.hub.muted)
        log.info("room %s: passthrough of anchor %s", self.room, aid, extra={"room": self.room})

    def _mixed(self, anchors: Sequence[AnchorFeed]) -> None:
        if self.mode != "mixed" or self.worker is None:
            self._untap_all()
            self._lone = None
            self._start_worker()
            self.mode = "mixed"
            self.switches += 1
            log.info("room %s: mixing %d anchors", self.room, len(anchors))
        worker = self.worker
        assert worker is not None
        wanted = {a.id: a for a in anchors}
        for gone in set(worker.input_ids()) - set(wanted):
            worker.remove_input(gone)
            hub = self._tapped.pop(gone, None)
            if hub is not None:
                hub.sink = None
        for aid, anchor in wanted.items():
            if aid in self._tapped:
                continue
            worker.add_input(aid, anchor.request_keyframe)
            anchor.hub.sink = self._feeder(worker, anchor)
            anchor.hub.on_mute = None
            self._tapped[aid] = anchor.hub

    @staticmethod
    def _feeder(worker: ProgramWorker, anchor: AnchorFeed) -> Callable[[EncodedFrame], None]:
        aid, hub = anchor.id, anchor.hub

        def feed(frame: EncodedFrame) -> None:
            if frame.kind not in hub.muted:
                worker.feed(aid, frame)

        return feed

    def _untap_all(self) -> None:
        for hub in self._tapped.values():
            hub.sink = None
            hub.on_mute = None
        self._tapped.clear()

    # -- the worker -----------------------------------------------------------------------
    def _start_worker(self) -> None:
        self._stop_worker()
        main = self.main
        video = main.codecs.get("video")
        cfg = self.config
        loop = asyncio.get_running_loop()
        worker: ProgramWorker

        def emit(rendition: str | None, frame: EncodedFrame) -> None:  # worker thread
            with self._pending_lock:
                if self._pending >= cfg.max_pending:
                    self.dropped_outputs += 1
                    if frame.kind == "video":
                        worker.request_keyframe(rendition)
                    return
                self._pending += 1
            try:
                loop.call_soon_threadsafe(self._deliver, worker, rendition, frame)
            except RuntimeError:  # the loop is gone (shutdown)
                worker.stop()

        worker = ProgramWorker(
            video_codec=video.name if video is not None else None,
            audio="audio" in main.codecs,
            renditions=list(cfg.renditions),
            fps=cfg.fps,
            gop=cfg.gop,
            audio_bitrate=cfg.audio_bitrate,
            input_frames=cfg.input_frames,
            layout=self._layout,
            controls=self._controls,
            emit=emit,
            name=f"mixer-{self.room}",
        )
        self.worker = worker
        for name, hub in self.hubs.items():
            for kind in hub.codecs:
                hub.set_muted(kind, False)
            hub.attach_source(functools.partial(worker.request_keyframe, name))
        worker.start()

    def _deliver(self, worker: ProgramWorker, rendition: str | None, frame: EncodedFrame) -> None:
        with self._pending_lock:
            self._pending -= 1
        if worker is not self.worker:
            return  # a stopped worker's last frames
        if rendition is None:
            for hub in self.hubs.values():
                if frame.kind in hub.codecs:
                    hub.publish(frame)
        else:
            target = self.hubs.get(rendition)
            if target is not None and frame.kind in target.codecs:
                target.publish(frame)

    def _stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self._stopped.append(self.worker)
            self.worker = None
        self._stopped = [w for w in self._stopped if w.alive]

    def close(self) -> None:
        """Stop feeding the hubs; a mixer thread is told to stop and ends on its own."""
        self._untap_all()
        self._stop_worker()
        self._lone = None
        self.mode = "idle"

    @property
    def busy(self) -> bool:
        """A mixer thread of this director is still running."""
        return self.worker is not None or any(w.alive for w in self._stopped)

    async def aclose(self) -> None:
        """``close`` and wait (off the loop) for the mixer threads to end."""
        self.close()
        stopped, self._stopped = self._stopped, []
        for w in stopped:
            await asyncio.to_thread(w.join, 5.0)
