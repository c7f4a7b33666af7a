"""Operator API: rooms, anchors (list, kick, mute), viewers, live stream stats, tokens, nodes."""

from __future__ import annotations

import contextlib
import os
import socket
import time

from fastapi import APIRouter, Response

from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.cluster.node import ClusterNode
from relay.cluster.registry import NodeRecord, RegistryError
from relay.cluster.routing import missed_heartbeat
from relay.errors import Conflict, NotFound
from relay.http.whep import LayerRequest
from relay.media.hub import FanoutHub
from relay.media.repair_wait import RepairWait
from relay.media.retransmit import Verdict
from relay.rtc.direct_sender import DirectSender
from relay.rtc.nack_requests import NackRequests
from relay.rtc.viewers import ViewerService, ViewerSession

from .anchors import AnchorService, AnchorSession
from .api_models import (
    AnchorView,
    LayerView,
    MediaStats,
    MuteRequest,
    NodeView,
    RoomCreate,
    RoomView,
    StreamView,
    TokenRequest,
    TokenResponse,
    ViewerList,
    ViewerView,
)
from .settings import Settings
from .stage.table import RoomConfig, Stage, StageTable


def stream_view(room: str, hub: FanoutHub | None, viewers: int) -> StreamView:
    if hub is None:
        return StreamView(
            room=room,
            live=False,
            viewers=viewers,
            keyframe_requests=0,
            frames_in=0,
            bytes_in=0,
            uptime_s=0.0,
        )
    now = time.monotonic()
    media: dict[str, MediaStats] = {}
    for kind, spec in hub.codecs.items():
        fps, bps = hub.meters[kind].rates(now)
        media[kind] = MediaStats(
            codec=spec.name, fps=round(fps, 2), bitrate_bps=round(bps), muted=kind in hub.muted
        )
    size = hub.picture_size
    return StreamView(
        room=room,
        live=not hub.closed.is_set(),
        video=media.get("video"),
        audio=media.get("audio"),
        width=size[0] if size else None,
        height=size[1] if size else None,
        viewers=viewers,
        keyframe_requests=hub.stats.keyframe_requests,
        frames_in=hub.stats.frames_in,
        keyframes_in=hub.stats.keyframes_in,
        bytes_in=hub.stats.bytes_in,
        uptime_s=round(now - hub.started_at, 3),
        fanout_cpu_s=round(hub.stats.fanout_cpu_seconds, 6),
    )


def feedback_repair_view(video: DirectSender) -> dict[str, object]:
    """A video sender's packets lost without a NACK (relay/media/feedback_repair.py)."""
    repair = video.repair
    if repair is None:
        return {}
    late, unasked = repair.late_nacks, repair.unasked
    return {
        "feedback_lost": repair.reported,
        "feedback_unasked": repair.unasked,
        "feedback_repairs": video.repairs,
        "late_nacks": late,
        "late_nack_ms": round(1000 * repair.late_nack_delay / late, 1) if late else None,
        "unasked_ms": round(1000 * repair.unasked_delay / unasked, 1) if unasked else None,
    }


def audio_red_view(s: ViewerSession) -> dict[str, object]:
    """What its audio's RED carried (relay/media/audio_red.py), when negotiated."""
    audio = s.senders.get("audio")
    if audio is None or audio.red is None:
        return {}
    return {
        "audio_red": True,
        "audio_red_copies": audio.red.copies,
        "audio_red_bytes": audio.red.octets,
    }


