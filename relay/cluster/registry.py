"""The cluster registry: node records with a TTL, stream ownership leases, room policies, events.

One interface (``ClusterRegistry``), two implementations: ``MemoryRegistry`` here (a single node,
the default) and ``RedisRegistry`` in ``registry_redis`` (many nodes).
``registry_factory.make_registry`` picks one from a Redis URL (empty: memory).
``tests/unit/test_registry_contract.py`` holds the contract (memory) and
``tests/live/test_registry_redis.py`` runs it against Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Protocol

NodeRole = Literal["origin", "edge"]
EventKind = Literal[
    "node.up", "node.draining", "node.down", "stream.owned", "stream.released", "room.policy"
]


class RegistryError(Exception):
    """The registry's backend cannot be reached (e.g. Redis is down); callers keep going."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a node says about itself at each heartbeat."""

    id: str
    url: str  # base URL clients and other nodes reach it at
    role: NodeRole
    viewers: int = 0
    max_viewers: int | None = None
    egress_bps: float = 0.0
    max_egress_bps: float | None = None
    cpu: float = 0.0  # percent of one core, as psutil reports it
    draining: bool = False
    rooms: tuple[str, ...] = ()  # streams this node is serving (an edge: pulling) now
    upstream: str = ""  # an edge's upstream base URL
    updated_at: float = 0.0  # wall clock of the heartbeat (in a view: see ``seen``)
    anchors: int = 0  # anchor sessions on this node (an origin's)
    heartbeat: float = 0.0  # seconds between its heartbeats (0: unknown, judged by TTL alone)
    ttl: float = 0.0  # the TTL its record was written with
    age: float = 0.0  # seconds since the record was written, by the registry's clock (on read)

    @property
    def has_capacity(self) -> bool:
        if self.max_viewers is not None and self.viewers >= self.max_viewers:
            return False
        return self.max_egress_bps is None or self.egress_bps < self.max_egress_bps

    @property
    def load(self) -> float:
        """0 (idle) .. 1 (full) by the tighter of its limits; raw viewers when it has none."""
        parts = []
        if self.max_viewers:
            parts.append(self.viewers / self.max_viewers)
        if self.max_egress_bps:
            parts.append(self.egress_bps / self.max_egress_bps)
        return max(parts) if parts else float(self.viewers)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeRecord:
        data: dict[str, Any] = json.loads(text)
        data["rooms"] = tuple(data.get("rooms", ()))
        known = {f.name for f in fields(cls)}  # a newer node's extra fields are ignored
        return cls(**{k: v for k, v in data.items() if k in known})

    def seen(self, now: float) -> NodeRecord:
        """This record as a reader at ``now`` sees it: ``updated_at`` put on the reader's clock
        (``now - age``), so how long a node has been silent never depends on clock skew."""
        return replace(self, updated_at=now - self.age, age=0.0)


@dataclass(frozen=True, slots=True)
class RoomPolicy:
    """Who may watch a room, as the room's origin says. The origin puts the policy of each room
    that is not the default (public, no limit) into the registry at every heartbeat, so that
    every edge enforces it; a room without a record is public."""

    room: str
    private: bool = False  # the audience needs a token for the room, even where anonymous is on
    max_viewers: int | None = None  # viewers of the room on each node
    chat: str = "audience"  # who may chat in the room's channel (relay.messages.policy)
    node_id: str = ""  # the node that publishes it (the room's origin)
    updated_at: float = 0.0  # wall clock of the publication
    # ids of the room's tokens the origin revoked (kicked anchors, removed stage guests) that
    # have not expired: refused on every node, not only where the kick happened
    revoked: tuple[str, ...] = ()

    @property
    def terms(self) -> tuple[bool, int | None, str, tuple[str, ...]]:
        """What the policy says, apart from who said it when."""
        return self.private, self.max_viewers, self.chat, self.revoked

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RoomPolicy:
        data = json.loads(text)
        data["revoked"] = tuple(str(t) for t in data.get("revoked", ()))
        return cls(**data)


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    kind: EventKind
    node_id: str
    room: str = ""
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ClusterEvent:
        return cls(**json.loads(text))


