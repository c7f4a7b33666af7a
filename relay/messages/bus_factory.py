"""The one factory that picks the message bus from settings: Redis when a URL is configured,
memory otherwise."""

from __future__ import annotations

from relay.messages.bus import MemoryBus, MessageBus
from relay.messages.bus_redis import RedisBus


def make_bus(redis_url: str = "", *, prefix: str = "stagecast:") -> MessageBus:
    if not redis_url:
        return MemoryBus()
    return RedisBus(redis_url, prefix=prefix)
