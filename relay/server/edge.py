"""The edge node from settings alone: its pulls, viewers, access policy and cluster membership
(``build_edge_node``), and its app (``create_edge_app``): the WHEP endpoint behind a gate that
reads the origin's room policy, authorizes, routes and pulls; the ops routes; the cluster view."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.cluster.edge import EdgeConfig, EdgeService
from relay.cluster.link import LinkConfig
from relay.cluster.node import ClusterNode, NodeLoad, TemporaryRedirect
from relay.cluster.registry_factory import make_registry
from relay.errors import ServiceUnavailable
from relay.http.common import check_room, require_content_type
from relay.http.keys import KeyAuth
from relay.http.problems import problem_responses
from relay.http.whep import WhepStreamKey, whep_router
from relay.media.stream_key import StreamKey
from relay.messages.bus_factory import make_bus
from relay.messages.service import RoomChannels
from relay.messages.ws import messages_router
from relay.ops.gc_freezer import GcFreezer
from relay.ops.loop_lag import LoopLagMonitor, overload_check
from relay.rtc.candidates import node_policy
from relay.rtc.transport import NodeTransport
from relay.rtc.viewers import ViewerService
from relay.server.app import Readiness, create_node_app, viewer_limits
from relay.server.cluster import cluster_config, node_id
from relay.server.metrics import NodeCollector, build_registry, render
from relay.server.settings import (
    NodeSettings,
    channel_config,
    ephemeral_secret,
    ice_directory,
    node_ice,
    transport_config,
)


@dataclass(eq=False)
class EdgeNode:
    """Everything one edge process owns; reachable as ``app.state.edge``."""

    settings: NodeSettings
    edge: EdgeService
    viewers: ViewerService
    access: AccessPolicy
    cluster: ClusterNode
    lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    messages: RoomChannels | None = None  # room channels (chat, likes) from the message bus
    transport: NodeTransport = field(default_factory=NodeTransport)
    freezer: GcFreezer | None = None  # (limits.gc_freeze_sessions)

    def __post_init__(self) -> None:
        self._metrics = build_registry(NodeCollector(self.viewers, self.lag), PullCollector(self))

    async def start(self) -> None:
        await self.transport.start()
        self.lag.start()
        if self.settings.limits.gc_freeze_sessions:
            viewers = self.viewers
            self.freezer = GcFreezer(lambda: viewers.sessions.keys(), viewers.joins.bursting)
            self.freezer.start()
        self.cluster.on_upstream_lost = self.edge.doubt_upstream
        await self.cluster.start()
        if self.messages is not None:
            await self.messages.start()

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await self.cluster.set_draining(True)
        await self.viewers.shutdown()
        await self.edge.shutdown()
        if self.messages is not None:
            await self.messages.stop()
        await self.cluster.stop()
        await self.lag.stop()
        if self.freezer is not None:
            await self.freezer.stop()
        await self.transport.close()

    def readiness(self) -> Readiness:
        detail = {
            "pulls": len(self.edge.egress_rooms()),  # probes are anonymous: no room names
            "viewers": self.viewers.count(),
            "registered": self.cluster.status.registered,
            "busy": round(self.lag.busy(), 3),  # its loop's share of a core (a front's policy)
        }
        return Readiness(not self.cluster.draining, detail)

    def metrics(self) -> bytes:
        return render(self._metrics)


class PullCollector(Collector):
    """An edge's own metrics: its pulls and the viewers of each room (or of the node, with
    ``metrics.room_labels`` off)."""

    def __init__(self, node: EdgeNode) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        edge, viewers = self._node.edge, self._node.viewers
        live = [key for key in edge.pulls if edge.hub_for(key) is not None]
        yield GaugeMetricFamily("stagecast_pulls", "Streams pulled from upstream now", len(live))
        yield CounterMetricFamily("stagecast_pulls_opened", "Pulls opened", edge.stats.opened)
        yield CounterMetricFamily("stagecast_pulls_failed", "Pulls that failed", edge.stats.failed)
        if self._node.settings.metrics.room_labels:
            per_room = GaugeMetricFamily("stagecast_viewers", "Viewer sessions", labels=["room"])
            for room in edge.egress_rooms():
                per_room.add_metric([room], viewers.count(room))
            yield per_room
        else:  # node totals: no room named
            yield GaugeMetricFamily("stagecast_viewers", "Viewer sessions", viewers.count())


def build_edge_node(settings: NodeSettings, *, presence: bool = True) -> EdgeNode:
    """Everything an edge process owns, from settings (``cluster.upstream`` is required).
    ``presence``: hold a presence request at the upstream (relay.cluster.presence); off for a
    worker, whose upstream is its own parent process: a front too busy to answer in time would
    make it doubt the front and end its pulls, and it dies with the front anyway."""
    c = settings.cluster
    if not c.upstream:
        raise ValueError("an edge needs cluster.upstream (the origin's or a parent edge's URL)")
    secret = settings.auth.token_secret or ephemeral_secret()
    tokens = TokenAuthority(secret)
    node = node_id(settings)
    media = settings.media
    edge = EdgeService(
        EdgeConfig(
            link=LinkConfig(
                upstream=c.upstream,
                node_id=node,
                ice_servers=node_ice(settings),
                keyframe_interval=media.keyframe_interval,
                video_queue_frames=media.video_queue_frames,
                audio_queue_frames=media.audio_queue_frames,
                gop_cache_bytes=media.gop_cache_kb * 1024,
                reassembly_wait=media.reassembly_wait,
                retry_after=settings.sessions.retry_after,
            ),
            idle_grace=c.idle_grace,
            silence_timeout=c.silence_timeout,
            connect_timeout=settings.sessions.connect_timeout,
        ),
        tokens,
    )

    def figures() -> NodeLoad:
        return NodeLoad(viewers.count(), viewers.egress().bytes, rooms=edge.egress_rooms())

    registry = make_registry(c.redis_url, prefix=c.key_prefix)
    membership = cluster_config(settings, "edge", node)
    if not presence:
        membership = dataclasses.replace(membership, upstream="")
    cluster = ClusterNode(membership, registry, figures, tokens=tokens)
    # The origin's room policies (relay.cluster.node): private rooms need a token, room limits hold
    lag = LoopLagMonitor()
    transport = NodeTransport(transport_config(settings))
    viewers = ViewerService(
        edge.live_hub,
        ice_servers=node_ice(settings),
        limits=viewer_limits(
            settings,
            max_viewers=c.max_viewers or settings.rooms.max_viewers_per_node,
            candidates=node_policy(
                settings.limits.max_remote_candidates, settings.port, settings.cluster.redis_url
            ),
        ),
        room_limit=cluster.room_max_viewers,
        overloaded=overload_check(lag, settings.limits.max_loop_lag, settings.limits.max_loop_busy),
        transport=transport,
    )
    edge.viewer_count = viewers.count
    access = AccessPolicy(
        tokens,
        anonymous_audience=settings.auth.anonymous_audience,
        room_is_private=cluster.room_is_private,
        revoked_elsewhere=cluster.room_token_revoked,
    )
    messages = RoomChannels(
        make_bus(c.redis_url, prefix=c.key_prefix),
        channel_config(settings),
        chat_mode=cluster.room_chat_mode,
    )
    return EdgeNode(
        settings, edge, viewers, access, cluster, lag, messages=messages, transport=transport
    )


def edge_whep_gate(node: EdgeNode) -> Callable[[Request, StreamKey], Awaitable[None]]:
    """The edge's WHEP gate (its route's, and its front's for the POSTs it sends to workers)."""

    async def gate(request: Request, key: WhepStreamKey) -> None:
        """Before a viewer's POST: read the room's policy as its origin published it, authorize
        by it (a private room needs an audience token, as at the origin), route (307/503), then
        make sure the pull runs."""
        room = key.room
        if "session_id" in request.path_params:
            return
        if request.method in ("POST", "HEAD") and key.mixminus is not None:
            # an anchor's mix-minus is mixed where the anchors are: send it up the tree (each
            # parent edge does the same, the origin serves it; clients follow 307, RFC 9725)
            check_room(room)
            upstream = node.edge.config.link.upstream.rstrip("/")
            raise TemporaryRedirect(f"{upstream}/whep/{room}?{request.url.query}")
        if request.method != "POST":
            return
        check_room(room)
        # before the pull below: a POST the route would refuse must not open an upstream link
        require_content_type(request, "application/sdp")
        await node.cluster.refresh_room_policy(room)
        await node.cluster.refresh_view()
        node.access.authorize(
            room,
            "audience",
            request.headers.get("authorization"),
            request.query_params.get("access_token"),
        )
        node.cluster.check_whep_post(request, room)
        if node.cluster.draining:
            raise ServiceUnavailable("this edge is draining", retry_after=2)
        await node.edge.ensure_pull(key)

    return gate


