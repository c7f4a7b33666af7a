"""The gateway's (origin's) ASGI app: relay's node app (lifespan, ops routes) plus WHIP, the
origin's WHEP, the operator API, bridges and pages; every long-lived object owned by its
lifespan."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request

from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.cluster.node import ClusterNode
from relay.http.common import check_room
from relay.http.problems import problem_responses
from relay.http.whep import WhepStreamKey, whep_router
from relay.media.layer_selector import SelectorConfig
from relay.media.stream_key import StreamKey
from relay.messages.bus_factory import make_bus
from relay.messages.service import RoomChannels
from relay.messages.ws import messages_router
from relay.ops.gc_freezer import GcFreezer
from relay.ops.gc_pauses import GcPauses
from relay.ops.loop_lag import LoopLagMonitor, overload_check
from relay.ops.loop_stalls import LoopStallWatch
from relay.rtc.adapter import check_version
from relay.rtc.transport import NodeTransport
from relay.rtc.viewers import ViewerService
from relay.server.app import Readiness, create_node_app, viewer_limits
from relay.server.cluster import node_id
from relay.server.metrics import build_registry, render

from .anchors import AnchorService
from .api_call import ParticipantNotices, call_router
from .api_layout import layout_router
from .api_links import links_router
from .api_messages import messages_api_router
from .api_metadata import metadata_router
from .api_rooms import default_node_id, operator_router
from .api_runtime import runtime_router
from .api_stage import stage_router
from .bridge import BridgeService, bridge_router, hls_router
from .cluster import build_origin_cluster
from .guests import StageGuests
from .metrics import ExtraCounters, GatewayCollector
from .operator_auth import OperatorAuth
from .pages import mount_pages
from .recording import RecordingService, recording_router
from .settings import (
    Settings,
    channel_config,
    ephemeral_secret,
    ice_directory,
    node_ice,
    transport_config,
)
from .stage.guests import DeskLimits, StageDesk
from .stage.links import LinkService
from .stage.room import EventSink, RoomService
from .stage.selection import hub_selector
from .stage.table import StageTable
from .webhooks import WebhookDispatcher
from .whip_http import whip_router

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Gateway:
    """Everything one gateway process owns; reachable as ``app.state.gateway``."""

    settings: Settings
    tokens: TokenAuthority
    access: AccessPolicy
    operator_key: str
    node_id: str
    stages: StageTable
    rooms: RoomService
    anchors: AnchorService
    viewers: ViewerService
    webhooks: WebhookDispatcher
    bridges: BridgeService
    recordings: RecordingService
    lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    gc_pauses: GcPauses = field(default_factory=GcPauses)
    stalls: LoopStallWatch | None = None  # (metrics.stall_trace)
    metric_sources: list[ExtraCounters] = field(default_factory=list)
    cluster: ClusterNode | None = None
    messages: RoomChannels | None = None
    links: LinkService | None = None  # cross-room co-hosting
    transport: NodeTransport = field(default_factory=NodeTransport)
    freezer: GcFreezer | None = None  # (limits.gc_freeze_sessions)
    guests: StageGuests | None = None  # audience on stage (raised hands, guests)

    def __post_init__(self) -> None:
        collector = GatewayCollector(
            self.stages,
            self.rooms,
            self.anchors,
            self.viewers,
            self.lag,
            self.metric_sources,
            gc_pauses=self.gc_pauses,
            room_labels=self.settings.metrics.room_labels,
        )
        self._metrics = build_registry(collector)

    async def start(self) -> None:
        log.info("gateway up at %s", self.settings.base_url)
        await self.transport.start()
        if self.transport.port is not None:
            self.transport.port.quiet = self.media_quiet
        self.lag.idle = self.media_quiet
        self.lag.start()
        if self.settings.limits.gc_freeze_sessions:
            viewers = self.viewers
            self.freezer = GcFreezer(lambda: viewers.sessions.keys(), viewers.joins.bursting)
            self.freezer.start()
        self.gc_pauses.install()
        if self.settings.metrics.stall_trace is not None:
            self.stalls = LoopStallWatch(self.settings.metrics.stall_trace)
            self.stalls.start()
        self.webhooks.start()
        if self.messages is not None:
            await self.messages.start()
        if self.cluster is not None:
            await self.cluster.start()

    async def shutdown(self) -> None:
        if self.cluster is not None:
            await self.cluster.set_draining(True)
        await self.bridges.shutdown()
        await self.recordings.shutdown()
        if self.links is not None:
            await self.links.shutdown()
        await self.anchors.shutdown()
        await self.rooms.shutdown()
        await self.viewers.shutdown()
        await self.webhooks.stop()
        if self.messages is not None:
            await self.messages.stop()
        await self.lag.stop()
        if self.freezer is not None:
            await self.freezer.stop()
        self.gc_pauses.uninstall()
        if self.stalls is not None:
            await self.stalls.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.transport.close()

    def media_quiet(self) -> bool:
        """Nothing on this node takes media as it arrives: no viewer session, no mixer (a room
        with one anchor at most), no hub with a consumer (a recording, a bridge, a co-host's
        tap), and no anchor steering its bitrate by our transport-cc feedback (a browser:
        feedback made late by batched reads could lower what a viewer then joins to). Then the
        shared port may read the anchors' packets in batches (``udp_quiet_reads``) and the
        loop-lag sampler may sample once a second (what the overload guard needs of it comes
        with a join: ``LoopLagMonitor.quicken``)."""
        if self.viewers.sessions:
            return False
        for stage in self.stages:
            if len(stage.anchor_ids) > 1 or any(h.wanted for h in stage.renditions.values()):
                return False
        for session in self.anchors.sessions.values():
            congestion = session.congestion
            if congestion is not None and congestion.negotiated:
                return False  # its bandwidth estimate reads our feedback's timing: not late
            if any(h.wanted for h in session.layers):
                return False
        return True

    def readiness(self) -> Readiness:
        detail = {
            "rooms": len(self.stages),
            "anchors": len(self.anchors.sessions),
            "viewers": self.viewers.count(),
        }
        return Readiness(True, detail)

    def metrics(self) -> bytes:
        return render(self._metrics)


def build_gateway(settings: Settings) -> Gateway:
    check_version()
    secret = settings.auth.token_secret or ephemeral_secret()
    tokens = TokenAuthority(secret)
    hooks = settings.webhooks
    webhooks = WebhookDispatcher(
        hooks.urls,
        hooks.secret or secret,
        timeout=hooks.timeout,
        max_attempts=hooks.max_attempts,
        backoff_base=hooks.backoff_base,
    )
    stages = StageTable()
    operator_key = settings.api.operator_key or ephemeral_secret()
    access = AccessPolicy(
        tokens,
        anonymous_audience=settings.auth.anonymous_audience,
        room_is_private=stages.is_private,
        operator_key=operator_key,  # the operator may end any WHIP/WHEP session
    )
    sinks: list[EventSink] = [webhooks.emit]  # room events: webhooks, participant notices

    def events(kind: str, data: dict[str, Any]) -> None:
        for sink in sinks:
            sink(kind, data)

    rooms = RoomService(settings, stages, events)
    guests = StageGuests(  # audience on stage
        StageDesk(DeskLimits(max_open=settings.stage.max_stage_requests)),
        tokens,
        access,
        webhooks.emit,
        lambda room, sid, reason: anchors.close(room, sid, reason),
        token_ttl=settings.stage.guest_token_ttl,
    )
    sinks.append(guests.observe)  # it follows its guests' WHIP sessions (anchor.joined/left)
    rooms.held_seats = guests.desk.seats_taken  # links do not take a seat held for a guest
    transport = NodeTransport(transport_config(settings))
    anchors = AnchorService(settings, rooms, transport)
    lag = LoopLagMonitor()
    viewers = ViewerService(
        hub_selector(
            stages.live_hub,
            stages.rendition_hub,
            rooms.anchor_hub,
            [r.name for r in settings.stage.renditions],
            mixminus=rooms.mixminus_hub,
        ),
        ice_servers=node_ice(settings),
        limits=viewer_limits(
            settings,
            max_viewers=settings.rooms.max_viewers_per_node,
            candidates=anchors.candidates,
        ),
        room_limit=stages.max_viewers,
        layers=rooms.ladder,
        selector=SelectorConfig(blind_hold=settings.stage.fallback_hold),
        overloaded=overload_check(lag, settings.limits.max_loop_lag, settings.limits.max_loop_busy),
        transport=transport,
    )
    gateway = Gateway(
        settings,
        tokens,
        access,
        operator_key,
        node_id(settings) if settings.cluster.node_id else default_node_id(),
        stages,
        rooms,
        anchors,
        viewers,
        webhooks,
        bridges=BridgeService(settings.bridge, stages),
        recordings=RecordingService(
            settings.recording, stages, webhooks.emit, anchor_hubs=rooms.anchor_hubs
        ),
        lag=lag,
        transport=transport,
        guests=guests,
    )
    gateway.metric_sources.append(webhooks)
    gateway.messages = RoomChannels(  # chat, likes, commands: relay.messages
        make_bus(settings.cluster.redis_url, prefix=settings.cluster.key_prefix),
        channel_config(settings),
        chat_mode=stages.chat_mode,
    )
    gateway.metric_sources.append(gateway.messages)
    gateway.cluster = build_origin_cluster(
        settings, gateway.node_id, tokens, stages, anchors, viewers, access
    )
    gateway.links = LinkService(settings, rooms, gateway.cluster, tokens, events)
    sinks.append(ParticipantNotices(rooms, gateway.messages))
    return gateway


def origin_whep_gate(
    cluster: ClusterNode | None, access: AccessPolicy
) -> Callable[[Request, StreamKey], Awaitable[None]]:
    """The cluster's WHEP routing (307 to an edge), except for mix-minus pulls: only the origin,
    where the anchors are, has those (an edge answers 404). A viewer is authorized before it is
    routed: the 307 names the edge already pulling the room, i.e. tells that it is live."""

    async def gate(request: Request, key: WhepStreamKey) -> None:
        if key.mixminus is not None:
            return
        if request.method == "POST" and "session_id" not in request.path_params:
            check_room(key.room)
            q, h = request.query_params, request.headers
            access.authorize(key.room, "audience", h.get("authorization"), q.get("access_token"))
        if cluster is not None:
            await cluster.whep_gate(request)

    return gate


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    gw = gateway or build_gateway(settings)

    app = create_node_app(
        gw,
        title="stagecast gateway",
        summary="WHIP anchors in, encoded fan-out, WHEP audiences out.",
        limits=settings.limits,
        cors_origin=settings.cors_origin,
        ops_keys=(gw.operator_key, settings.metrics.token),  # /metrics names every room
    )
    app.state.gateway = gw
    access = gw.access
    ice = ice_directory(settings)
    limit = settings.sessions.max_sdp_bytes
    app.include_router(
        whip_router(
            gw.anchors,
            access,
            max_sdp_bytes=limit,
            ice=ice,
            start_kbps=settings.media.anchor_start_kbps,
            cc_start_kbps=settings.media.anchor_cc_start_kbps,
            opus_dtx=settings.media.anchor_opus_dtx,
        )
    )
    whep_gate = [Depends(origin_whep_gate(gw.cluster, access))] if gw.cluster is not None else []
    app.include_router(
        whep_router(gw.viewers, access, max_sdp_bytes=limit, ice=ice, mixminus=True),
        dependencies=whep_gate,  # 307 to the edge that should serve a viewer (relay.cluster.node)
    )

    operator = OperatorAuth(gw.operator_key)
    # every operator route: key (401), room/anchor/bridge (404), exists or not live (409),
    # body too large (413, relay.http.guards), schema (400/422)
    v1 = APIRouter(
        prefix="/v1",
        dependencies=[Depends(operator)],
        responses=problem_responses(400, 401, 404, 409, 413, 422),
    )
    # Operator routers (rooms, anchors, bridges, ...) are added to ``v1`` here.
    v1.include_router(
        operator_router(
            settings, gw.stages, gw.anchors, gw.viewers, gw.access, gw.tokens, gw.cluster
        )
    )
    v1.include_router(bridge_router(gw.bridges))
    v1.include_router(recording_router(gw.recordings))
    v1.include_router(runtime_router(gw.anchors, gw.viewers, gw.gc_pauses, lambda: gw.stalls))
    v1.include_router(layout_router(gw.stages, gw.rooms))
    v1.include_router(metadata_router(gw.stages))
    if gw.guests is not None:  # anchors' and viewers' routes, not under /v1 (tokens, not the key)
        app.include_router(
            stage_router(
                settings,
                gw.stages,
                gw.rooms,
                gw.anchors,
                gw.viewers,
                access,
                gw.guests,
                gw.operator_key,
            )
        )
    if gw.messages is not None:
        v1.include_router(messages_api_router(gw.messages))
        app.include_router(messages_router(gw.messages, access, operator_key=gw.operator_key))
    app.include_router(v1)
    if gw.links is not None:  # the operator key, or an anchor token for its own room
        app.include_router(links_router(gw.links, access, gw.operator_key))
    app.include_router(call_router(gw.rooms, access, gw.operator_key))
    if gw.cluster is not None:  # the edges' presence: a killed edge is out of routing at once
        app.include_router(gw.cluster.presence_router())
    app.include_router(
        hls_router(gw.bridges, access), responses=problem_responses(400, 401, 403, 404, 503)
    )

    mount_pages(app, settings, gw.tokens)
    return app
