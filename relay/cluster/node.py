"""A node's membership of the cluster: heartbeat, cached view of the others, routing gate.

``ClusterNode`` drives the sans-I/O parts (``routing``, ``merge_policies``) with a registry
(``registry``): it re-registers at every heartbeat (so a node whose registry came back is
in the cluster again at the next beat), keeps the last view it read (so a registry outage never
stops routing or media), holds the ownership leases of the streams it originates, publishes the
policies of the rooms it is the origin of (private, max viewers) or, on an edge, keeps the view
of those policies that its access checks read, and wakes up early on cluster events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from fastapi import APIRouter, Request

from relay.auth.tokens import LINK_SUBJECT_PREFIX, TokenAuthority, bearer_token
from relay.cluster.presence import hold_presence, presence_router
from relay.cluster.registry import (
    ClusterEvent,
    ClusterRegistry,
    NodeRecord,
    NodeRole,
    RegistryError,
    RoomPolicy,
)
from relay.cluster.routing import FRESH_VIEW, Decision, Full, Redirect, judged_at, route
from relay.errors import ServiceUnavailable, StagecastError
from relay.ops.process_cpu import ProcessCpu
from relay.ops.timer_grid import next_tick

log = logging.getLogger(__name__)

LINK_HEADER = "X-Stagecast-Link"
POLICY_READ_TIMEOUT = 0.5  # a viewer's POST waits at most this for its room's policy
VIEW_READ_TIMEOUT = 0.25  # ... and at most this for a fresh view of the cluster
DOWN_MEMORY = 60.0  # how long a node marked down here is remembered (its record is long gone)


class TemporaryRedirect(StagecastError):
    status, title, type_slug = 307, "Temporary redirect", "redirect"

    def __init__(self, location: str) -> None:
        super().__init__(f"served by {location}", headers={"Location": location})


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node_id: str
    url: str
    role: NodeRole
    heartbeat: float = 1.0
    ttl: float = 3.0
    max_viewers: int | None = None
    max_egress_bps: float | None = None
    retry_after: int = 2
    upstream: str = ""


@dataclass(frozen=True, slots=True)
class NodeLoad:
    viewers: int
    egress_bytes: int  # monotonic total
    rooms: tuple[str, ...] = ()  # streams served (edge: pulled) now
    owned: tuple[str, ...] = ()  # streams originated here (their leases are held)
    anchors: int = 0  # anchor sessions (an origin's)


@dataclass(slots=True)
class ClusterStatus:
    registered: bool = False
    beats: int = 0
    failures: int = 0
    last_error: str = ""
    registrations: int = 0
    events: list[ClusterEvent] = field(default_factory=list)


def merge_policies(
    known: Mapping[str, RoomPolicy],
    read: Iterable[RoomPolicy],
    nodes: Iterable[NodeRecord],
) -> dict[str, RoomPolicy]:
    """The room policies an edge enforces after reading the registry (sans-I/O).

    What the registry holds replaces what was known, but only when an origin is registered: an
    origin puts its policies before its own record at every heartbeat, so with an origin in the
    view its policies are there too, and a room missing from them is public again. Without one
    (a Redis that restarted empty, an origin restarting) the last known policies stay: a private
    room never turns public on the edges because its record is momentarily missing."""
    if not any(n.role == "origin" for n in nodes):
        return dict(known)
    return {p.room: p for p in read}


class ClusterNode:
    def __init__(
        self,
        config: ClusterConfig,
        registry: ClusterRegistry,
        figures: Callable[[], NodeLoad],
        *,
        tokens: TokenAuthority | None = None,
        room_policies: Callable[[], Iterable[RoomPolicy]] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``room_policies``: the policies of the rooms this node is the origin of (it publishes
        them); without it the node reads every origin's policies (an edge)."""
        self.config = config
        self.registry = registry
        self._figures = figures
        self._also: Callable[[], int] | None = None
        self._tokens = tokens
        self._policy_source = room_policies
        self.policies: dict[str, RoomPolicy] = {}  # an edge's view: room -> origin's policy
        self._published: dict[str, tuple[bool, int | None, str, tuple[str, ...]]] = {}
        self._policy_lock = asyncio.Lock()
        self._rng = rng or random.Random()
        self._clock = clock
        self.view: list[NodeRecord] = []  # (``updated_at`` on this node's clock: routing)
        self.view_at = clock()  # when the view was last read
        self._view_read: asyncio.Task[None] | None = None
        self._down: dict[str, float] = {}  # node id -> when it was marked down here
        self.on_upstream_lost: Callable[[], None] | None = None
        self.me = NodeRecord(config.node_id, config.url, config.role)
        self.status = ClusterStatus()
        self.draining = False
        self._owned: set[str] = set()
        self._owned_now: set[str] = set()
        self._last_bytes: tuple[float, int] | None = None
        self._cpu = ProcessCpu()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._cpu.percent()
        await self.beat()
        nid = self.config.node_id
        self._tasks = [
            asyncio.create_task(self._beat_loop(), name=f"cluster-beat-{nid}"),
            asyncio.create_task(self._event_loop(), name=f"cluster-events-{nid}"),
        ]
        if self.config.upstream and self._tokens is not None:
            presence = hold_presence(
                self.config.upstream, nid, self._tokens, self.config.heartbeat, self._lost_upstream
            )
            self._tasks.append(asyncio.create_task(presence, name=f"cluster-presence-{nid}"))

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._tasks, *([self._view_read] if self._view_read else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if not self.status.registered:  # the registry is down: the record expires on its own
            await self.registry.close()
            return
        with contextlib.suppress(RegistryError):
            for room in list(self._owned):
                await self.registry.release_stream(room, self.config.node_id)
            await self.registry.remove(self.config.node_id)
            await self.registry.publish(self._event("node.down"))
        await self.registry.close()

    def _event(self, kind: str, room: str = "") -> ClusterEvent:
        return ClusterEvent(kind, self.config.node_id, room, self._clock())  # type: ignore[arg-type]

    # -- heartbeat --------------------------------------------------------------------------
    def count_also(self, viewers: Callable[[], int]) -> None:
        """Viewers this node serves through other processes (its workers, ``--workers N``):
        in the load it registers, so that routing and ``max_viewers`` see the whole node."""
        self._also = viewers

    def record(self) -> NodeRecord:
        load = self._figures()
        if self._also is not None:
            load = dataclasses.replace(load, viewers=load.viewers + self._also())
        now = self._clock()
        bps = 0.0
        if self._last_bytes is not None and now > self._last_bytes[0]:
            bps = max(0, load.egress_bytes - self._last_bytes[1]) * 8 / (now - self._last_bytes[0])
        self._last_bytes = (now, load.egress_bytes)
        cfg = self.config
        self.me = NodeRecord(
            id=cfg.node_id,
            url=cfg.url,
            role=cfg.role,
            viewers=load.viewers,
            max_viewers=cfg.max_viewers,
            egress_bps=round(bps, 1),
            max_egress_bps=cfg.max_egress_bps,
            cpu=self._cpu.percent(),
            draining=self.draining,
            rooms=tuple(sorted(set(load.rooms) | set(load.owned))),
            upstream=cfg.upstream,
            updated_at=now,
            anchors=load.anchors,
            heartbeat=cfg.heartbeat,
            ttl=cfg.ttl,
        )
        self._owned_now = set(load.owned)
        return self.me

    async def beat(self) -> None:
        """One heartbeat: register/refresh, hold leases, read the cluster view."""
        record = self.record()
        cfg = self.config
        try:
            await self.publish_room_policies()  # before the record: see merge_policies
            await self.registry.heartbeat(record, cfg.ttl)
            for room in self._owned_now - self._owned:
                if await self.registry.acquire_stream(room, cfg.node_id, cfg.ttl):
                    await self.registry.publish(self._event("stream.owned", room))
            for room in self._owned & self._owned_now:
                if not await self.registry.refresh_stream(room, cfg.node_id, cfg.ttl):
                    await self.registry.acquire_stream(room, cfg.node_id, cfg.ttl)
            for room in self._owned - self._owned_now:
                await self.registry.release_stream(room, cfg.node_id)
                await self.registry.publish(self._event("stream.released", room))
            self._owned = set(self._owned_now)
            self._take_view(await self.registry.nodes())
            if self._policy_source is None:
                read = await self.registry.room_policies()
                self.policies = merge_policies(self.policies, read, self.view)
            if not self.status.registered:
                self.status.registered = True
                self.status.registrations += 1
                log.info("node %s registered in the cluster (%s)", cfg.node_id, cfg.role)
                await self.registry.publish(self._event("node.up"))
            self.status.beats += 1
        except RegistryError as exc:
            self.status.failures += 1
            self.status.last_error = str(exc)
            if self.status.registered:
                log.warning("cluster registry unreachable, keeping the last view: %s", exc)
            self.status.registered = False

    async def _beat_loop(self) -> None:
        while not self._stopping:
            # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation)
            with contextlib.suppress(TimeoutError):  # on the node's timer grid (timer_grid)
                beat_at = next_tick(asyncio.get_running_loop().time(), self.config.heartbeat)
                async with asyncio.timeout_at(beat_at):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self.beat()
            except Exception:
                log.exception("cluster heartbeat failed")

    async def _event_loop(self) -> None:
        while True:
            try:
                async for event in self.registry.events():
                    if event.node_id == self.config.node_id:
                        if event.kind == "node.down" and not self._stopping:
                            self._wake.set()  # marked down but alive: register again now
                        continue
                    self.status.events = [*self.status.events[-49:], event]
                    if event.kind == "node.down":
                        self._forget(event.node_id)
                    if event.kind.startswith("node.") or event.kind == "room.policy":
                        self._wake.set()
            except RegistryError:
                pass
            except Exception:
                log.exception("cluster event subscription failed")
            await asyncio.sleep(self.config.heartbeat)

    async def set_draining(self, draining: bool) -> None:
        self.draining = draining
        if not self.status.registered:
            return  # announced with the next successful heartbeat
        with contextlib.suppress(RegistryError):
            await self.registry.set_draining(self.config.node_id, draining)
            if draining:
                await self.registry.publish(self._event("node.draining"))
        self._wake.set()

    # -- room policies ----------------------------------------------------------------------
    async def publish_room_policies(self) -> None:
        """An origin: put the policies of its rooms into the registry (refreshing their TTL),
        remove those of rooms that are gone or back to the default, and tell the other nodes
        when something changed. Runs at every heartbeat, and at once when an operator changes a
        room. Raises ``RegistryError`` (the next heartbeat tries again)."""
        if self._policy_source is None:
            return
        async with self._policy_lock:
            now = self._clock()
            current = {
                p.room: replace(p, node_id=self.config.node_id, updated_at=now)
                for p in self._policy_source()
            }
            # (twice the node TTL: a stalled origin's record lapses before its policies do)
            await self.registry.put_room_policies(list(current.values()), 2 * self.config.ttl)
            for room in sorted(self._published.keys() - current.keys()):
                await self.registry.remove_room_policy(room)
            terms = {room: p.terms for room, p in current.items()}
            changed = terms != self._published
            self._published = terms
            if changed and self.status.registered:
                await self.registry.publish(self._event("room.policy"))

    async def refresh_room_policy(self, room: str) -> RoomPolicy | None:
        """An edge, before it admits a viewer: the room's policy as the registry has it now (so
        a room made private a moment ago is private here too). A policy found replaces the
        known one; none found, an outage or a slow registry leave the known one in force (the
        next heartbeat settles removals)."""
        if self._policy_source is not None or not self.status.registered:
            return self.policies.get(room)
        try:
            async with asyncio.timeout(POLICY_READ_TIMEOUT):
                policy = await self.registry.room_policy(room)
        except (RegistryError, TimeoutError):
            policy = None
        if policy is not None:
            self.policies[room] = policy
        return self.policies.get(room)

    def room_is_private(self, room: str) -> bool:
        policy = self.policies.get(room)
        return policy is not None and policy.private

    def room_chat_mode(self, room: str) -> str:
        """Who may chat in the room's channel, as its origin says (default: ``audience``)."""
        policy = self.policies.get(room)
        return policy.chat if policy is not None else "audience"

    def room_token_revoked(self, room: str, token_id: str) -> bool:
        """Did the room's origin revoke this token (an edge's access check)?"""
        policy = self.policies.get(room)
        return policy is not None and token_id in policy.revoked

    def room_max_viewers(self, room: str) -> int | None:
        policy = self.policies.get(room)
        return policy.max_viewers if policy is not None else None

    # -- the view of the cluster ------------------------------------------------------------
    def _take_view(self, records: list[NodeRecord]) -> None:
        """Keep what the registry listed, each record on this node's clock (``seen``), less
        the nodes marked down here since their last heartbeat."""
        now = self._clock()
        for nid in [n for n, at in self._down.items() if now - at > DOWN_MEMORY]:
            del self._down[nid]
        seen = [r.seen(now) for r in records]
        self.view = [r for r in seen if r.updated_at > self._down.get(r.id, float("-inf"))]
        self.view_at = now

    def _forget(self, node_id: str) -> None:
        self._down[node_id] = self._clock()
        self.view = [n for n in self.view if n.id != node_id]

    async def refresh_view(self) -> None:
        """Before a routing decision: read the view again when it is older than routing judges
        fresh (``routing.FRESH_VIEW``), one read at a time, waiting ``VIEW_READ_TIMEOUT`` at
        most; an outage or a slow registry leave the last view in force."""
        if self._clock() - self.view_at <= self.config.heartbeat * FRESH_VIEW:
            return
        if self._view_read is None or self._view_read.done():
            self._view_read = asyncio.create_task(self._read_view())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(VIEW_READ_TIMEOUT):
                await asyncio.shield(self._view_read)

    async def _read_view(self) -> None:
        with contextlib.suppress(RegistryError):
            self._take_view(await self.registry.nodes())

    async def mark_down(self, node_id: str, reason: str) -> None:
        """A node is gone (its presence connection closed, ...): out of this node's view at
        once, out of the registry (its record removed), and every node told (``node.down``).
        A node marked down that is alive registers again at its next heartbeat."""
        if node_id == self.config.node_id or self._stopping:
            return
        self._forget(node_id)
        log.warning("node %s is down: %s", node_id, reason)
        with contextlib.suppress(RegistryError):
            await self.registry.remove(node_id)
            await self.registry.publish(ClusterEvent("node.down", node_id, "", self._clock()))

    def presence_router(self) -> APIRouter:
        """The route this node's children hold their presence at (``relay.cluster.presence``)."""
        cfg = self.config
        return presence_router(cfg.node_id, cfg.heartbeat, self._tokens, self.mark_down)

    async def _lost_upstream(self, upstream_id: str) -> None:
        if self.on_upstream_lost is not None:
            self.on_upstream_lost()
        await self.mark_down(upstream_id, "the presence connection to it broke")

    # -- cluster listing --------------------------------------------------------------------
    async def current_nodes(self) -> list[NodeRecord]:
        """Every node of the registry, read now (the last view when it cannot be read), this
        node always among them."""
        try:
            now = self._clock()
            nodes = [r.seen(now) for r in await self.registry.nodes()]
        except RegistryError:
            nodes = list(self.view)
        if all(n.id != self.config.node_id for n in nodes):
            nodes.append(replace(self.me, draining=self.draining))
        return sorted(nodes, key=lambda n: n.id)

    # -- routing ----------------------------------------------------------------------------
    def decide(self, room: str) -> Decision:
        me = self.me
        if self.draining != me.draining:
            me = replace(me, draining=self.draining)
        others = [n for n in self.view if n.id != me.id]
        now = judged_at(self._clock(), self.view_at, self.config.heartbeat)
        return route(me, [me, *others], room, rng=self._rng, now=now)

    def is_link(self, request: Request, room: str) -> bool:
        """A pull from another node of the cluster (never routed elsewhere)."""
        if LINK_HEADER.lower() not in request.headers or self._tokens is None:
            return False
        try:
            token = bearer_token(
                request.headers.get("authorization"), request.query_params.get("access_token")
            )
            if token is None:
                return False
            claims = self._tokens.verify(token, room=room, role="audience")
        except StagecastError:
            return False
        return claims.subject.startswith(LINK_SUBJECT_PREFIX)

    def check_whep_post(self, request: Request, room: str) -> None:
        """Raise 307 to the edge that should serve this viewer, or 503 when all are full."""
        if self.is_link(request, room):
            return
        decision = self.decide(room)
        if isinstance(decision, Redirect):
            location = f"{decision.node.url.rstrip('/')}/whep/{room}"
            if request.url.query:
                location += "?" + request.url.query
            raise TemporaryRedirect(location)
        if isinstance(decision, Full):
            raise ServiceUnavailable(decision.reason, retry_after=self.config.retry_after)

    async def whep_gate(self, request: Request) -> None:
        """FastAPI dependency for the WHEP router: routes ``POST /whep/{room}`` only."""
        room = request.path_params.get("room")
        if request.method != "POST" or room is None or "session_id" in request.path_params:
            return
        await self.refresh_view()
        self.check_whep_post(request, str(room))


def link_token(tokens: TokenAuthority, room: str, node_id: str, ttl: float = 300) -> str:
    """The token an edge pulls ``room`` from its upstream with."""
    return tokens.mint(room, "audience", LINK_SUBJECT_PREFIX + node_id, ttl)