def create_edge_app(node: EdgeNode, *, ops_keys: tuple[str, ...] = ()) -> FastAPI:
    """``ops_keys``: the keys (operator key, metrics token) ``/cluster`` and ``/metrics`` take;
    they name rooms, private ones included. Empty: open (an app embedded behind its own
    guard)."""
    settings = node.settings
    app = create_node_app(
        node,
        title="stagecast edge",
        summary="An edge: pulls each stream once from its upstream, serves WHEP audiences.",
        limits=settings.limits,
        cors_origin=settings.cors_origin,
        ops_keys=ops_keys,
    )
    app.state.edge = node

    gate = edge_whep_gate(node)

    app.include_router(
        whep_router(
            node.viewers,
            node.access,
            max_sdp_bytes=settings.sessions.max_sdp_bytes,
            ice=ice_directory(settings),
        ),
        dependencies=[Depends(gate)],
    )

    guarded = [Depends(KeyAuth(*ops_keys, what="operator key"))] if ops_keys else []

    @app.get(
        "/cluster",
        tags=["ops"],
        dependencies=guarded,
        responses=problem_responses(401) if guarded else None,
    )
    async def cluster_view() -> JSONResponse:
        """This node's record, its view of the cluster (nodes, room policies) and its pulls."""
        c = node.cluster
        return JSONResponse(
            {
                "me": asdict(c.me),
                "nodes": [asdict(n) for n in c.view],
                "registered": c.status.registered,
                "registrations": c.status.registrations,
                "room_policies": {room: asdict(p) for room, p in sorted(c.policies.items())},
                "pulls": {
                    key.id: {
                        "packets": p.link.packets,
                        "viewers": p.link.hub.viewer_count,
                        "fanout_cpu_s": round(p.link.hub.stats.fanout_cpu_seconds, 6),
                    }
                    for key, p in node.edge.pulls.items()
                },
                "pull_stats": {
                    "opened": node.edge.stats.opened,
                    "failed": node.edge.stats.failed,
                    "ended": node.edge.stats.ended,
                },
            }
        )

    app.include_router(node.cluster.presence_router())  # its children's (edges of edges)
    if node.messages is not None:
        app.include_router(
            messages_router(node.messages, node.access, before=node.cluster.refresh_room_policy)
        )
    return app
