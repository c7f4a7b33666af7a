"""Cluster wiring of the origin from settings: its membership (the edge's is in
``relay.server.edge``)."""

from __future__ import annotations

from collections.abc import Mapping

from relay.auth.access import AccessPolicy
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
    access: AccessPolicy | None = None,
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
        room_policies=lambda: room_policies(stages, access.revoked_in() if access else None),
    )


def room_policies(
    stages: StageTable, revoked: Mapping[str, tuple[str, ...]] | None = None
) -> list[RoomPolicy]:
    """The policies the origin publishes for the edges: every room that is private, limited,
    has a chat mode other than the default or revoked tokens (``revoked``: room -> token ids;
    a closed room's revocations are published until the tokens expire)."""
    revoked = revoked or {}
    policies = [
        RoomPolicy(
            s.room,
            s.config.private,
            s.config.max_viewers,
            s.config.chat,
            revoked=revoked.get(s.room, ()),
        )
        for s in stages
        if s.config.private
        or s.config.max_viewers is not None
        or s.config.chat != "audience"
        or s.room in revoked
    ]
    known = {p.room for p in policies}
    policies += [
        RoomPolicy(room, revoked=ids) for room, ids in sorted(revoked.items()) if room not in known
    ]
    return policies
