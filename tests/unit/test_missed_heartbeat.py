"""The missed-heartbeat rule of routing (sans-I/O): a node silent for 1.5 of its own heartbeat
intervals is never a redirect target; a view the registry could not refresh is judged as of its
read. With registries and processes: tests/live/test_failover_parts.py, test_failover.py."""

from __future__ import annotations

import random

import pytest

from relay.cluster.registry import NodeRecord
from relay.cluster.routing import (
    MISSED_BEATS,
    Redirect,
    Serve,
    judged_at,
    missed_heartbeat,
    route,
)

RNG = random.Random(1)


def edge(nid: str, *, updated_at: float, heartbeat: float = 1.0, **kw: object) -> NodeRecord:
    return NodeRecord(
        id=nid,
        url=f"http://{nid}",
        role="edge",
        max_viewers=100,
        updated_at=updated_at,
        heartbeat=heartbeat,
        **kw,  # type: ignore[arg-type]
    )


ORIGIN = NodeRecord(id="o", url="http://o", role="origin", heartbeat=1.0)


def test_a_node_misses_its_heartbeat_after_one_and_a_half_intervals() -> None:
    n = edge("a", updated_at=100.0, heartbeat=2.0)
    assert not missed_heartbeat(n, 100.0 + 2.0 * MISSED_BEATS)
    assert missed_heartbeat(n, 100.0 + 2.0 * MISSED_BEATS + 0.01)
    # a node that does not say how often it beats: judged by its record's TTL alone
    assert not missed_heartbeat(edge("old", updated_at=0.0, heartbeat=0.0), 1e9)


def test_routing_never_redirects_to_a_node_that_missed_its_heartbeat() -> None:
    now = 1000.0
    silent = edge("silent", updated_at=now - 1.6, rooms=("r",))  # pulling: it would win
    alive = edge("alive", updated_at=now - 0.9, viewers=50)
    assert route(ORIGIN, [ORIGIN, silent, alive], "r", rng=RNG, now=now - 0.2) == Redirect(silent)
    assert route(ORIGIN, [ORIGIN, silent, alive], "r", rng=RNG, now=now) == Redirect(alive)
    # every edge silent: as if there were none, the origin serves (rather than 503)
    assert route(ORIGIN, [ORIGIN, silent], "r", rng=RNG, now=now) == Serve()
    # a node never judges itself
    me = edge("me", updated_at=now - 99)
    assert route(me, [ORIGIN, me], "r", rng=RNG, now=now) == Serve()


def test_a_view_the_registry_could_not_refresh_is_judged_as_of_its_read() -> None:
    assert judged_at(now=10.0, read_at=9.9, heartbeat=1.0) == 10.0
    assert judged_at(now=60.0, read_at=9.9, heartbeat=1.0) == pytest.approx(10.15)
    # so an edge alive at the last read stays in rotation through a registry outage
    alive = edge("alive", updated_at=9.0)
    now = judged_at(now=60.0, read_at=9.9, heartbeat=1.0)
    assert route(ORIGIN, [ORIGIN, alive], "r", rng=RNG, now=now) == Redirect(alive)


def test_a_record_is_seen_on_the_readers_clock_and_tolerates_new_fields() -> None:
    r = edge("a", updated_at=5.0, age=0.4)  # the writer's clock is off by 995 s
    assert r.seen(1000.0).updated_at == pytest.approx(999.6)
    assert r.seen(1000.0).age == 0.0
    text = r.to_json()[:-1] + ',"from_a_newer_node":1}'
    assert NodeRecord.from_json(text) == r
