"""The message bus contract, run here against the in-memory default;
tests/live/test_message_bus_redis.py runs the same tests against Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relay.messages.bus import MemoryBus, MessageBus
from relay.messages.envelope import Envelope


@pytest.fixture
async def bus() -> AsyncIterator[MessageBus]:
    b = MemoryBus()
    try:
        yield b
    finally:
        await b.close()


async def take(it: AsyncIterator[Envelope], n: int) -> list[Envelope]:
    out = []
    async with asyncio.timeout(5):
        while len(out) < n:
            out.append(await anext(it))
    return out


@pytest.mark.timeout(20)
async def test_every_subscription_gets_every_envelope_in_order(bus: MessageBus) -> None:
    sent = [Envelope("r1" if i % 2 else "r2", "chat", f'{{"i":{i},"t":"é"}}') for i in range(50)]
    async with bus.subscribe() as a, bus.subscribe() as b:
        for env in sent:
            await bus.publish(env)
        assert await take(a, 50) == sent
        assert await take(b, 50) == sent


@pytest.mark.timeout(20)
async def test_a_subscription_sees_only_what_comes_after_it(bus: MessageBus) -> None:
    await bus.publish(Envelope("r", "system", "before"))
    async with bus.subscribe() as sub:
        await bus.publish(Envelope("r", "system", "after"))
        assert [e.payload for e in await take(sub, 1)] == ["after"]
    # a closed subscription does not stop the others
    async with bus.subscribe() as sub:
        await bus.publish(Envelope("r", "mute", "x"))
        assert [e.kind for e in await take(sub, 1)] == ["mute"]


@pytest.mark.timeout(20)
async def test_like_totals_add_up_per_room(bus: MessageBus) -> None:
    assert await bus.likes("r") == 0
    assert await bus.add_likes("r", 5) == 5
    totals = await asyncio.gather(*(bus.add_likes("r", 1) for _ in range(20)))
    assert sorted(totals) == list(range(6, 26))
    assert await bus.likes("r") == 25
    assert await bus.likes("other") == 0
