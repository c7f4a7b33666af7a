"""The cluster registry on Redis (``redis.asyncio``): the multi-node implementation.

Keys (all under ``prefix``):

* ``node:{id}``   the node's JSON record, SET with PX = ttl at every heartbeat (expiry = death)
* ``nodes``       a set of node ids ever seen; ids whose record expired are pruned on read
* ``stream:{room}`` the ownership lease: the owner's id, SET NX PX, refreshed/released with
  compare-and-set scripts so a node never extends or drops another node's lease
* ``room:{room}`` a room's policy (``RoomPolicy`` JSON) put by its origin, SET with PX = ttl at
  every heartbeat (an origin that stops takes its policies with it)
* ``rooms``       a set of rooms whose policy was ever put; pruned on read like ``nodes``
* ``events``      the pub/sub channel of ``ClusterEvent`` JSON messages

Every backend failure is raised as ``RegistryError``; timeouts are short so an outage is noticed
at once and never stalls a caller for long.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.cluster.registry import ClusterEvent, NodeRecord, RegistryError, RoomPolicy

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisRegistry:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "stagecast:",
        timeout: float = 1.0,
    ) -> None:
        self._prefix = prefix
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1),  # once: a pooled connection may predate an outage
            health_check_interval=5,
        )
        self._channel = prefix + "events"

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}"

    def _lease_key(self, room: str) -> str:
        return f"{self._prefix}stream:{room}"

    def _policy_key(self, room: str) -> str:
        return f"{self._prefix}room:{room}"

    async def heartbeat(self, record: NodeRecord, ttl: float) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                stored = replace(record, ttl=ttl, age=0.0)  # (the TTL: its age on read)
                pipe.set(self._node_key(record.id), stored.to_json(), px=_ms(ttl))
                pipe.sadd(self._prefix + "nodes", record.id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def nodes(self) -> list[NodeRecord]:
        try:
            ids = sorted(i.decode() for i in await self._redis.smembers(self._prefix + "nodes"))
            if not ids:
                return []
            keys = [self._node_key(i) for i in ids]
            async with self._redis.pipeline(transaction=True) as pipe:  # one moment for all
                pipe.mget(keys)
                for key in keys:
                    pipe.pttl(key)
                raw, *pttls = await pipe.execute()
            gone = [i for i, r in zip(ids, raw, strict=True) if r is None]
            if gone:
                await self._redis.srem(self._prefix + "nodes", *gone)
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc
        records = []
        for r, pttl in zip(raw, pttls, strict=True):
            if r is None:
                continue
            with contextlib.suppress(ValueError, TypeError, json.JSONDecodeError):
                record = NodeRecord.from_json(r)
                if record.ttl > 0 and pttl >= 0:  # written ttl ago, pttl left: Redis's clock
                    record = replace(record, age=max(0.0, record.ttl - pttl / 1000))
                records.append(record)
        return records

    async def remove(self, node_id: str) -> None:
        try:
            await self._redis.delete(self._node_key(node_id))
            await self._redis.srem(self._prefix + "nodes", node_id)
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def set_draining(self, node_id: str, draining: bool) -> None:
        key = self._node_key(node_id)
        try:
            raw = await self._redis.get(key)
            if raw is None:
                return
            record = replace(NodeRecord.from_json(raw), draining=draining)
            await self._redis.set(key, record.to_json(), keepttl=True, xx=True)
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def acquire_stream(self, room: str, node_id: str, ttl: float) -> bool:
        key = self._lease_key(room)
        try:
            if await self._redis.set(key, node_id, nx=True, px=_ms(ttl)):
                return True
            return bool(await self._redis.eval(_REFRESH, 1, key, node_id, _ms(ttl)))
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def refresh_stream(self, room: str, node_id: str, ttl: float) -> bool:
        try:
            key = self._lease_key(room)
            return bool(await self._redis.eval(_REFRESH, 1, key, node_id, _ms(ttl)))
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def release_stream(self, room: str, node_id: str) -> None:
        try:
            await self._redis.eval(_RELEASE, 1, self._lease_key(room), node_id)
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def stream_owner(self, room: str) -> str | None:
        try:
            raw = await self._redis.get(self._lease_key(room))
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc
        return None if raw is None else str(raw.decode())

    async def put_room_policies(self, policies: Sequence[RoomPolicy], ttl: float) -> None:
        if not policies:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for policy in policies:
                    pipe.set(self._policy_key(policy.room), policy.to_json(), px=_ms(ttl))
                pipe.sadd(self._prefix + "rooms", *(p.room for p in policies))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def remove_room_policy(self, room: str) -> None:
        try:
            await self._redis.delete(self._policy_key(room))
            await self._redis.srem(self._prefix + "rooms", room)
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def room_policy(self, room: str) -> RoomPolicy | None:
        try:
            raw = await self._redis.get(self._policy_key(room))
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc
        if raw is None:
            return None
        try:
            return RoomPolicy.from_json(raw)
        except (ValueError, TypeError):
            return None

    async def room_policies(self) -> list[RoomPolicy]:
        try:
            rooms = sorted(r.decode() for r in await self._redis.smembers(self._prefix + "rooms"))
            if not rooms:
                return []
            raw = await self._redis.mget([self._policy_key(r) for r in rooms])
            gone = [r for r, v in zip(rooms, raw, strict=True) if v is None]
            if gone:
                await self._redis.srem(self._prefix + "rooms", *gone)
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc
        policies = []
        for r in raw:
            if r is None:
                continue
            with contextlib.suppress(ValueError, TypeError):
                policies.append(RoomPolicy.from_json(r))
        return policies

    async def publish(self, event: ClusterEvent) -> None:
        try:
            await self._redis.publish(self._channel, event.to_json())
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def events(self) -> AsyncIterator[ClusterEvent]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is None or msg.get("type") != "message":
                    continue
                with contextlib.suppress(ValueError, TypeError, json.JSONDecodeError):
                    yield ClusterEvent.from_json(msg["data"])
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()
