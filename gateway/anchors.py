"""Anchor sessions (WHIP): one recvonly peer connection per anchor, tapped into its own hub.

The session's lifecycle (connect timeout, media timeout) runs on ``relay.rtc.lifecycle``; what
the anchor's arrival and departure mean for the room's program is ``gateway.stage.room``'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection

from relay.auth.access import Grant
from relay.errors import Conflict, NotFound, Unprocessable
from relay.media.frames import MediaKind
from relay.media.lifecycle import SessionLifecycle
from relay.media.nack_tracker import NackPolicy
from relay.media.repair_wait import RepairWaitPolicy
from relay.media.simulcast import LayerOutputs, LayerState, SimulcastLayers
from relay.media.stream_key import StreamKey
from relay.rtc.candidates import node_policy
from relay.rtc.ingest import AudioFan, IngestSet, SimulcastIngest, TrackIngest
from relay.rtc.lifecycle import PeerLifecycle
from relay.rtc.peer import (
    answer_offer,
    apply_trickle,
    close_quietly,
    codec_preferences,
)
from relay.rtc.sdp import OfferSummary, TrickleFragment, strip_mdns_candidates
from relay.rtc.session_ids import new_etag, new_session_id
from relay.rtc.transport import NodeTransport
from relay.rtc.transport_cc import TransportCcFeedback

from .settings import Settings, transport_config
from .stage.anchor_hub import AnchorHub
from .stage.room import FINAL_REASONS, IngressTotals, RoomService
from .stage.selection import layer_names

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AnchorSession:
    id: str
    room: str
    grant: Grant
    pc: RTCPeerConnection
    hub: AnchorHub  # the anchor's own stream (co-hosts pull it); the program is the room's
    etag: str
    life: PeerLifecycle  # connect timeout, media timeout, end reason
    ingests: IngestSet = field(default_factory=IngestSet)
    # a meant end (DELETE, kick) asked for after the connection dropped but before the
    # teardown ran: it wins over the drop, so the room ends the stream without a grace
    final_reason: str | None = None
    # transport-cc feedback to the anchor (None: off by settings); .negotiated if it offered it
    congestion: TransportCcFeedback | None = None
    # simulcast: one hub per layer, highest first (``hub`` is the first), fed by ``simulcast``
    layer_hubs: tuple[AnchorHub, ...] = ()
    layer_names: tuple[str, ...] = ()
    simulcast: LayerOutputs | None = None

    @property
    def layers(self) -> tuple[AnchorHub, ...]:
        """The anchor's streams, highest first: its simulcast layers, or its one stream."""
        return self.layer_hubs or (self.hub,)

    def layer(self, name: str | None) -> AnchorHub | None:
        """The hub of the layer ``name`` (None: the top one, the anchor's own stream)."""
        if name is None:
            return self.hub
        names = self.layer_names
        return self.layer_hubs[names.index(name)] if name in names else None

    def set_muted(self, kind: MediaKind, muted: bool) -> None:
        for hub in self.layers:
            if kind in hub.codecs:
                hub.set_muted(kind, muted)

    @property
    def subject(self) -> str:
        return self.grant.subject

    @property
    def connected_at(self) -> float | None:
        return self.life.connected_at

    @property
    def ended_reason(self) -> str | None:
        return self.life.ended

    def request_keyframe(self) -> None:
        if self.simulcast is not None:  # the top layer's (what the mixer decodes), coalesced
            self.hub.request_keyframe()
        else:
            self.ingests.request_keyframe()

    @property
    def last_media_at(self) -> float | None:
        return self.ingests.last_media_at