class ClusterRegistry(Protocol):
    """Shared cluster state. Every method may raise ``RegistryError`` when the backend is down."""

    async def heartbeat(self, record: NodeRecord, ttl: float) -> None:
        """Create or refresh this node's record; it vanishes ``ttl`` s after the last call."""
        ...

    async def nodes(self) -> list[NodeRecord]:
        """Every node whose record has not expired, each with its ``age``."""
        ...

    async def remove(self, node_id: str) -> None: ...

    async def set_draining(self, node_id: str, draining: bool) -> None:
        """Mark a registered node as draining (routing skips it) or back in rotation."""
        ...

    async def acquire_stream(self, room: str, node_id: str, ttl: float) -> bool:
        """Take the ownership lease of ``room`` (SET NX EX); True if it is now ``node_id``'s
        (also when it already was: the lease is then refreshed)."""
        ...

    async def refresh_stream(self, room: str, node_id: str, ttl: float) -> bool:
        """Extend the lease if ``node_id`` still holds it."""
        ...

    async def release_stream(self, room: str, node_id: str) -> None:
        """Drop the lease if ``node_id`` holds it."""
        ...

    async def stream_owner(self, room: str) -> str | None: ...

    async def put_room_policies(self, policies: Sequence[RoomPolicy], ttl: float) -> None:
        """Create or refresh each room's policy; each vanishes ``ttl`` s after its last put."""
        ...

    async def remove_room_policy(self, room: str) -> None: ...

    async def room_policy(self, room: str) -> RoomPolicy | None:
        """The room's policy, or None when it has none (public, no limit) or it expired."""
        ...

    async def room_policies(self) -> list[RoomPolicy]:
        """Every room policy that has not expired, by room name."""
        ...

    async def publish(self, event: ClusterEvent) -> None: ...

    def events(self) -> AsyncIterator[ClusterEvent]:
        """Events published from now on (by any node), until the iterator is closed."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryRegistry:
    """A single process's registry: dicts with expiry times, in-process event queues."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._nodes: dict[str, tuple[NodeRecord, float, float]] = {}  # record, expiry, written
        self._leases: dict[str, tuple[str, float]] = {}
        self._policies: dict[str, tuple[RoomPolicy, float]] = {}
        self._subscribers: list[asyncio.Queue[ClusterEvent]] = []

    async def heartbeat(self, record: NodeRecord, ttl: float) -> None:
        now = self._clock()
        self._nodes[record.id] = (replace(record, ttl=ttl, age=0.0), now + ttl, now)

    async def nodes(self) -> list[NodeRecord]:
        now = self._clock()
        for nid in [n for n, (_, exp, _) in self._nodes.items() if exp <= now]:
            del self._nodes[nid]
        records = (replace(rec, age=now - at) for rec, _, at in self._nodes.values())
        return sorted(records, key=lambda r: r.id)

    async def remove(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def set_draining(self, node_id: str, draining: bool) -> None:
        entry = self._nodes.get(node_id)
        if entry is not None and entry[1] > self._clock():
            self._nodes[node_id] = (replace(entry[0], draining=draining), *entry[1:])

    def _lease(self, room: str) -> str | None:
        entry = self._leases.get(room)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._leases[room]
            return None
        return entry[0]

    async def acquire_stream(self, room: str, node_id: str, ttl: float) -> bool:
        owner = self._lease(room)
        if owner is not None and owner != node_id:
            return False
        self._leases[room] = (node_id, self._clock() + ttl)
        return True

    async def refresh_stream(self, room: str, node_id: str, ttl: float) -> bool:
        if self._lease(room) != node_id:
            return False
        self._leases[room] = (node_id, self._clock() + ttl)
        return True

    async def release_stream(self, room: str, node_id: str) -> None:
        if self._lease(room) == node_id:
            del self._leases[room]

    async def stream_owner(self, room: str) -> str | None:
        return self._lease(room)

    async def put_room_policies(self, policies: Sequence[RoomPolicy], ttl: float) -> None:
        expires = self._clock() + ttl
        for policy in policies:
            self._policies[policy.room] = (policy, expires)

    async def remove_room_policy(self, room: str) -> None:
        self._policies.pop(room, None)

    def _live_policies(self) -> dict[str, RoomPolicy]:
        now = self._clock()
        for room in [r for r, (_, exp) in self._policies.items() if exp <= now]:
            del self._policies[room]
        return {room: policy for room, (policy, _) in self._policies.items()}

    async def room_policy(self, room: str) -> RoomPolicy | None:
        return self._live_policies().get(room)

    async def room_policies(self) -> list[RoomPolicy]:
        return [p for _, p in sorted(self._live_policies().items())]

    async def publish(self, event: ClusterEvent) -> None:
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)

    async def events(self) -> AsyncIterator[ClusterEvent]:
        q: asyncio.Queue[ClusterEvent] = asyncio.Queue(maxsize=1000)
        self._subscribers.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            with contextlib.suppress(ValueError):  # (closed already: every queue dropped)
                self._subscribers.remove(q)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._subscribers.clear()
