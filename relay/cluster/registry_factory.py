"""The one factory that picks the cluster registry from settings: Redis when a URL is configured,
memory otherwise. Apart from both implementations, so neither imports the other."""

from __future__ import annotations

from relay.cluster.registry import ClusterRegistry, MemoryRegistry


def make_registry(redis_url: str = "", *, prefix: str = "stagecast:") -> ClusterRegistry:
    if not redis_url:
        return MemoryRegistry()
    # imported here: the client library costs a single node ~7 MB it never uses
    from relay.cluster.registry_redis import RedisRegistry

    return RedisRegistry(redis_url, prefix=prefix)