def viewer_view(s: ViewerSession) -> ViewerView:
    video = s.senders.get("video")
    feedback = (
        {
            "nacks": video.nacks,
            "nacked_packets": video.nacked_packets,
            "retransmissions": video.retransmissions,
            "rtx_bytes": video.rtx_bytes,
            "rtx_late": video.budget.refused[Verdict.LATE],
            "rtx_repeat": video.budget.refused[Verdict.REPEAT],
            "rtx_over_budget": video.budget.refused[Verdict.OVER_BUDGET],
            "rtx_follow_ups": video.budget.follow_ups,
            "fec": video.fec is not None,
            "fec_packets": video.fec.packets if video.fec is not None else 0,
            "fec_bytes": video.fec.octets if video.fec is not None else 0,
            "fec_overhead": round(video.fec.overhead, 3) if video.fec is not None else 0.0,
            "fec_loss": round(video.fec.loss, 4) if video.fec is not None else 0.0,
            "fec_limited": video.fec.limited if video.fec is not None else 0,
            "asks_again": video.budget.asks_again,
            "nack_share": round(video.budget.loss, 4),
            "playout_delay_ms": None if video.playout is None else video.playout.delay_ms,
            "nack_solicits": 0 if video.solicitor is None else video.solicitor.made_count,
            "solicited_nacks": 0 if video.solicitor is None else video.solicitor.solicited,
            **feedback_repair_view(video),
            **audio_red_view(s),
            "keyframe_requests": video.keyframe_requests,
            "keyframe_requests_suppressed": s.keyframe_gate.suppressed if s.keyframe_gate else 0,
            "rtt_ms": None if (rtt := video.round_trip_time()) is None else round(rtt * 1000, 1),
            "fraction_lost": round(video.fraction_lost, 4),
        }
        if video is not None
        else {}
    )
    estimate = s.estimate
    probe = s.prober.controller if s.prober is not None else None
    return ViewerView(
        id=s.id,
        room=s.room,
        subject=s.grant.subject,
        state=s.pc.connectionState,
        frames_sent=sum(q.sent for q in s.viewer.queues.values()),
        frames_dropped=sum(q.dropped for q in s.viewer.queues.values()),
        transport_cc=s.transport_cc,
        estimate_source=estimate.source,
        estimate_bps=estimate.target_bps,
        estimate_loss=estimate.loss_fraction,
        acked_bps=estimate.acked_bps,
        sent_bps=estimate.sent_bps,
        delay_usage=estimate.usage,
        jitter_ms=None if estimate.jitter is None else round(estimate.jitter * 1000, 2),
        feedback_malformed=estimate.malformed + s.rtcp_errors,
        layer=s.layer,
        layer_mode="auto" if s.pin is None else "pinned",
        layer_pinned=s.pin,
        layer_switches_up=s.step_ups,
        layer_switches_down=s.fallbacks,
        probes=probe.clusters if probe is not None else 0,
        probes_succeeded=probe.successes if probe is not None else 0,
        probe_bytes=probe.probe_bytes if probe is not None else 0,
        probe_bps=estimate.probe_bps,
        **feedback,
    )


def anchor_view(session: AnchorSession) -> AnchorView:
    received = session.ingests.packets
    cc = session.congestion
    video = session.ingests.get("video")
    return AnchorView(
        id=session.id,
        room=session.room,
        subject=session.grant.subject,
        state=session.pc.connectionState,
        connected=session.connected_at is not None,
        muted=sorted(session.hub.muted),
        packets_received=received,
        packets_lost=session.ingests.packets_lost,
        frames_skipped=session.ingests.frames_skipped,
        filler_bytes_dropped=session.ingests.filler_bytes,
        video_packets_lost=video.packets_lost if video is not None else 0,
        transport_cc=cc is not None and cc.negotiated,
        feedback_packets_sent=cc.stats.feedback_packets if cc is not None else 0,
        **nack_counts(video.nacks if video is not None else None),
        **repair_figures(video.repair if video is not None else None),
    )


def nack_counts(nacks: NackRequests | None) -> dict[str, int]:
    if nacks is None:
        return {}
    stats = nacks.stats
    return {
        "nacked_packets": stats.nacked,
        "renacked_packets": stats.renacked,
        "nack_recovered": stats.recovered,
        "nack_recovered_after_repeat": stats.recovered_after_renack,
        "nack_given_up": stats.expired,
        "nack_late": stats.late,
    }


