"""The message bus: carries room messages between the nodes of a cluster, and keeps each
room's like total.

One interface (``MessageBus``), two implementations: ``MemoryBus`` here (a single node, the
default) and ``RedisBus`` in ``bus_redis`` (pub/sub + INCRBY). ``bus_factory.make_bus`` picks
one from a Redis URL. ``tests/unit/test_message_bus_contract.py`` holds the contract (memory)
and ``tests/live/test_message_bus_redis.py`` runs it against Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from relay.messages.envelope import Envelope


class BusError(Exception):
    """The bus's backend cannot be reached; the caller's message is lost, the node goes on."""


class MessageBus(Protocol):
    async def publish(self, envelope: Envelope) -> None:
        """Deliver to every subscription of every node (this one's too). Raises ``BusError``."""
        ...

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Envelope]]:
        """Every envelope published once the context is entered, any room, in publish order
        per publisher. Raises ``BusError`` when the backend is gone."""
        ...

    async def add_likes(self, room: str, count: int) -> int:
        """Add to the room's like total; the new total."""
        ...

    async def likes(self, room: str) -> int: ...

    async def close(self) -> None: ...


class MemoryBus:
    """A single process's bus: one bounded queue per subscription (a subscriber that falls
    this far behind loses the newest envelopes, never blocks a publisher)."""

    def __init__(self, *, queue_size: int = 10_000) -> None:
        self._queue_size = queue_size
        self._subscribers: list[asyncio.Queue[Envelope]] = []
        self._likes: dict[str, int] = {}
        self.dropped = 0

    async def publish(self, envelope: Envelope) -> None:
        for q in list(self._subscribers):
            try:
                q.put_nowait(envelope)
            except asyncio.QueueFull:
                self.dropped += 1

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Envelope]]:
        q: asyncio.Queue[Envelope] = asyncio.Queue(maxsize=self._queue_size)
        self._subscribers.append(q)

        async def envelopes() -> AsyncIterator[Envelope]:
            while True:
                yield await q.get()

        try:
            yield envelopes()
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(q)

    async def add_likes(self, room: str, count: int) -> int:
        self._likes[room] = self._likes.get(room, 0) + count
        return self._likes[room]

    async def likes(self, room: str) -> int:
        return self._likes.get(room, 0)

    async def close(self) -> None:
        self._subscribers.clear()
