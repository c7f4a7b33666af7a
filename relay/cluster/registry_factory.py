"""The one factory that picks the cluster registry from settings: Redis when a URL is configured,
memory otherwise. Apart from both implementations, so neither imports the other."""

from __future__ import annotations

from relay.cluster.registry import ClusterRegistry, MemoryRegistry
from relay.cluster.registry_redis import RedisRegistry


def make_registry(redis_url: str = "", *, prefix: str = "stagecast:") -> ClusterRegistry:
    if not redis_url:
        return MemoryRegistry()
    return RedisRegistry(redis_url, prefix=prefix)
