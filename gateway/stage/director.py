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

Mix-minus: with a ``mixminus_hub`` factory, every live anchor gets an audio-only hub of its own
(``/whep/{room}?mixminus={id}``) for as long as it is live. While the room is mixed the worker
feeds it everyone else's audio; with a lone anchor there is nobody else, so it stays silent.

Supervision: a mixer thread that dies (an exception in decode, layout, mix or encode) is
restarted with exponential backoff (``restart_initial`` doubling up to ``restart_max``; a run
that lasted ``restart_stable_after`` s counts as healthy and resets it). The new worker takes
the same anchors and attaches to the same hubs, so viewers keep their connections and resume on
its first keyframe. ``mixer_state``, ``restarts`` and ``last_error`` tell the API and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from relay.media.frames import EncodedFrame, MediaKind
from relay.media.hub import FanoutHub

from ..bridge.backoff import Backoff
from ..mixer.layout import LayoutSpec
from ..mixer.specs import AudioControl, RenditionSpec
from .anchor_hub import AnchorHub

if TYPE_CHECKING:
    from ..mixer.program import ProgramWorker
    from .ladder import TranscodeLadder

log = logging.getLogger(__name__)

Mode = Literal["idle", "passthrough", "mixed"]
MixerState = Literal["stopped", "running", "restarting"]
MixMinusHubFactory = Callable[[str], FanoutHub]  # anchor id -> a new audio-only (Opus) hub


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
    restart_initial: float = 0.2  # s before restarting a mixer thread that died; doubles...
    restart_max: float = 5.0  # ... up to this
    restart_stable_after: float = 10.0  # a run this long resets the backoff
    transcode_ladder: bool = False  # a lone single-stream anchor: lower renditions encoded


