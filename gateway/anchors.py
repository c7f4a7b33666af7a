"""Anchor sessions (WHIP): one recvonly peer connection per anchor, tapped into the room's hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError, OperationError

from relay.auth.access import Grant
from relay.errors import Conflict, Forbidden, NotFound, Unprocessable
from relay.media.frames import CodecSpec, MediaKind
from relay.media.hub import FanoutHub
from relay.rtc.ingest import IngestSet, TrackIngest
from relay.rtc.peer import (
    CLOSED_STATES,
    apply_trickle,
    close_quietly,
    codec_preferences,
    rtc_configuration,
)
from relay.rtc.sdp import OfferSummary, TrickleFragment, pick_codec, strip_mdns_candidates
from relay.rtc.session_ids import new_etag, new_session_id

from .mixer.anchor_hub import AnchorHub
from .mixer.director import MixerConfig, ProgramDirector
from .mixer.layout import LayoutSpec, parse_colour
from .mixer.program import RenditionSpec
from .settings import Settings
from .stages import Stage, StageTable

log = logging.getLogger(__name__)

CLOCK_RATES = {"video": 90000, "audio": 48000}

EventSink = Callable[[str, dict[str, Any]], None]

# Ends after which viewers are told at once; any other (network) end gets the reconnect grace.
FINAL_REASONS = frozenset({"deleted", "kicked", "room closed", "shutdown"})


@dataclass(eq=False)
class AnchorSession:
    id: str
    room: str
    grant: Grant
    pc: RTCPeerConnection
    hub: AnchorHub  # the anchor's own stream (co-hosts pull it); the program is the stage's hub
    etag: str
    ingests: IngestSet = field(default_factory=IngestSet)
    created_at: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    ended_reason: str | None = None
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def request_keyframe(self) -> None:
        self.ingests.request_keyframe()

    @property
    def last_media_at(self) -> float | None:
        return self.ingests.last_media_at


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


class AnchorService:
    """Owns every anchor session of this node, each anchor's own hub, and the room's program
    hubs (one per rendition) with their director (passthrough or mixer) while the room is live."""

    def __init__(
        self, settings: Settings, stages: StageTable, events: EventSink | None = None
    ) -> None:
        self._settings = settings
        self._stages = stages
        self._events: EventSink = events or (lambda kind, data: None)
        self.sessions: dict[str, AnchorSession] = {}
        self.finished = IngressTotals()
        self._grace: dict[str, asyncio.Task[None]] = {}
        self.directors: dict[str, ProgramDirector] = {}
        self._retired: list[ProgramDirector] = []  # closed, their threads maybe still ending
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
        )
        self.default_layout = LayoutSpec(
            background=parse_colour(st.background), placeholder_after=st.placeholder_after
        )

    async def open(
        self, room: str, offer_sdp: str, summary: OfferSummary, grant: Grant
    ) -> AnchorSession:
        stage = self._stages.get(room)
        if stage is None:
            if not self._settings.rooms.auto_create:
                raise NotFound(f"room {room!r} does not exist; create it through the API")
            stage = self._stages.ensure(room)
        same = next((s for s in self.in_room(room) if s.grant.subject == grant.subject), None)
        if same is not None:
            # The same anchor publishing again (its network dropped before we noticed): the new
            # session takes over and viewers stay.
            await self.close(room, same.id, reason="replaced")
        elif len(stage.anchor_ids) >= self._settings.stage.max_anchors:
            raise Conflict(
                f"room {room!r} already has {len(stage.anchor_ids)} live anchor(s), its maximum",
                retry_after=self._settings.sessions.retry_after,
            )
        sid = new_session_id()
        stage.anchor_ids.append(sid)  # reserve a place across the awaits below
        media = self._settings.media
        previous = stage.hub if stage.hub is not None and not stage.hub.closed.is_set() else None
        others = [s for s in self.in_room(room) if s.id != sid]
        codecs: dict[MediaKind, CodecSpec] = {}
        for kind, offered in summary.codecs.items():
            prefer = media.video_codecs if kind == "video" else ("opus",)
            if previous is not None and kind in previous.codecs:
                prefer = (previous.codecs[kind].name, *prefer)
            name = pick_codec(offered, prefer)
            codecs[kind] = CodecSpec(kind, name, CLOCK_RATES[kind])
        # The program keeps its codecs while it lives; other anchors' codecs go through the
        # mixer. A lone anchor with other codecs than the program's (reconnecting) starts anew.
        program: FanoutHub | None = None
        if previous is not None and (previous.compatible(codecs) or others):
            program = previous
        elif previous is not None:
            self._end_stream(room, previous, "source changed codecs")
        hub = AnchorHub(
            f"{room}/{sid}",
            codecs,
            keyframe_interval=media.keyframe_interval,
            video_queue_frames=media.video_queue_frames,
            audio_queue_frames=media.audio_queue_frames,
        )
        pc = RTCPeerConnection(rtc_configuration(self._settings.ice_servers))
        session = AnchorSession(sid, room, grant, pc, hub, new_etag())
        try:
            for kind, spec in codecs.items():
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(codec_preferences(kind, spec.name, receiving=True))
                session.ingests[kind] = TrackIngest(
                    kind, transceiver.receiver, hub, max_wait=media.reassembly_wait
                )
            await pc.setRemoteDescription(
                RTCSessionDescription(strip_mdns_candidates(offer_sdp), "offer")
            )
            await pc.setLocalDescription(await pc.createAnswer())
        except (OperationError, InvalidStateError, ValueError) as exc:
            await self._abort(stage.room, sid, pc)
            raise Unprocessable(f"offer could not be negotiated: {exc}") from exc
        except BaseException:
            await self._abort(stage.room, sid, pc)
            raise
        resumed = program is not None
        self._cancel_grace(room)
        hub.attach_source(session.request_keyframe)
        self.sessions[sid] = session
        if program is None:
            program = self._new_program(stage, codecs)
        self.directors[room].update(self.in_room(room))
        if not resumed:
            self._stages.set_hub(room, program)
        pc.on("connectionstatechange", lambda: self._on_state(session))
        session.task = asyncio.create_task(self._watch(session), name=f"anchor-{sid}")
        ctx = {"room": room, "session": sid, "subject": grant.subject, "event": "anchor.joined"}
        log.info(
            "anchor %s (%s) live in room %s with %s", sid, grant.subject, room, codecs, extra=ctx
        )
        who = {"room": room, "anchor_id": sid, "subject": grant.subject}
        self._events("anchor.joined", {**who, "resumed": resumed})
        if not resumed:
            self._events(
                "stream.started", {"room": room, "codecs": {k: c.name for k, c in codecs.items()}}
            )
        return session

    def _new_program(self, stage: Stage, codecs: dict[MediaKind, CodecSpec]) -> FanoutHub:
        """The room's program hubs (one per rendition, same codecs) and their director."""
        media = self._settings.media
        room = stage.room
        hubs: dict[str, FanoutHub] = {}
        for i, r in enumerate(self._mixer.renditions):
            hubs[r.name] = FanoutHub(
                room if i == 0 else f"{room}?rendition={r.name}",
                codecs,
                keyframe_interval=media.keyframe_interval,
                video_queue_frames=media.video_queue_frames,
                audio_queue_frames=media.audio_queue_frames,
            )
        stage.renditions = hubs
        default = self.default_layout
        self.directors[room] = ProgramDirector(
            room,
            hubs,
            self._mixer,
            layout=lambda: stage.layout or default,
            controls=lambda: stage.audio,
            mixminus_hub=self._mixminus_hub_factory(room)
            if self._settings.stage.mix_minus
            else None,
        )
        return next(iter(hubs.values()))

    def _mixminus_hub_factory(self, room: str) -> Callable[[str], FanoutHub]:
        media = self._settings.media

        def make(anchor_id: str) -> FanoutHub:
            return FanoutHub(
                f"{room}?mixminus={anchor_id}",
                {"audio": CodecSpec("audio", "opus", CLOCK_RATES["audio"])},
                keyframe_interval=media.keyframe_interval,
                audio_queue_frames=media.audio_queue_frames,
            )

        return make

    def anchor_hub(self, room: str, anchor_id: str) -> FanoutHub | None:
        """An anchor's own stream, for co-hosts pulling ``/whep/{room}?anchor={id}``."""
        session = self.sessions.get(anchor_id)
        return session.hub if session is not None and session.room == room else None

    def lower_rendition(self, room: str, hub: FanoutHub) -> FanoutHub | None:
        """The hub of the rendition below ``hub`` while the room is mixed (passthrough carries
        the anchor's own stream in every rendition: nothing lower to fall back to)."""
        return self._neighbour_rendition(room, hub, +1, mixed_only=True)

    def higher_rendition(self, room: str, hub: FanoutHub) -> FanoutHub | None:
        """The hub of the rendition above ``hub`` (a viewer that fell back, trying again)."""
        return self._neighbour_rendition(room, hub, -1, mixed_only=False)

    def _neighbour_rendition(
        self, room: str, hub: FanoutHub, step: int, *, mixed_only: bool
    ) -> FanoutHub | None:
        director = self.directors.get(room)
        if director is None or (mixed_only and director.mode != "mixed"):
            return None
        hubs = list(director.hubs.values())  # main program first, then down the ladder
        if hub not in hubs:
            return None
        i = hubs.index(hub) + step
        return hubs[i] if 0 <= i < len(hubs) else None

    def mixminus_hub(self, room: str, anchor_id: str, subject: str | None) -> FanoutHub | None:
        """An anchor's mix-minus (everyone else's audio), for ``/whep/{room}?mixminus={id}``.
        ``subject`` is the requester's anchor-token subject, which must be that anchor's own
        (None: a liveness probe, HEAD). None when the anchor or its feed is not there."""
        session = self.sessions.get(anchor_id)
        if session is None or session.room != room:
            return None
        if subject is not None and subject != session.grant.subject:
            raise Forbidden("a mix-minus is for its own anchor: use that anchor's token")
        director = self.directors.get(room)
        return director.mixminus.get(anchor_id) if director is not None else None

    async def _abort(self, room: str, sid: str, pc: RTCPeerConnection) -> None:
        stage = self._stages.get(room)
        if stage is not None and sid in stage.anchor_ids:
            stage.anchor_ids.remove(sid)
            self._stages.discard_if_idle(room)
        await close_quietly(pc)

    def _on_state(self, session: AnchorSession) -> None:
        state = session.pc.connectionState
        if state == "connected" and session.connected_at is None:
            session.connected_at = time.monotonic()
        elif state in CLOSED_STATES:
            session.ended_reason = session.ended_reason or f"connection {state}"
            session.stop.set()

    async def _watch(self, session: AnchorSession) -> None:
        """Ends the session on DELETE, ICE failure, connect timeout or media silence."""
        cfg = self._settings.sessions
        try:
            while not session.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.stop.wait(), 0.5)
                now = time.monotonic()
                if session.connected_at is None:
                    if now - session.created_at > cfg.connect_timeout:
                        session.ended_reason = "never connected"
                        break
                    continue
                last = session.last_media_at or session.connected_at
                if now - last > cfg.anchor_media_timeout:
                    session.ended_reason = "media timeout"
                    break
        except asyncio.CancelledError:
            session.ended_reason = session.ended_reason or "shutdown"
        finally:
            await self._teardown(session)

    async def _teardown(self, session: AnchorSession) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        stage = self._stages.get(session.room)
        reason = session.ended_reason or "unknown"
        if stage is not None and session.id in stage.anchor_ids:
            stage.anchor_ids.remove(session.id)
        session.hub.close()  # co-hosts pulling this anchor see its end
        self.finished.add_hub(session.hub)
        hub = stage.hub if stage is not None else None
        remaining = self.in_room(session.room)
        director = self.directors.get(session.room)
        if director is not None and hub is not None and not hub.closed.is_set():
            director.update(remaining)
        if stage is not None and hub is not None and not hub.closed.is_set() and not remaining:
            grace = self._settings.sessions.reconnect_grace
            if reason == "replaced":
                hub.detach_source()  # the new session attaches at once
            elif reason in FINAL_REASONS or grace <= 0:
                self._end_stream(session.room, hub, reason)
            else:
                hub.detach_source()
                self._grace[session.room] = asyncio.create_task(
                    self._grace_period(session.room, hub, grace, reason),
                    name=f"grace-{session.room}",
                )
        self.finished.sessions += 1
        await close_quietly(session.pc)
        ctx = {"room": session.room, "session": session.id, "event": "anchor.left"}
        log.info(
            "anchor %s left room %s: %s", session.id, session.room, session.ended_reason, extra=ctx
        )
        who = {"room": session.room, "anchor_id": session.id, "subject": session.grant.subject}
        self._events("anchor.left", {**who, "reason": reason})

    async def _grace_period(self, room: str, hub: FanoutHub, grace: float, reason: str) -> None:
        """Viewers keep their connection (a frozen picture) while the anchor may come back."""
        try:
            await asyncio.sleep(grace)
        except asyncio.CancelledError:
            return
        if self._grace.get(room) is asyncio.current_task():
            del self._grace[room]
        stage = self._stages.get(room)
        if stage is not None and stage.hub is hub and stage.anchor_id is None:
            self._end_stream(room, hub, f"{reason}; no reconnect within {grace:g} s")

    def _cancel_grace(self, room: str) -> None:
        task = self._grace.pop(room, None)
        if task is not None:
            task.cancel()

    def _end_stream(self, room: str, hub: FanoutHub, reason: str) -> None:
        """The program ends for its viewers: their tracks end and their sessions close."""
        self._cancel_grace(room)
        director = self.directors.get(room)
        hubs = [hub]
        if director is not None and director.main is hub:
            del self.directors[room]
            director.close()  # its mixer thread (if any) ends on its own; joined at shutdown
            self._retired = [d for d in self._retired if d.busy]
            self._retired.append(director)
            hubs = list(director.hubs.values())
        for h in hubs:
            h.close()
            self.finished.add_requests(h)
        stage = self._stages.get(room)
        if stage is not None and stage.hub is hub:
            stage.renditions = {}
            self._stages.set_hub(room, None)
            self._stages.discard_if_idle(room)
        duration = round(time.monotonic() - hub.started_at, 3)
        self._events("stream.ended", {"room": room, "reason": reason, "duration_s": duration})

    def ingress(self) -> IngressTotals:
        """Totals so far, live anchors included."""
        f = self.finished
        total = IngressTotals(
            f.sessions, f.frames, f.bytes, f.keyframe_requests, f.keyframe_requests_coalesced
        )
        for session in self.sessions.values():
            if not session.hub.closed.is_set():
                total.add_hub(session.hub)
        for director in self.directors.values():
            for hub in director.hubs.values():
                if not hub.closed.is_set():
                    total.add_requests(hub)
        return total

    def in_room(self, room: str) -> list[AnchorSession]:
        return [s for s in self.sessions.values() if s.room == room]

    def get(self, room: str, session_id: str) -> AnchorSession:
        session = self.sessions.get(session_id)
        if session is None or session.room != room:
            raise NotFound("no such anchor session")
        return session

    async def close(self, room: str, session_id: str, reason: str = "deleted") -> None:
        session = self.get(room, session_id)
        session.ended_reason = session.ended_reason or reason
        session.stop.set()
        if session.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await session.task

    async def close_room(self, room: str, reason: str = "room closed") -> list[AnchorSession]:
        """End every anchor of the room and its program at once; returns the ended sessions."""
        ended = self.in_room(room)
        for session in ended:
            await self.close(room, session.id, reason=reason)
        stage = self._stages.get(room)
        if stage is not None and stage.hub is not None:
            self._end_stream(room, stage.hub, reason)
        return ended

    async def trickle(self, session: AnchorSession, frag: TrickleFragment) -> None:
        await apply_trickle(session.pc, frag)

    async def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            session.ended_reason = "shutdown"
            session.stop.set()
        tasks = [s.task for s in self.sessions.values() if s.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in list(self._grace.values()):
            task.cancel()
        await asyncio.gather(*self._grace.values(), return_exceptions=True)
        self._grace.clear()
        for room, director in list(self.directors.items()):
            del self.directors[room]
            self._retired.append(director)
        retired, self._retired = self._retired, []
        for director in retired:
            await director.aclose()