def repair_figures(repair: RepairWait | None) -> dict[str, float | None]:
    if repair is None:
        return {}
    smoothed = repair.smoothed
    return {
        "repair_wait_ms": round(repair.wait * 1000, 1),
        "repair_time_ms": None if smoothed is None else round(smoothed * 1000, 1),
    }


def node_view(record: NodeRecord, *, local: bool, ttl: float, now: float) -> NodeView:
    age = round(max(0.0, now - record.updated_at), 3)
    return NodeView(
        id=record.id,
        url=record.url,
        role=record.role,
        state=(
            "draining"
            if record.draining
            else "stale"
            if age > ttl or missed_heartbeat(record, now)  # (out of routing)
            else "up"
        ),
        draining=record.draining,
        local=local,
        upstream=record.upstream,
        rooms=list(record.rooms),
        anchors=record.anchors,
        viewers=record.viewers,
        max_viewers=record.max_viewers,
        egress_bps=record.egress_bps,
        max_egress_bps=record.max_egress_bps,
        load=round(record.load, 4),
        cpu_percent=record.cpu,
        heartbeat_age_s=age,
    )


def operator_router(
    settings: Settings,
    stages: StageTable,
    anchors: AnchorService,
    viewers: ViewerService,
    access: AccessPolicy,
    tokens: TokenAuthority,
    cluster: ClusterNode | None,
) -> APIRouter:
    router = APIRouter(tags=["operator"])

    async def publish_policies() -> None:
        """Edges enforce a room's policy from the registry: publish a change at once (a registry
        outage is retried by the next heartbeat)."""
        if cluster is not None:
            with contextlib.suppress(RegistryError):
                await cluster.publish_room_policies()

    def room_view(stage: Stage) -> RoomView:
        return RoomView(
            name=stage.room,
            private=stage.config.private,
            max_viewers=stage.config.max_viewers,
            chat=stage.config.chat,
            record=stage.config.record,
            mode=stage.config.mode,
            persistent=stage.persistent,
            live=stage.hub is not None,
            anchors=[anchor_view(s) for s in anchors.in_room(stage.room)],
            viewers=viewers.count(stage.room),
            created_at=stage.created_at,
        )

    def stage_or_404(room: str) -> Stage:
        stage = stages.get(room)
        if stage is None:
            raise NotFound(f"no room {room!r}")
        return stage

    @router.get("/rooms", response_model=list[RoomView])
    async def list_rooms() -> list[RoomView]:
        return [room_view(s) for s in stages]

    @router.post("/rooms", status_code=201, response_model=RoomView)
    async def create_room(body: RoomCreate, response: Response) -> RoomView:
        existing = stages.get(body.name)
        if existing is not None and existing.persistent:
            raise Conflict(f"room {body.name!r} already exists")
        config = RoomConfig(
            body.private, body.max_viewers, body.chat, record=body.record, mode=body.mode
        )
        stage = stages.create(body.name, config)
        await publish_policies()
        response.headers["Location"] = f"/v1/rooms/{body.name}"
        return room_view(stage)

    @router.get("/rooms/{room}", response_model=RoomView)
    async def get_room(room: str) -> RoomView:
        return room_view(stage_or_404(room))

    @router.delete("/rooms/{room}", status_code=204)
    async def close_room(room: str) -> Response:
        """Ends the room: its anchors are kicked (their viewers are told), the room is removed."""
        stage_or_404(room)
        for session in anchors.in_room(room):
            access.revoke(session.grant.token_id, session.grant.expires_at, room)
        await anchors.close_room(room)
        stages.remove(room)
        await publish_policies()
        return Response(status_code=204)

    @router.get("/rooms/{room}/anchors", response_model=list[AnchorView])
    async def list_anchors(room: str) -> list[AnchorView]:
        stage_or_404(room)
        return [anchor_view(s) for s in anchors.in_room(room)]

    @router.delete("/rooms/{room}/anchors/{anchor_id}", status_code=204)
    async def kick_anchor(room: str, anchor_id: str) -> Response:
        """Ends the anchor's session and revokes its token so it cannot publish straight back."""
        session = anchors.get(room, anchor_id)
        access.revoke(session.grant.token_id, session.grant.expires_at, room)
        await anchors.close(room, anchor_id, reason="kicked")
        await publish_policies()  # the edges refuse the token too (it may also watch the room)
        return Response(status_code=204)

    @router.post("/rooms/{room}/anchors/{anchor_id}/mute", response_model=AnchorView)
    async def mute_anchor(room: str, anchor_id: str, body: MuteRequest) -> AnchorView:
        session = anchors.get(room, anchor_id)
        if body.audio is not None and "audio" in session.hub.codecs:
            session.set_muted("audio", body.audio)
        if body.video is not None and "video" in session.hub.codecs:
            session.set_muted("video", body.video)
        return anchor_view(session)

    @router.get("/rooms/{room}/viewers", response_model=ViewerList)
    async def list_viewers(room: str) -> ViewerList:
        stage_or_404(room)
        listed = [viewer_view(s) for s in viewers.sessions.values() if s.room == room]
        return ViewerList(room=room, count=len(listed), viewers=listed)

    @router.put("/rooms/{room}/viewers/{viewer_id}/layer", response_model=ViewerView)
    async def pin_viewer_layer(room: str, viewer_id: str, body: LayerRequest) -> ViewerView:
        """Keep a viewer on a layer (``{"layer": "360p"}``) or let it adapt (``"auto"``)."""
        session = viewers.get(room, viewer_id)
        viewers.set_pin(session, None if body.layer == "auto" else body.layer)
        return viewer_view(session)

    @router.get("/streams", response_model=list[StreamView])
    async def list_streams() -> list[StreamView]:
        return [
            stream_view(s.room, s.hub, viewers.count(s.room)) for s in stages if s.hub is not None
        ]

    @router.get("/rooms/{room}/stream", response_model=StreamView)
    async def get_stream(room: str) -> StreamView:
        stage = stage_or_404(room)
        view = stream_view(room, stage.hub, viewers.count(room))
        layers = anchors.layers(room)
        names = [name for name, _ in layers]
        view.layers = [
            LayerView(
                name=name,
                rid=state.rid,
                live=state.live,
                width=state.width,
                height=state.height,
                fps=state.fps,
                bitrate_bps=state.bitrate_bps,
                carried_by=[names[i] for i in state.feeds],
            )
            for name, state in layers
        ]
        return view

    @router.post("/tokens", status_code=201, response_model=TokenResponse)
    async def mint_token(body: TokenRequest) -> TokenResponse:
        token = tokens.mint(body.room, body.role, body.subject, body.ttl)
        path = "whip" if body.role == "anchor" else "whep"
        return TokenResponse(
            token=token,
            room=body.room,
            role=body.role,
            expires_at=int(time.time()) + body.ttl,
            url=f"{settings.base_url}/{path}/{body.room}",
        )

    @router.get("/nodes", response_model=list[NodeView])
    async def list_nodes() -> list[NodeView]:
        """Every node in the cluster registry (origin and edges), this one marked ``local``;
        in single-node mode just this one."""
        now = time.time()
        if cluster is None:  # no cluster membership at all: this node as it is now
            local = NodeRecord(
                id=settings.cluster.node_id or default_node_id(),
                url=settings.base_url,
                role="origin",
                viewers=viewers.count(),
                rooms=tuple(s.room for s in stages if s.hub is not None),
                anchors=len(anchors.sessions),
                updated_at=now,
            )
            return [node_view(local, local=True, ttl=settings.cluster.node_ttl, now=now)]
        me = cluster.config.node_id
        return [
            node_view(r, local=r.id == me, ttl=cluster.config.ttl, now=now)
            for r in await cluster.current_nodes()
        ]

    return router


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
