"""Node selection (pure), pull keys, and how fast default settings drop a dead edge."""

from __future__ import annotations

import random

import pytest

from relay.cluster.registry import NodeRecord
from relay.cluster.routing import Full, Redirect, Serve, choose_edge, route


def edge(nid: str, viewers: int = 0, cap: int | None = 100, **kw: object) -> NodeRecord:
    return NodeRecord(
        id=nid, url=f"http://{nid}:8080", role="edge", viewers=viewers, max_viewers=cap, **kw
    )  # type: ignore[arg-type]


ORIGIN = NodeRecord(id="o", url="http://o", role="origin")


def test_origin_alone_serves() -> None:
    assert route(ORIGIN, [ORIGIN], "r", rng=random.Random(1), now=0.0) == Serve()


def test_edge_with_room_serves_itself_and_full_edge_redirects() -> None:
    me = edge("a", viewers=5)
    assert route(me, [ORIGIN, me], "r", rng=random.Random(1), now=0.0) == Serve()
    full = edge("a", viewers=100)
    other = edge("b", viewers=1)
    assert route(full, [ORIGIN, full, other], "r", rng=random.Random(1), now=0.0) == Redirect(other)
    assert isinstance(route(full, [ORIGIN, full], "r", rng=random.Random(1), now=0.0), Full)


def test_prefers_an_edge_already_pulling_then_least_loaded_of_two() -> None:
    rng = random.Random(7)
    busy_pulling = edge("p", viewers=60, rooms=("r",))
    idle = [edge(f"e{i}", viewers=i) for i in range(5)]
    assert choose_edge([busy_pulling, *idle], "r", rng=rng) == busy_pulling
    picks = {choose_edge(idle, "other", rng=rng).id for _ in range(200)}  # type: ignore[union-attr]
    assert "e4" not in picks  # the most loaded never wins a pair
    assert len(picks) >= 3  # randomness spreads viewers
    drained = [
        edge("d", draining=True),
        edge("f", viewers=100),
        edge("x", max_egress_bps=1e6, egress_bps=2e6),
    ]
    assert choose_edge(drained, "r", rng=rng) is None


def test_load_uses_the_tighter_limit() -> None:
    n = edge("a", viewers=10, cap=100, egress_bps=8e8, max_egress_bps=1e9)
    assert n.load == pytest.approx(0.8)
    assert n.has_capacity


def test_pull_key_per_selection() -> None:
    from relay.media.stream_key import StreamKey

    assert StreamKey("r").id == "r"
    assert StreamKey("r", "360p").id == "r?rendition=360p"
    assert StreamKey("r", anchor="a b").id == "r?anchor=a+b"


async def test_default_settings_take_a_dead_edge_out_within_5_s() -> None:
    from gateway.settings import Settings
    from relay.cluster.registry import MemoryRegistry

    c = Settings().cluster
    now = [0.0]
    reg = MemoryRegistry(clock=lambda: now[0])
    await reg.heartbeat(edge("dead"), ttl=c.node_ttl)  # its last heartbeat, then SIGKILL
    now[0] = c.node_ttl + c.heartbeat  # expired, and every node re-read the view since
    assert now[0] <= 5.0
    assert await reg.nodes() == []
