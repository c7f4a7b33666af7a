"""Cluster wiring from settings: the origin's membership and the edge (``stagecast relay``) node."""

from __future__ import annotations

import os
import socket

from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.cluster.edge import EdgeConfig, EdgeNode, EdgeService
from relay.cluster.link import LinkConfig
from relay.cluster.node import ClusterConfig, ClusterNode, NodeLoad
from relay.cluster.registry import NodeRole, RoomPolicy
from relay.cluster.registry_factory import make_registry
from relay.media.retransmit import RetransmitLimits
from relay.messages.bus_factory import make_bus
from relay.messages.service import RoomChannels
from relay.ops.loop_lag import LoopLagMonitor, overload_check
from relay.rtc.candidates import node_policy
from relay.rtc.transport import NodeTransport
from relay.rtc.viewers import ViewerLimits, ViewerService

from .anchors import AnchorService
from .settings import Settings, channel_config, ephemeral_secret, node_ice, transport_config
from .stage.table import StageTable


def node_id(settings: Settings) -> str:
    return settings.cluster.node_id or f"{socket.gethostname()}-{os.getpid()}"


def cluster_config(settings: Settings, role: NodeRole, node: str) -> ClusterConfig:
    c = settings.cluster
    max_viewers = c.max_viewers
    if role == "origin" and max_viewers is None:
        max_viewers = settings.rooms.max_viewers_per_node
    return ClusterConfig(
        node_id=node,
        url=settings.base_url,
        role=role,
        heartbeat=c.heartbeat,
        ttl=c.node_ttl,
        max_viewers=max_viewers,
        max_egress_bps=float(c.max_egress_bitrate) if c.max_egress_bitrate else None,
        retry_after=settings.sessions.retry_after,
        upstream=c.upstream if role == "edge" else "",
    )


def build_origin_cluster(
    settings: Settings,
    node: str,
    tokens: TokenAuthority,
    stages: StageTable,
    anchors: AnchorService,
    viewers: ViewerService,
) -> ClusterNode:
    """The origin's membership: it owns (leases) the rooms whose program it puts out and
    publishes the policies (private, max viewers) of its rooms for the edges to enforce."""

    def figures() -> NodeLoad:
        owned = tuple(s.room for s in stages if s.hub is not None and not s.hub.closed.is_set())
        return NodeLoad(
            viewers.count(), viewers.egress().bytes, owned=owned, anchors=len(anchors.sessions)
        )

    registry = make_registry(settings.cluster.redis_url, prefix=settings.cluster.key_prefix)
    return ClusterNode(
        cluster_config(settings, "origin", node),
        registry,
        figures,
        tokens=tokens,
        room_policies=lambda: room_policies(stages),
    )


def room_policies(stages: StageTable) -> list[RoomPolicy]:
    """The policies the origin publishes for the edges: every room that is private, limited
    or has a chat mode other than the default."""
    return [
        RoomPolicy(s.room, s.config.private, s.config.max_viewers, s.config.chat)
        for s in stages
        if s.config.private or s.config.max_viewers is not None or s.config.chat != "audience"
    ]


def build_edge_node(settings: Settings) -> EdgeNode:
    """Everything a relay process owns, from settings (``cluster.upstream`` is required)."""
    c = settings.cluster
    if not c.upstream:
        raise ValueError("an edge needs cluster.upstream (the origin's or a parent relay's URL)")
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
    cluster = ClusterNode(cluster_config(settings, "edge", node), registry, figures, tokens=tokens)
    # The origin's room policies (relay.cluster.node): private rooms need a token, room limits hold
    lag = LoopLagMonitor()
    transport = NodeTransport(transport_config(settings))
    viewers = ViewerService(
        edge.live_hub,
        ice_servers=node_ice(settings),
        limits=ViewerLimits(
            retransmit=RetransmitLimits(
                max_age=settings.media.rtx_max_age, share=settings.media.rtx_share
            ),
            keyframe_backoff=settings.media.viewer_keyframe_backoff,
            connect_timeout=settings.sessions.connect_timeout,
            retry_after=settings.sessions.retry_after,
            certificate_lifetime=settings.sessions.certificate_lifetime,
            max_viewers=c.max_viewers or settings.rooms.max_viewers_per_node,
            native=media.native_send,
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
    )
    messages = RoomChannels(
        make_bus(c.redis_url, prefix=c.key_prefix),
        channel_config(settings),
        chat_mode=cluster.room_chat_mode,
    )
    return EdgeNode(edge, viewers, access, cluster, lag, transport=transport, messages=messages)
