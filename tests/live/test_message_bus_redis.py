"""The message bus contract (tests/unit/test_message_bus_contract.py) against a real
redis-server: the contract's tests are imported here and get this module's `bus` fixture."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from relay.messages.bus import BusError, MessageBus
from relay.messages.bus_redis import RedisBus
from relay.messages.envelope import Envelope
from tests.support.redis_server import RedisProcess, run_redis
from tests.support.server import free_port
from tests.unit.test_message_bus_contract import (
    test_a_subscription_sees_only_what_comes_after_it,
    test_every_subscription_gets_every_envelope_in_order,
    test_like_totals_add_up_per_room,
)

__all__ = [
    "test_a_subscription_sees_only_what_comes_after_it",
    "test_every_subscription_gets_every_envelope_in_order",
    "test_like_totals_add_up_per_room",
]


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisProcess]:
    with run_redis() as proc:
        yield proc


@pytest.fixture
async def bus(redis_proc: RedisProcess) -> AsyncIterator[MessageBus]:
    b = RedisBus(redis_proc.url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        yield b
    finally:
        await b.close()


@pytest.mark.timeout(20)
async def test_unreachable_redis_raises_bus_error() -> None:
    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(BusError):
            await bus.publish(Envelope("r", "chat", "{}"))
        with pytest.raises(BusError):
            await bus.add_likes("r", 1)
        with pytest.raises(BusError):
            async with bus.subscribe():
                pass
    finally:
        await bus.close()
