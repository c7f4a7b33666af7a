"""The one factory that picks the message bus from settings: Redis when a URL is configured,
memory otherwise. Apart from both implementations, so neither imports the other."""

from __future__ import annotations

from relay.messages.bus import MemoryBus, MessageBus


def make_bus(redis_url: str = "", *, prefix: str = "stagecast:") -> MessageBus:
    if not redis_url:
        return MemoryBus()
    # imported here: the client library costs a single node ~7 MB it never uses
    from relay.messages.bus_redis import RedisBus

    return RedisBus(redis_url, prefix=prefix)
