"""A node's cluster identity and membership settings, origin or edge."""

from __future__ import annotations

import os
import socket

from relay.cluster.node import ClusterConfig
from relay.cluster.registry import NodeRole
from relay.server.settings import NodeSettings


def node_id(settings: NodeSettings) -> str:
    return settings.cluster.node_id or f"{socket.gethostname()}-{os.getpid()}"


def cluster_config(settings: NodeSettings, role: NodeRole, node: str) -> ClusterConfig:
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
