"""The message bus on Redis: one pub/sub channel (``{prefix}messages``) for every room's
envelopes, and ``{prefix}likes:{room}`` counters (INCRBY, expiring a day after the last like).

A node holds one subscription whatever the number of rooms; it drops envelopes of rooms it has
no socket for. Every backend failure is raised as ``BusError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.messages.bus import BusError
from relay.messages.envelope import Envelope

LIKES_TTL = 86_400


class RedisBus:
    def __init__(self, url: str, *, prefix: str = "stagecast:", timeout: float = 1.0) -> None:
        self._prefix = prefix
        self._channel = prefix + "messages"
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=5,
        )

    def _likes_key(self, room: str) -> str:
        return f"{self._prefix}likes:{room}"

    async def publish(self, envelope: Envelope) -> None:
        try:
            await self._redis.publish(self._channel, envelope.to_json())
        except (RedisError, OSError) as exc:
            raise BusError(f"redis: {exc}") from exc

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Envelope]]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
        except (RedisError, OSError) as exc:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise BusError(f"redis: {exc}") from exc

        async def envelopes() -> AsyncIterator[Envelope]:
            try:
                while True:
                    # (no timeout: a blocking read; the socket timeout does not apply to it)
                    msg = await pubsub.get_message(timeout=None)
                    if msg is None or msg.get("type") != "message":
                        continue
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        yield Envelope.from_json(msg["data"])
            except (RedisError, OSError) as exc:
                raise BusError(f"redis: {exc}") from exc

        try:
            yield envelopes()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def add_likes(self, room: str, count: int) -> int:
        key = self._likes_key(room)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, count)
                pipe.expire(key, LIKES_TTL)
                total, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BusError(f"redis: {exc}") from exc
        return int(total)

    async def likes(self, room: str) -> int:
        try:
            raw = await self._redis.get(self._likes_key(room))
        except (RedisError, OSError) as exc:
            raise BusError(f"redis: {exc}") from exc
        return int(raw) if raw is not None else 0

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()