class ProgramDirector:
    def __init__(
        self,
        room: str,
        hubs: Mapping[str, FanoutHub],
        config: MixerConfig,
        layout: Callable[[], LayoutSpec],
        controls: Callable[[], Mapping[str, AudioControl]],
        mixminus_hub: MixMinusHubFactory | None = None,
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
        self._rendition_names = [r.name for r in config.renditions]
        self._layer_taps: list[AnchorHub] = []  # a simulcast anchor's lower layers (passthrough)
        # mixer rendition -> the program hubs it feeds (replaced whole: the worker reads it)
        self._fed_by: dict[str, tuple[FanoutHub, ...]] = {}
        self.ladder: TranscodeLadder | None = None
        self._stopped_ladders: list[TranscodeLadder] = []
        self._stopped: list[ProgramWorker] = []
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.switches = 0
        self.dropped_outputs = 0
        self._mixminus_factory = mixminus_hub
        self.mixminus: dict[str, FanoutHub] = {}  # anchor id -> its mix-minus hub
        self._feeds: dict[str, AnchorFeed] = {}  # the anchors the mixer takes (mixed mode)
        self._backoff = Backoff(
            config.restart_initial, config.restart_max, stable_after=config.restart_stable_after
        )
        self._restart: asyncio.TimerHandle | None = None
        self._worker_started_at = 0.0
        self.restarts = 0
        self.last_error: str | None = None
        self._map_hubs()

    @property
    def main(self) -> FanoutHub:
        return next(iter(self.hubs.values()))

    @property
    def lone(self) -> AnchorFeed | None:
        """The anchor passed through (passthrough mode), else None."""
        return self._lone if self.mode == "passthrough" else None

    @property
    def mixer_state(self) -> MixerState:
        """``running`` (a live mixer thread), ``restarting`` (it died; a new one is due) or
        ``stopped`` (no mixer: idle or passthrough)."""
        if self._restart is not None:
            return "restarting"
        return "running" if self.worker is not None else "stopped"

    # -- switching ------------------------------------------------------------------------
    def update(self, anchors: Sequence[AnchorFeed]) -> None:
        """The room's live anchors changed (join order): pick and wire the program's source."""
        live = [a for a in anchors if not a.hub.closed.is_set()]
        self._sync_mixminus(live)
        if not live:
            self.close()
            for hub in self.hubs.values():
                hub.detach_source()
            return
        if len(live) == 1 and all(h.compatible(live[0].hub.codecs) for h in self.hubs.values()):
            self._passthrough(live[0])
        else:
            self._mixed(live)

    def _sync_mixminus(self, live: Sequence[AnchorFeed]) -> None:
        """One mix-minus hub per live anchor: new anchors get theirs, gone ones' end."""
        factory = self._mixminus_factory
        if factory is None:
            return
        ids = {a.id for a in live}
        for aid in [a for a in self.mixminus if a not in ids]:
            self.mixminus.pop(aid).close()
        worker = self.worker
        for aid in ids - set(self.mixminus):
            hub = self.mixminus[aid] = factory(aid)
            if worker is not None:
                hub.attach_source(_no_keyframes)

    def _passthrough(self, anchor: AnchorFeed) -> None:
        if self.mode == "passthrough" and self._lone is anchor:
            return
        self._feeds = {}
        self._untap_all()
        self._stop_worker()
        self._lone = anchor
        self.mode = "passthrough"
        self.switches += 1
        hubs = list(self.hubs.values())
        controls = self._controls
        aid = anchor.id
        layers = anchor_layers(anchor)

        def forward_to(targets: list[FanoutHub]) -> Callable[[EncodedFrame], None]:
            def forward(frame: EncodedFrame) -> None:
                if frame.kind == "audio":
                    ctl = controls().get(aid)
                    if ctl is not None and ctl.muted:
                        return
                for hub in targets:
                    hub.publish(frame)

            return forward

        def mirror(kind: MediaKind, muted: bool) -> None:
            for hub in hubs:
                if kind in hub.codecs:
                    hub.set_muted(kind, muted)

        # rendition i carries simulcast layer i (the lowest layer fills the renditions below
        # it); a single stream feeds them all, or with the transcode ladder the first one
        # while the others are encoded from it
        rank = [min(i, len(layers) - 1) for i in range(len(hubs))]
        for j, layer in enumerate(layers):
            targets = [h for h, r in zip(hubs, rank, strict=True) if r == j]
            layer.sink = forward_to(targets)
            if len(layers) > 1:  # the layer's output switched sources: its renditions follow
                layer.on_source = functools.partial(_reattach, targets, layer.request_keyframe)
        anchor.hub.on_mute = mirror
        self._tapped[aid] = anchor.hub
        self._layer_taps = list(layers[1:])
        for hub, r in zip(hubs, rank, strict=True):
            hub.attach_source(
                anchor.request_keyframe if len(layers) == 1 else layers[r].request_keyframe
            )
            for kind in hub.codecs:
                hub.set_muted(kind, kind in anchor.hub.muted)
        video = hubs[0].codecs.get("video")
        if self.config.transcode_ladder and len(layers) == 1 and len(hubs) > 1 and video:
            self._start_ladder(anchor, forward_to, video.name)
        log.info(
            "room %s: passthrough of anchor %s (%d layer(s))",
            self.room,
            aid,
            len(layers),
            extra={"room": self.room},
        )

    def _mixed(self, anchors: Sequence[AnchorFeed]) -> None:
        self._feeds = {a.id: a for a in anchors}
        if self.mode != "mixed":
            self._untap_all()
            self._lone = None
            self._start_worker()
            self.mode = "mixed"
            self.switches += 1
            log.info("room %s: mixing %d anchors", self.room, len(anchors))
        elif self.worker is None and self._restart is None:
            self._start_worker()
        if self.worker is not None:
            self._wire(self.worker)
        # else: the mixer died and its restart is due; the new worker takes ``_feeds``

    def _wire(self, worker: ProgramWorker) -> None:
        """Make the worker's inputs the mixed anchors (``_feeds``) and tap their hubs into it."""
        wanted = self._feeds
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

    def _start_ladder(
        self,
        anchor: AnchorFeed,
        forward_to: Callable[[list[FanoutHub]], Callable[[EncodedFrame], None]],
        video_codec: str,
    ) -> None:
        """The renditions below the first are encoded from the anchor's stream (``ladder``)."""
        from .ladder import TranscodeLadder

        names = list(self.hubs)
        lower = {n: self.hubs[n] for n in names[1:]}
        specs = {r.name: r for r in self.config.renditions}
        smallest = self.config.renditions[-1]
        cfg = self.config
        ladder = self.ladder = TranscodeLadder(
            self.room,
            anchor.id,
            anchor.request_keyframe,
            lower,
            [specs.get(n, _half(smallest, n)) for n in lower],
            video_codec=video_codec,
            fps=cfg.fps,
            gop=cfg.gop,
            input_frames=cfg.input_frames,
        )
        main = forward_to([self.main])
        audio = forward_to(list(lower.values()))

        def forward(frame: EncodedFrame) -> None:
            main(frame)
            if frame.kind == "video":
                ladder.feed(frame)
            else:
                audio(frame)

        anchor.hub.sink = forward

    def _untap_all(self) -> None:
        if self.ladder is not None:
            self.ladder.stop()
            self._stopped_ladders.append(self.ladder)
            self.ladder = None
        for hub in [*self._tapped.values(), *self._layer_taps]:
            hub.sink = None
            hub.on_mute = None
            hub.on_source = None
        self._tapped.clear()
        self._layer_taps = []

    def add_layer_hubs(self, names: Sequence[str], make: Callable[[str], FanoutHub]) -> None:
        """Program hubs for simulcast layers beyond the configured renditions (kept until the
        program ends). While mixed they carry the mixer's lowest rendition."""
        for name in names:
            if name not in self.hubs:
                hub = self.hubs[name] = make(name)
                worker = self.worker
                if worker is not None:
                    hub.attach_source(
                        functools.partial(worker.request_keyframe, self._mixed_name(name))
                    )
        self._map_hubs()

    def _map_hubs(self) -> None:
        fed: dict[str, tuple[FanoutHub, ...]] = {}
        for name, hub in self.hubs.items():
            mixed = self._mixed_name(name)
            fed[mixed] = (*fed.get(mixed, ()), hub)
        self._fed_by = fed

    def _mixed_name(self, name: str) -> str:
        """The mixer rendition that feeds the program hub ``name`` while mixed."""
        renditions = self._rendition_names
        return name if name in renditions or not renditions else renditions[-1]

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

        def emit_mixminus(anchor_id: str, frame: EncodedFrame) -> None:  # worker thread
            with self._pending_lock:
                if self._pending >= cfg.max_pending:
                    self.dropped_outputs += 1
                    return
                self._pending += 1
            try:
                loop.call_soon_threadsafe(self._deliver_mixminus, worker, anchor_id, frame)
            except RuntimeError:
                worker.stop()

        def listened(anchor_id: str) -> bool:  # worker thread: a dict read and an int
            hub = self.mixminus.get(anchor_id)
            return hub is not None and hub.viewer_count > 0

        def taken(name: str) -> bool:  # worker thread: dict reads and ints
            # a hub with a viewer, or one a viewer is switching to (``FanoutHub.wanted``)
            return any(hub.wanted for hub in self._fed_by.get(name, ()))

        def failed(exc: BaseException) -> None:  # worker thread, as it dies
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to restart
                loop.call_soon_threadsafe(self._worker_failed, worker, exc)

        from ..mixer.program import ProgramWorker  # numpy and the codecs: only once a room mixes

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
            emit_mixminus=emit_mixminus if self._mixminus_factory is not None else None,
            mixminus_wanted=listened,
            rendition_wanted=taken,
            on_error=failed,
            name=f"mixer-{self.room}",
        )
        self.worker = worker
        for name, hub in self.hubs.items():
            for kind in hub.codecs:
                hub.set_muted(kind, False)
            hub.attach_source(functools.partial(worker.request_keyframe, self._mixed_name(name)))
        for hub in self.mixminus.values():
            hub.attach_source(_no_keyframes)
        self._worker_started_at = time.monotonic()
        worker.start()

    def _worker_failed(self, worker: ProgramWorker, exc: BaseException) -> None:
        """The mixer thread died: keep the hubs (and their viewers), restart after a backoff."""
        if worker is not self.worker:
            return  # an old worker, already replaced or stopped
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._untap_all()  # nothing feeds a dead worker; the new one taps the anchors again
        self._stop_worker()
        for hub in [*self.hubs.values(), *self.mixminus.values()]:
            hub.detach_source()  # viewers stay, frozen, until the new worker attaches
        ran_for = time.monotonic() - self._worker_started_at
        delay = self._backoff.failed(ran_for) or self.config.restart_max
        log.error(
            "room %s: mixer thread died after %.1f s (%s); restarting in %.2f s",
            self.room,
            ran_for,
            self.last_error,
            delay,
            extra={"room": self.room, "event": "mixer.died"},
        )
        loop = asyncio.get_running_loop()
        self._restart = loop.call_later(delay, self._restart_worker)

    def _restart_worker(self) -> None:
        self._restart = None
        if self.mode != "mixed":
            return
        self.restarts += 1
        self._start_worker()
        assert self.worker is not None
        self._wire(self.worker)
        log.info(
            "room %s: mixer restarted (%d so far) with %d anchors",
            self.room,
            self.restarts,
            len(self._feeds),
            extra={"room": self.room, "event": "mixer.restarted"},
        )

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
            for name, target in self.hubs.items():
                if self._mixed_name(name) == rendition and frame.kind in target.codecs:
                    target.publish(frame)

    def _deliver_mixminus(self, worker: ProgramWorker, anchor_id: str, frame: EncodedFrame) -> None:
        with self._pending_lock:
            self._pending -= 1
        if worker is not self.worker:
            return
        hub = self.mixminus.get(anchor_id)
        if hub is not None:
            hub.publish(frame)

    def _stop_worker(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        if self.worker is not None:
            self.worker.stop()
            self._stopped.append(self.worker)
            self.worker = None
        self._stopped = [w for w in self._stopped if w.alive]

    def close(self) -> None:
        """Stop feeding the hubs (mix-minus hubs end); a mixer thread is told to stop and ends
        on its own."""
        self._untap_all()
        self._stop_worker()
        self._lone = None
        self._feeds = {}
        self.mode = "idle"
        for hub in self.mixminus.values():
            hub.close()
        self.mixminus.clear()

    @property
    def busy(self) -> bool:
        """A mixer (or ladder) thread of this director is still running."""
        self._stopped_ladders = [la for la in self._stopped_ladders if la.alive]
        return (
            self.worker is not None
            or any(w.alive for w in self._stopped)
            or self.ladder is not None
            or bool(self._stopped_ladders)
        )

    async def aclose(self) -> None:
        """``close`` and wait (off the loop) for the mixer threads to end."""
        self.close()
        stopped, self._stopped = self._stopped, []
        ladders, self._stopped_ladders = self._stopped_ladders, []
        for w in [*stopped, *(la.worker for la in ladders)]:
            await asyncio.to_thread(w.join, 5.0)


def _half(spec: RenditionSpec, name: str) -> RenditionSpec:
    """A rendition beyond the configured ones (a simulcast layer's name): half the smallest."""
    return RenditionSpec(
        name,
        max(2, spec.width // 4 * 2),
        max(2, spec.height // 4 * 2),
        max(1, spec.video_bitrate // 3),
    )


def _reattach(hubs: Sequence[FanoutHub], requester: Callable[[], None]) -> None:
    """The stream feeding ``hubs`` changed source: rebase their timestamps and restart their
    viewers at the new source's keyframe."""
    for hub in hubs:
        hub.attach_source(requester)


def anchor_layers(anchor: AnchorFeed) -> tuple[AnchorHub, ...]:
    """An anchor's streams, highest first: its simulcast layers (``layers``), or its hub."""
    layers: tuple[AnchorHub, ...] | None = getattr(anchor, "layers", None)
    return tuple(layers) if layers else (anchor.hub,)


def _no_keyframes() -> None:
    """Mix-minus hubs carry audio only: nothing to ask for."""
