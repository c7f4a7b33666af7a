"""Room policies across the cluster: the origin publishes them, edges enforce them.

The merge rule is pure; the publishing and reading run two real ``ClusterNode`` (an origin and an
edge) on one in-memory registry, with a real ``AccessPolicy`` on the edge (the live cluster over
Redis and relay processes is in ``tests/live/test_cluster.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from gateway.cluster import room_policies
from gateway.stage.table import RoomConfig, StageTable
from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.cluster.node import ClusterConfig, ClusterNode, NodeLoad, merge_policies
from relay.cluster.registry import ClusterEvent, MemoryRegistry, NodeRecord, RoomPolicy
from relay.errors import Forbidden, Unauthorized
from tests.support.server import SECRET

ORIGIN = NodeRecord("o", "http://o", "origin")
EDGE = NodeRecord("e", "http://e", "edge")
VIP = RoomPolicy("vip", private=True, node_id="o")


def test_merge_policies_trusts_the_registry_only_with_an_origin_registered() -> None:
    known = {"vip": VIP}
    capped = RoomPolicy("capped", max_viewers=3, node_id="o")
    # an origin is registered: what the registry holds is the truth (vip is public again)
    assert merge_policies(known, [capped], [ORIGIN, EDGE]) == {"capped": capped}
    assert merge_policies(known, [], [EDGE, ORIGIN]) == {}
    # none is (a Redis that came back empty, an origin restarting): keep what was known
    assert merge_policies(known, [], [EDGE]) == known
    assert merge_policies(known, [capped], []) == known


def test_origin_publishes_private_and_limited_rooms_only() -> None:
    stages = StageTable()
    stages.create("open", RoomConfig())
    stages.create("vip", RoomConfig(private=True))
    stages.create("capped", RoomConfig(max_viewers=2))
    stages.ensure("implicit")
    assert sorted(room_policies(stages), key=lambda p: p.room) == [
        RoomPolicy("capped", max_viewers=2),
        RoomPolicy("vip", private=True),
    ]


def idle() -> NodeLoad:
    return NodeLoad(0, 0)


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[dict[str, RoomPolicy], ClusterNode, ClusterNode]]:
    registry = MemoryRegistry()
    policies: dict[str, RoomPolicy] = {}
    origin = ClusterNode(
        ClusterConfig("o", "http://o", "origin"),
        registry,
        idle,
        room_policies=lambda: list(policies.values()),
    )
    edge = ClusterNode(ClusterConfig("e", "http://e", "edge", upstream="http://o"), registry, idle)
    await origin.beat()
    await edge.beat()
    try:
        yield policies, origin, edge
    finally:
        await registry.close()


@pytest.mark.timeout(10)
async def test_edge_enforces_the_origins_policy(
    nodes: tuple[dict[str, RoomPolicy], ClusterNode, ClusterNode],
) -> None:
    policies, origin, edge = nodes
    tokens = TokenAuthority(SECRET)
    access = AccessPolicy(tokens, anonymous_audience=True, room_is_private=edge.room_is_private)
    assert access.authorize("vip", "audience", None).token_id == ""  # public so far
    events: list[ClusterEvent] = []

    async def listen() -> None:
        async for event in origin.registry.events():
            events.append(event)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)
    try:
        # the operator makes vip private and caps "capped": published at once
        policies["vip"] = RoomPolicy("vip", private=True)
        policies["capped"] = RoomPolicy("capped", max_viewers=2)
        await origin.publish_room_policies()
        await asyncio.sleep(0)
        assert [e.kind for e in events] == ["room.policy"]
        await origin.publish_room_policies()  # unchanged (a heartbeat): no event
        await asyncio.sleep(0)
        assert len(events) == 1
        # the edge reads the room's policy before it admits a viewer
        got = await edge.refresh_room_policy("vip")
        assert got is not None and got.private and got.node_id == "o"
        with pytest.raises(Unauthorized):
            access.authorize("vip", "audience", None)
        other, mine = (f"Bearer {tokens.mint(r, 'audience', 'v', 60)}" for r in ("x", "vip"))
        with pytest.raises(Forbidden):
            access.authorize("vip", "audience", other)
        grant = access.authorize("vip", "audience", mine)
        assert grant.subject == "v"
        assert edge.room_max_viewers("vip") is None
        await edge.beat()  # the heartbeat reads every room's policy
        assert edge.room_max_viewers("capped") == 2 and not edge.room_is_private("capped")
        # back to public: gone from the registry; the edge follows at its next heartbeat
        del policies["vip"]
        await origin.publish_room_policies()
        assert await origin.registry.room_policy("vip") is None
        await edge.beat()
        assert not edge.room_is_private("vip")
        assert access.authorize("vip", "audience", None).token_id == ""
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


@pytest.mark.timeout(10)
async def test_an_emptied_registry_does_not_make_private_rooms_public(
    nodes: tuple[dict[str, RoomPolicy], ClusterNode, ClusterNode],
) -> None:
    policies, origin, edge = nodes
    policies["vip"] = RoomPolicy("vip", private=True)
    await origin.beat()
    await edge.beat()
    assert edge.room_is_private("vip")
    # the registry restarts empty (as Redis without persistence does); the edge beats first
    empty = MemoryRegistry()
    origin.registry = edge.registry = empty
    await edge.beat()
    assert [n.id for n in edge.view] == ["e"]
    assert edge.room_is_private("vip")  # kept: no origin has spoken yet
    assert (await edge.refresh_room_policy("vip")) == edge.policies["vip"]
    await origin.beat()  # re-registers with its policies (written before its record)
    await edge.beat()
    assert edge.room_is_private("vip")
    assert edge.policies["vip"].updated_at > 0


@pytest.mark.timeout(10)
async def test_a_token_revoked_at_the_origin_is_refused_on_the_edges() -> None:
    """A kicked anchor's token may also watch its room: every edge must refuse it, also after
    the room closed, and only until the token expires."""
    now = [1000.0]
    registry = MemoryRegistry()
    tokens = TokenAuthority(SECRET)
    stages = StageTable()
    stages.create("show", RoomConfig())
    at_origin = AccessPolicy(tokens, clock=lambda: now[0])
    origin = ClusterNode(
        ClusterConfig("o", "http://o", "origin"),
        registry,
        idle,
        room_policies=lambda: room_policies(stages, at_origin.revoked_in()),
    )
    edge = ClusterNode(ClusterConfig("e", "http://e", "edge", upstream="http://o"), registry, idle)
    at_edge = AccessPolicy(tokens, revoked_elsewhere=edge.room_token_revoked)
    kicked, kept = (tokens.mint("show", "anchor", name, 600) for name in ("a", "b"))
    try:
        await origin.beat()
        await edge.beat()
        assert await registry.room_policies() == []  # nothing revoked: nothing published
        claims = tokens.claims(kicked)
        at_origin.revoke(claims.token_id, claims.expires_at, "show")
        assert at_origin.revoked_in() == {"show": (claims.token_id,)}
        await origin.publish_room_policies()
        await edge.refresh_room_policy("show")  # as the edge's WHEP does before admitting
        for role in ("audience", "anchor"):
            with pytest.raises(Unauthorized, match="revoked"):
                at_edge.authorize("show", role, f"Bearer {kicked}")  # type: ignore[arg-type]
        assert at_edge.authorize("show", "audience", f"Bearer {kept}").subject == "b"
        # the room closes: its revocation is still published
        stages.remove("show")
        await origin.beat()
        await edge.beat()
        assert edge.room_token_revoked("show", claims.token_id)
        with pytest.raises(Unauthorized):
            at_edge.authorize("show", "audience", f"Bearer {kicked}")
        # the token expired: the revocation is forgotten (nothing left to refuse)
        now[0] = claims.expires_at + 1
        assert at_origin.revoked_in() == {}
        await origin.beat()
        await edge.beat()
        assert not edge.room_token_revoked("show", claims.token_id)
    finally:
        await registry.close()


def test_room_policy_json_keeps_revocations_and_reads_old_records() -> None:
    policy = RoomPolicy("r", private=True, revoked=("t1", "t2"))
    assert RoomPolicy.from_json(policy.to_json()) == policy
    assert RoomPolicy.from_json('{"room":"r","private":true}').revoked == ()