class AnchorService:
    """Owns every anchor session of this node and each anchor's own hub; tells the room
    (``RoomService``) when an anchor goes live and when it leaves."""

    def __init__(
        self, settings: Settings, rooms: RoomService, transport: NodeTransport | None = None
    ) -> None:
        self._settings = settings
        self._transport = transport or NodeTransport(transport_config(settings))
        self._rooms = rooms
        self.candidates = node_policy(  # remote ICE candidates an anchor may give
            settings.limits.max_remote_candidates, settings.port, settings.cluster.redis_url
        )
        self.sessions: dict[str, AnchorSession] = {}
        self.finished = IngressTotals()

    async def open(
        self, room: str, offer_sdp: str, summary: OfferSummary, grant: Grant
    ) -> AnchorSession:
        rooms = self._rooms
        stage = rooms.stage_for(room)
        same = next((s for s in self.in_room(room) if s.grant.subject == grant.subject), None)
        if same is not None:
            # The same anchor publishing again (its network dropped before we noticed): the new
            # session takes over and viewers stay.
            await self.close(room, same.id, reason="replaced")
        sid = new_session_id()
        rooms.reserve(stage, sid, check_capacity=same is None)  # a place across the awaits
        try:
            codecs = rooms.choose_codecs(stage, sid, summary)
        except Unprocessable:  # a refusal takes no place and leaves no room behind
            rooms.release(room, sid)
            raise
        media = self._settings.media
        simulcast = summary.simulcast if "video" in codecs else None
        names = layer_names(
            [r.name for r in self._settings.stage.renditions],
            len(simulcast.rids) if simulcast is not None else 1,
        )

        def anchor_hub(rank: int) -> AnchorHub:
            return AnchorHub(
                StreamKey(room, rendition=names[rank] if rank else None, anchor=sid),
                codecs,
                keyframe_interval=media.keyframe_interval,
                video_queue_frames=media.video_queue_frames,
                audio_queue_frames=media.audio_queue_frames,
                gop_cache_bytes=media.gop_cache_kb * 1024,
            )

        hub = anchor_hub(0)
        pc = self._transport.peer_connection()
        cfg = self._settings.sessions
        timers = SessionLifecycle(
            time.monotonic(), cfg.connect_timeout, media_timeout=cfg.anchor_media_timeout
        )
        session = AnchorSession(sid, room, grant, pc, hub, new_etag(), PeerLifecycle(pc, timers))
        if media.anchor_transport_cc:
            session.congestion = TransportCcFeedback(interval=media.anchor_feedback_interval)
        if simulcast is not None:
            session.layer_hubs = (hub, *(anchor_hub(r) for r in range(1, len(names))))
            session.layer_names = tuple(names)
            session.simulcast = LayerOutputs(
                SimulcastLayers(simulcast.rids, stale_after=media.layer_stale_after),
                session.layer_hubs,
                keyframe_interval=media.keyframe_interval,
            )
        nacks = repair = None
        if media.anchor_nack_tries > 1:  # asked again until the frame is skipped
            nacks = NackPolicy(max_tries=media.anchor_nack_tries, budget=media.reassembly_wait)
            if media.anchor_repair_wait_max > media.reassembly_wait:
                repair = RepairWaitPolicy(
                    floor=media.reassembly_wait, cap=media.anchor_repair_wait_max
                )
        try:
            for kind, spec in codecs.items():
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(codec_preferences(kind, spec.name, receiving=True))
                receiver, wait = transceiver.receiver, media.reassembly_wait
                outputs = session.simulcast
                if outputs is None:
                    session.ingests[kind] = TrackIngest(
                        kind, receiver, hub, max_wait=wait, nacks=nacks, repair=repair
                    )
                elif kind == "video":
                    session.ingests[kind] = SimulcastIngest(
                        receiver, outputs, max_wait=wait, nacks=nacks, repair=repair
                    )
                else:
                    session.ingests[kind] = TrackIngest(
                        kind, receiver, AudioFan(outputs), max_wait=wait
                    )
            await answer_offer(
                pc,
                strip_mdns_candidates(offer_sdp),
                self.candidates,
                prepare=lambda pc: self._prepare_answer(pc, session),
                simulcast=simulcast,
            )
        except BaseException:
            await self._abort(stage.room, sid, pc)
            raise
        if session.simulcast is None:  # a simulcast output attaches its layer when one is live
            hub.attach_source(session.request_keyframe)
        self.sessions[sid] = session
        rooms.joined(stage, session)
        # ends on DELETE, ICE failure, connect timeout or media silence
        session.life.start(
            f"anchor-{sid}", lambda: self._teardown(session), media=lambda: session.last_media_at
        )
        ctx = {"room": room, "session": sid, "subject": grant.subject, "event": "anchor.joined"}
        log.info(
            "anchor %s (%s) live in room %s with %s", sid, grant.subject, room, codecs, extra=ctx
        )
        return session

    async def _prepare_answer(self, pc: RTCPeerConnection, session: AnchorSession) -> None:
        if session.congestion is not None:
            session.congestion.negotiate(pc)
        await self._transport.prepare_answer(pc)

    async def _abort(self, room: str, sid: str, pc: RTCPeerConnection) -> None:
        self._rooms.release(room, sid)
        await close_quietly(pc)

    async def _teardown(self, session: AnchorSession) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        reason = session.final_reason or session.ended_reason or "unknown"
        for layer in session.layers:
            layer.close()  # co-hosts pulling this anchor see its end
            self.finished.add_hub(layer)
        self._rooms.left(session, reason)
        self.finished.sessions += 1
        await close_quietly(session.pc)
        if session.congestion is not None:
            await session.congestion.stop()
        ctx = {"room": session.room, "session": session.id, "event": "anchor.left"}
        log.info("anchor %s left room %s: %s", session.id, session.room, reason, extra=ctx)

    def ingress(self) -> IngressTotals:
        """Totals so far, live anchors and programs included."""
        f, p = self.finished, self._rooms.finished
        total = IngressTotals(
            f.sessions,
            f.frames,
            f.bytes,
            f.keyframe_requests + p.keyframe_requests,
            f.keyframe_requests_coalesced + p.keyframe_requests_coalesced,
        )
        for session in self.sessions.values():
            for layer in session.layers:
                if not layer.closed.is_set():
                    total.add_hub(layer)
        self._rooms.add_live_requests(total)
        return total

    def layers(self, room: str) -> list[tuple[str, LayerState]]:
        """The room program's simulcast layers with their rendition names (RoomService.layers)."""
        return self._rooms.layers(room)

    def in_room(self, room: str) -> list[AnchorSession]:
        return [s for s in self.sessions.values() if s.room == room]

    def get(self, room: str, session_id: str) -> AnchorSession:
        """A live session, or one whose connection dropped while its room waits for it (the
        reconnect grace): still a resource a DELETE ends (RFC 9725)."""
        session = self.sessions.get(session_id)
        if session is None:
            awaited = self._rooms.awaited(room, session_id)
            session = awaited if isinstance(awaited, AnchorSession) else None
        if session is None or session.room != room:
            raise NotFound("no such anchor session")
        return session

    async def close(self, room: str, session_id: str, reason: str = "deleted") -> None:
        session = self.get(room, session_id)
        if session.id not in self.sessions:
            # Its connection already dropped and the room waits for it: the anchor says it
            # will not come back (a client that closes its peer connection before DELETE, like
            # Medooze's whip.js), so the stream ends now instead of after the grace.
            self._rooms.give_up(room, session.id, reason)
            return
        if reason in FINAL_REASONS:
            session.final_reason = reason
        await session.life.stop(reason)

    async def close_room(self, room: str, reason: str = "room closed") -> list[AnchorSession]:
        """End every anchor of the room and its program at once; returns the ended sessions."""
        ended = self.in_room(room)
        for session in ended:
            await self.close(room, session.id, reason=reason)
        self._rooms.end(room, reason)
        return ended

    async def trickle(self, session: AnchorSession, frag: TrickleFragment) -> None:
        if session.id not in self.sessions:  # its connection is gone (see ``get``)
            raise Conflict("the session's connection has ended: DELETE it and publish again")
        await apply_trickle(session.pc, frag, self.candidates)

    async def shutdown(self) -> None:
        sessions = list(self.sessions.values())
        for session in sessions:
            session.life.end("shutdown")
        await asyncio.gather(*(s.life.stop("shutdown") for s in sessions), return_exceptions=True)
