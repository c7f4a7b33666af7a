"""The registry contract (tests/unit/test_registry_contract.py) against Redis, a real redis-server:
the contract's tests are imported here and get this module's `registry` fixture."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from relay.cluster.registry import (
    ClusterEvent,
    ClusterRegistry,
    RoomPolicy,
)
from relay.cluster.registry_redis import RedisRegistry
from tests.support.redis_server import RedisProcess, run_redis
from tests.unit.test_registry_contract import (
    node,
    test_draining_flag,
    test_events_reach_subscribers,
    test_heartbeat_registers_and_ttl_expires,
    test_room_policies_with_ttl,
    test_stream_lease,
)

__all__ = [
    "test_draining_flag",
    "test_events_reach_subscribers",
    "test_heartbeat_registers_and_ttl_expires",
    "test_room_policies_with_ttl",
    "test_stream_lease",
]


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisProcess]:
    with run_redis() as proc:
        yield proc


@pytest.fixture
async def registry(redis_proc: RedisProcess) -> AsyncIterator[ClusterRegistry]:
    reg = RedisRegistry(redis_proc.url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        yield reg
    finally:
        await reg.close()


@pytest.mark.timeout(20)
async def test_unreachable_redis_raises_registry_error() -> None:
    from relay.cluster.registry import RegistryError
    from tests.support.server import free_port

    reg = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    try:
        assert not await reg.ping()
        with pytest.raises(RegistryError):
            await reg.heartbeat(node("a"), ttl=1)
        with pytest.raises(RegistryError):
            await reg.nodes()
        with pytest.raises(RegistryError):
            await reg.acquire_stream("r", "a", 1)
        with pytest.raises(RegistryError):
            await reg.put_room_policies([RoomPolicy("r", private=True)], 1)
        with pytest.raises(RegistryError):
            await reg.room_policy("r")
        with pytest.raises(RegistryError):
            await reg.room_policies()
        with contextlib.suppress(RegistryError):
            await reg.publish(ClusterEvent("node.up", "a"))
    finally:
        await reg.close()
