"""The room's program: what viewers of a room get while its anchors come and go.

The WHIP side (``gateway.anchors``) tells the room when an anchor arrives (``joined``) and
leaves (``left``); the room keeps the program hubs (one per rendition) and their director
(passthrough or mixer, with mix-minus), holds the program through a reconnect grace when the
last anchor's network drops, ends the stream, and reports all of it as webhook events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relay.errors import Conflict, Forbidden, NotFound
from relay.media.frames import CodecSpec, MediaKind
from relay.media.hub import FanoutHub
from relay.media.lifecycle import ReconnectGrace
from relay.media.simulcast import LayerOutputs, LayerState
from relay.media.stream_key import StreamKey
from relay.rtc.lifecycle import DeadlineTimer
from relay.rtc.sdp import OfferSummary, pick_codec
from relay.rtc.viewers import LadderLayer

from ..mixer.layout import LayoutSpec, parse_colour
from ..mixer.specs import RenditionSpec
from ..settings import Settings
from .director import AnchorFeed, MixerConfig, ProgramDirector, anchor_layers
from .selection import layer_names
from .table import Stage, StageTable

CLOCK_RATES = {"video": 90000, "audio": 48000}

EventSink = Callable[[str, dict[str, Any]], None]
Clock = Callable[[], float]

# Ends after which viewers are told at once; any other (network) end gets the reconnect grace.
FINAL_REASONS = frozenset({"deleted", "kicked", "room closed", "shutdown"})


class RoomAnchor(AnchorFeed, Protocol):
    """What the room needs of an anchor: its feed (own hub, keyframe requests) and who it is."""

    @property
    def room(self) -> str: ...

    @property
    def subject(self) -> str: ...


@dataclass(slots=True)
class IngressTotals:
    """Node-wide ingest counters, monotonic: finished anchors are folded in when they leave."""

    sessions: int = 0
    frames: int = 0
    bytes: int = 0
    keyframe_requests: int = 0
    keyframe_requests_coalesced: int = 0

    def add_hub(self, hub: FanoutHub) -> None:
        st = hub.stats
        self.frames += st.frames_in
        self.bytes += st.bytes_in
        self.keyframe_requests += st.keyframe_requests
        self.keyframe_requests_coalesced += st.keyframe_requests_coalesced

    def add_requests(self, hub: FanoutHub) -> None:
        """A program hub: only its keyframe requests (to the anchor or the mixer) count here."""
        self.keyframe_requests += hub.stats.keyframe_requests
        self.keyframe_requests_coalesced += hub.stats.keyframe_requests_coalesced


class Room:
    """One live program: its director (which holds the rendition hubs, main first), the
    anchors feeding it in join order, and its reconnect grace."""

    def __init__(self, stage: Stage, director: ProgramDirector, grace: float) -> None:
        self.stage = stage
        self.director = director
        self.anchors: dict[str, RoomAnchor] = {}
        self.guests: dict[str, AnchorFeed] = {}  # anchors of other rooms linked in (links.py)
        self.grace = ReconnectGrace(grace)
        self.awaited: RoomAnchor | None = None  # whose dropped connection the grace waits for

    @property
    def main(self) -> FanoutHub:
        return self.director.main

    def feeds(self) -> list[AnchorFeed]:
        """What the director takes: the anchors (join order), then the linked guests, who
        are shown only while one of the room's own anchors is live; a call room's first
        anchor alone (passed through)."""
        own: list[AnchorFeed] = list(self.anchors.values())
        if self.stage.config.mode == "call":  # participants pull each other; nothing to mix
            return own[:1]
        return [*own, *self.guests.values()] if own else []


class RoomService:
    """Every room program of this node (``rooms``: room name -> live ``Room``), over the
    stage table; created and shut down by the app's lifespan. Synchronous: the only timer (the
    reconnect grace) is ``next_deadline`` / ``handle_timer(now)``, which a ``DeadlineTimer``
    drives on the loop (tests may call ``handle_timer`` with their own clock)."""

    def __init__(
        self,
        settings: Settings,
        stages: StageTable,
        events: EventSink | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = settings
        self.stages = stages
        self._events: EventSink = events or (lambda kind, data: None)
        self._clock = clock
        self.rooms: dict[str, Room] = {}
        self.finished = IngressTotals()  # ended programs' keyframe requests
        self._retired: list[ProgramDirector] = []  # closed, their threads maybe still ending
        self.program_ended: list[Callable[[str], None]] = []  # room -> (its links end)
        # seats held for approved stage guests not yet publishing (the gateway wires the desk)
        self.held_seats: Callable[[str], int] = lambda room: 0
        self._timer = DeadlineTimer(self.next_deadline, self.handle_timer, clock=clock)
        st = settings.stage
        self._mixer = MixerConfig(
            renditions=tuple(
                RenditionSpec(r.name, r.width, r.height, r.video_bitrate_kbps * 1000)
                for r in st.renditions
            ),
            fps=st.fps,
            gop=max(1, round(st.fps * st.keyframe_interval)),
            audio_bitrate=st.audio_bitrate_kbps * 1000,
            input_frames=st.input_queue_frames,
            transcode_ladder=st.transcode_ladder,
        )
        self.default_layout = LayoutSpec(
            background=parse_colour(st.background), placeholder_after=st.placeholder_after
        )

    @property
    def directors(self) -> dict[str, ProgramDirector]:
        """Room -> the director of its live program."""
        return {name: room.director for name, room in self.rooms.items()}

    # -- anchors arriving -------------------------------------------------------------------
    def stage_for(self, room: str) -> Stage:
        """The stage an anchor publishes to; a WHIP push creates it where settings allow."""
        stage = self.stages.get(room)
        if stage is None:
            if not self._settings.rooms.auto_create:
                raise NotFound(f"room {room!r} does not exist; create it through the API")
            stage = self.stages.ensure(room)
        return stage

    def seats_used(self, room: str) -> int:
        """The room's anchors (publishing or negotiating) and the anchors of other rooms
        linked onto its stage: what ``stage.max_anchors`` bounds."""
        stage = self.stages.get(room)
        program = self.rooms.get(room)
        return (len(stage.anchor_ids) if stage is not None else 0) + (
            len(program.guests) if program is not None else 0
        )

    def reserve(self, stage: Stage, anchor_id: str, *, check_capacity: bool = True) -> None:
        """Hold a place for an anchor across its negotiation (``release`` if that fails)."""
        used = self.seats_used(stage.room)
        if check_capacity and used >= self._settings.stage.max_anchors:
            raise Conflict(
                f"room {stage.room!r} already has {used} anchor(s) on its stage, its maximum",
                retry_after=self._settings.sessions.retry_after,
            )
        stage.anchor_ids.append(anchor_id)

    def release(self, room: str, anchor_id: str) -> None:
        """A reserved place whose negotiation failed. If that anchor was the one the program
        waited for (its grace ran out meanwhile, or it replaced its own dropped session), no
        one is left to end the program: end it now, or its viewers would hang on it."""
        stage = self.stages.get(room)
        if stage is not None and anchor_id in stage.anchor_ids:
            stage.anchor_ids.remove(anchor_id)
            program = self.rooms.get(room)
            orphaned = (
                program is not None
                and not program.anchors
                and not program.grace.running
                and not stage.anchor_ids
            )
            if program is not None and orphaned:
                self._end_stream(room, program.main, "anchor did not return")
            self.stages.discard_if_idle(room)

    def choose_codecs(
        self, stage: Stage, anchor_id: str, summary: OfferSummary
    ) -> dict[MediaKind, CodecSpec]:
        """The codecs to take from a new anchor: the live program's where offered. The program
        keeps its codecs while it lives; other anchors' codecs go through the mixer. A lone
        anchor with other codecs than the program's (reconnecting) starts a new program."""
        media = self._settings.media
        previous = stage.hub if stage.hub is not None and not stage.hub.closed.is_set() else None
        live = self.rooms.get(stage.room)
        others = [a for a in live.anchors if a != anchor_id] if live is not None else []
        codecs: dict[MediaKind, CodecSpec] = {}
        for kind, offered in summary.codecs.items():
            prefer = media.video_codecs if kind == "video" else ("opus",)
            if previous is not None and kind in previous.codecs:
                prefer = (previous.codecs[kind].name, *prefer)
            name = pick_codec(offered, prefer)
            codecs[kind] = CodecSpec(kind, name, CLOCK_RATES[kind])
        if previous is not None and not previous.compatible(codecs) and not others:
            self._end_stream(stage.room, previous, "source changed codecs")
        return codecs

    def joined(self, stage: Stage, anchor: RoomAnchor) -> None:
        """A negotiated anchor goes live: it feeds the room's program (a new one if none)."""
        room = stage.room
        program = self.rooms.get(room)
        resumed = program is not None
        if program is None:
            program = self._new_program(stage, anchor.hub.codecs)
        self._cancel_grace(program)
        program.anchors[anchor.id] = anchor
        self._layer_hubs(program, len(anchor_layers(anchor)))
        program.director.update(program.feeds())
        if not resumed:
            self.stages.set_hub(room, program.main)
        who = {"room": room, "anchor_id": anchor.id, "subject": anchor.subject}
        self._events("anchor.joined", {**who, "resumed": resumed})
        if not resumed:
            codecs = anchor.hub.codecs
            self._events(
                "stream.started", {"room": room, "codecs": {k: c.name for k, c in codecs.items()}}
            )

    def _new_program(self, stage: Stage, codecs: dict[MediaKind, CodecSpec]) -> Room:
        """The room's program hubs (one per rendition, same codecs) and their director."""
        media = self._settings.media
        room = stage.room
        hubs: dict[str, FanoutHub] = {}
        for i, r in enumerate(self._mixer.renditions):
            hubs[r.name] = FanoutHub(
                StreamKey(room, rendition=None if i == 0 else r.name),
                codecs,
                keyframe_interval=media.keyframe_interval,
                video_queue_frames=media.video_queue_frames,
                audio_queue_frames=media.audio_queue_frames,
                gop_cache_bytes=media.gop_cache_kb * 1024,
            )
        stage.renditions = hubs
        default = self.default_layout
        director = ProgramDirector(
            room,
            hubs,
            self._mixer,
            layout=lambda: stage.layout or default,
            controls=lambda: stage.audio,
            mixminus_hub=self._mixminus_hub_factory(room)
            if self._settings.stage.mix_minus
            else None,
        )
        program = self.rooms[room] = Room(stage, director, self._settings.sessions.reconnect_grace)
        return program

    def _layer_hubs(self, program: Room, count: int) -> None:
        """Program hubs for a simulcast anchor's layers beyond the configured renditions."""
        names = layer_names([r.name for r in self._mixer.renditions], count)
        extra = names[len(self._mixer.renditions) :]
        if not extra:
            return
        media = self._settings.media
        room = program.stage.room
        codecs = program.main.codecs

        def make(name: str) -> FanoutHub:
            return FanoutHub(
                StreamKey(room, rendition=name),
                codecs,
                keyframe_interval=media.keyframe_interval,
                video_queue_frames=media.video_queue_frames,
                audio_queue_frames=media.audio_queue_frames,
            )

        program.director.add_layer_hubs(extra, make)
        program.stage.renditions = dict(program.director.hubs)

    def _mixminus_hub_factory(self, room: str) -> Callable[[str], FanoutHub]:
        media = self._settings.media

        def make(anchor_id: str) -> FanoutHub:
            return FanoutHub(
                StreamKey(room, mixminus=anchor_id),
                {"audio": CodecSpec("audio", "opus", CLOCK_RATES["audio"])},
                keyframe_interval=media.keyframe_interval,
                audio_queue_frames=media.audio_queue_frames,
            )

        return make

    # -- anchors leaving --------------------------------------------------------------------
    def left(self, anchor: RoomAnchor, reason: str) -> None:
        """An anchor's session ended for ``reason``. The last one to go ends the stream at once
        when the end was meant (``FINAL_REASONS``), hands over when it was replaced, and
        otherwise holds the program for the reconnect grace."""
        room = anchor.room
        stage = self.stages.get(room)
        if stage is not None and anchor.id in stage.anchor_ids:
            stage.anchor_ids.remove(anchor.id)
        program = self.rooms.get(room)
        if program is not None:
            program.anchors.pop(anchor.id, None)
        hub = stage.hub if stage is not None else None
        live = hub is not None and not hub.closed.is_set()
        remaining = list(program.anchors.values()) if program is not None else []
        if program is not None and live:
            program.director.update(program.feeds())
        if stage is not None and hub is not None and live and not remaining:
            grace = self._settings.sessions.reconnect_grace
            if reason == "replaced":
                hub.detach_source()  # the new session attaches at once
            elif reason in FINAL_REASONS or grace <= 0 or program is None:
                self._end_stream(room, hub, reason)
            else:
                hub.detach_source()
                program.awaited = anchor
                program.grace.start(self._clock(), reason)
                self._timer.rearm()
        who = {"room": room, "anchor_id": anchor.id, "subject": anchor.subject}
        self._events("anchor.left", {**who, "reason": reason})

    def next_deadline(self) -> float | None:
        """When the first reconnect grace runs out; None: none is running."""
        deadlines = [d for r in self.rooms.values() if (d := r.grace.next_deadline()) is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """End the programs whose reconnect grace ran out by ``now`` with no anchor back."""
        for program in list(self.rooms.values()):
            reason = program.grace.handle_timer(now)
            if reason is None:
                continue
            program.awaited = None
            room = program.stage.room
            stage = self.stages.get(room)
            if stage is not None and stage.hub is program.main and stage.anchor_id is None:
                self._end_stream(room, program.main, reason)

    def awaited(self, room: str, anchor_id: str) -> RoomAnchor | None:
        """The anchor whose dropped connection the room's grace waits for, if ``anchor_id``."""
        program = self.rooms.get(room)
        awaited = program.awaited if program is not None else None
        return awaited if awaited is not None and awaited.id == anchor_id else None

    def give_up(self, room: str, anchor_id: str, reason: str) -> None:
        """The awaited anchor will not come back (its DELETE came after its connection
        dropped): the stream ends now, not when the grace runs out."""
        program = self.rooms.get(room)
        if program is not None and self.awaited(room, anchor_id) is not None:
            self._end_stream(room, program.main, reason)

    def _cancel_grace(self, program: Room) -> None:
        program.awaited = None
        if program.grace.running:
            program.grace.cancel()
            self._timer.rearm()

    # -- the end ----------------------------------------------------------------------------
    def end(self, room: str, reason: str) -> None:
        """End the room's program now (its anchors are gone or going)."""
        stage = self.stages.get(room)
        if stage is not None and stage.hub is not None:
            self._end_stream(room, stage.hub, reason)

    def _end_stream(self, room: str, hub: FanoutHub, reason: str) -> None:
        """The program ends for its viewers: their tracks end and their sessions close."""
        program = self.rooms.get(room)
        hubs = [hub]
        if program is not None:
            self._cancel_grace(program)
            if program.main is hub:
                del self.rooms[room]
                director = program.director
                director.close()  # its mixer thread (if any) ends on its own; joined at shutdown
                self._retired = [d for d in self._retired if d.busy]
                self._retired.append(director)
                hubs = list(director.hubs.values())
        for h in hubs:
            h.close()
            self.finished.add_requests(h)
        stage = self.stages.get(room)
        if stage is not None and stage.hub is hub:
            stage.renditions = {}
            self.stages.set_hub(room, None)
            self.stages.discard_if_idle(room)
        duration = round(time.monotonic() - hub.started_at, 3)
        self._events("stream.ended", {"room": room, "reason": reason, "duration_s": duration})
        if program is not None and program.main is hub:
            for listener in list(self.program_ended):
                listener(room)

    # -- guests: anchors of other rooms linked into a room's program (stage/links.py) -------
    def add_guest(self, room: str, feed: AnchorFeed) -> None:
        """Put ``feed`` on the room's stage (a tile and its audio in the program)."""
        program = self.rooms.get(room)
        if program is None or not program.anchors:
            raise Conflict(f"room {room!r} is not live here", retry_after=1)
        if feed.id in program.guests or feed.id in program.anchors:
            raise Conflict(f"anchor {feed.id!r} is already on the stage of room {room!r}")
        # a seat held for an approved stage guest is not given to a link
        if self.seats_used(room) + self.held_seats(room) >= self._settings.stage.max_anchors:
            raise Conflict(f"the stage of room {room!r} is full")
        program.guests[feed.id] = feed
        program.director.update(program.feeds())

    def remove_guest(self, room: str, guest_id: str) -> None:
        program = self.rooms.get(room)
        if program is not None and program.guests.pop(guest_id, None) is not None:
            program.director.update(program.feeds())

    # -- what viewers can pull --------------------------------------------------------------
    def anchor(self, room: str, anchor_id: str) -> RoomAnchor:
        """A live anchor of the room (404 otherwise)."""
        program = self.rooms.get(room)
        anchor = program.anchors.get(anchor_id) if program is not None else None
        if anchor is None:
            raise NotFound("no such anchor session")
        return anchor

    def anchor_hub(self, room: str, anchor_id: str, layer: str | None = None) -> FanoutHub | None:
        """An anchor's own stream, for co-hosts pulling ``/whep/{room}?anchor={id}``; with
        ``layer`` (``&rendition=``) that simulcast layer of it (names as the program's)."""
        program = self.rooms.get(room)
        anchor = program.anchors.get(anchor_id) if program is not None else None
        if anchor is None:
            return None
        if layer is None:
            return anchor.hub
        layers = anchor_layers(anchor)
        names = layer_names([r.name for r in self._mixer.renditions], len(layers))
        return layers[names.index(layer)] if layer in names else None

    def anchor_hubs(self, room: str) -> dict[str, FanoutHub]:
        """The room's live anchors' own hubs by anchor id (recordings of each anchor)."""
        program = self.rooms.get(room)
        return {a.id: a.hub for a in program.anchors.values()} if program is not None else {}

    def mixminus_hub(self, room: str, anchor_id: str, subject: str | None) -> FanoutHub | None:
        """An anchor's mix-minus (everyone else's audio), for ``/whep/{room}?mixminus={id}``.
        ``subject`` is the requester's anchor-token subject (a POST's or a HEAD's), which must
        be that anchor's own. None when the anchor or its feed is not there."""
        program = self.rooms.get(room)
        anchor = program.anchors.get(anchor_id) if program is not None else None
        if program is None or anchor is None:
            return None
        if subject is not None and subject != anchor.subject:
            raise Forbidden("a mix-minus is for its own anchor: use that anchor's token")
        return program.director.mixminus.get(anchor_id)

    def ladder(self, room: str, hub: FanoutHub) -> list[LadderLayer]:
        """The room's ladder ``hub`` is a layer of, top first, while the room is mixed or passes
        a simulcast anchor through (or runs its transcode ladder): a single stream passed
        through is in every rendition, nothing to switch between. Each layer's nominal bitrate:
        its video's plus the audio's (the layer selector measures it while someone takes it)."""
        program = self.rooms.get(room)
        if program is None:
            return []
        director = program.director
        lone = director.lone
        layered = director.ladder is not None or (lone is not None and len(anchor_layers(lone)) > 1)
        if director.mode != "mixed" and not layered:
            return []
        hubs = director.hubs  # main program first, then down the ladder
        if hub not in hubs.values():
            return []
        audio = self._mixer.audio_bitrate
        nominal = {r.name: r.video_bitrate + audio for r in self._mixer.renditions}
        return [LadderLayer(name, h, nominal.get(name)) for name, h in hubs.items()]

    def layers(self, room: str) -> list[tuple[str, LayerState]]:
        """The simulcast layers of the room's program (a lone simulcast anchor passed through),
        highest first, with the rendition name each is watched under; [] otherwise."""
        program = self.rooms.get(room)
        lone = program.director.lone if program is not None else None
        outputs = getattr(lone, "simulcast", None)
        if not isinstance(outputs, LayerOutputs):
            return []
        names = layer_names([r.name for r in self._mixer.renditions], len(outputs.hubs))
        states = outputs.layers.snapshot(self._clock())
        return list(zip(names, states, strict=True))

    def add_live_requests(self, total: IngressTotals) -> None:
        """Fold the live programs' keyframe requests into ``total``."""
        for program in self.rooms.values():
            for hub in program.director.hubs.values():
                if not hub.closed.is_set():
                    total.add_requests(hub)

    async def shutdown(self) -> None:
        """After the anchors have gone: stop every timer and wait for the mixer threads."""
        self._timer.cancel()
        for name, program in list(self.rooms.items()):
            program.grace.cancel()
            del self.rooms[name]
            self._retired.append(program.director)
        retired, self._retired = self._retired, []
        for director in retired:
            await director.aclose()
