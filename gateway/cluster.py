"""Cluster wiring of the origin from settings: its membership (the edge's is in
``relay.server.edge``)."""

from __future__ import annotations

from relay.auth.tokens import TokenAuthority
from relay.cluster.node import ClusterNode, NodeLoad
from relay.cluster.registry import RoomPolicy
from relay.cluster.registry_factory import make_registry
from relay.rtc.viewers import ViewerService
from relay.server.cluster import cluster_config

from .anchors import AnchorService
from .settings import Settings
from .stage.table import StageTable


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
