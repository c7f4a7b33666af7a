"""Which node serves a viewer: a pure function of the cluster's node records (sans-I/O).

* An edge in rotation with room to spare serves its own viewers.
* Otherwise the viewer is sent (307) to an edge already pulling the stream (least loaded of
  those), else to the less loaded of two random healthy edges ("power of two choices").
* An origin alone (no edges registered: the single-node default) serves everyone itself.
* Edges exist but every one is full or draining: 503 + Retry-After.
* A node that missed its last heartbeat (silent for more than ``MISSED_BEATS`` of its own
  heartbeat intervals) is left out, as if it were gone, long before its record expires: a dead
  or hung node is never a redirect target for the rest of its TTL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relay.cluster.registry import NodeRecord


@dataclass(frozen=True, slots=True)
class Serve:
    """This node takes the viewer."""


@dataclass(frozen=True, slots=True)
class Redirect:
    node: NodeRecord


@dataclass(frozen=True, slots=True)
class Full:
    reason: str


Decision = Serve | Redirect | Full

MISSED_BEATS = 1.5
"""Silent for this many heartbeat intervals: the node missed its last heartbeat. (A beat is
written every interval plus the time the beat itself takes; half an interval covers that.)"""

FRESH_VIEW = 0.25
"""A view read within this share of a heartbeat interval is judged as of now; an older one (the
registry could not be read again) as of that long after its read, so that an outage of the
registry never takes the nodes it last listed out of rotation."""


def judged_at(now: float, read_at: float, heartbeat: float) -> float:
    """The time a view of the cluster read at ``read_at`` is judged at (see ``FRESH_VIEW``)."""
    return min(now, read_at + heartbeat * FRESH_VIEW)


def missed_heartbeat(node: NodeRecord, now: float) -> bool:
    """Whether ``node`` should have written its record again by ``now`` (``updated_at`` on the
    same clock as ``now``: ``NodeRecord.seen``). A node that does not say how often it beats is
    judged by its record's expiry alone."""
    return node.heartbeat > 0 and now - node.updated_at > node.heartbeat * MISSED_BEATS


def in_rotation(node: NodeRecord) -> bool:
    return node.role == "edge" and not node.draining and node.has_capacity


def choose_edge(
    nodes: list[NodeRecord],
    room: str,
    *,
    rng: random.Random,
    exclude: str = "",
) -> NodeRecord | None:
    """The edge a new viewer of ``room`` should go to, or None when none can take one."""
    candidates = [n for n in nodes if in_rotation(n) and n.id != exclude]
    if not candidates:
        return None
    pulling = [n for n in candidates if room in n.rooms]
    if pulling:
        return min(pulling, key=lambda n: (n.load, n.id))
    pair = rng.sample(candidates, min(2, len(candidates)))
    return min(pair, key=lambda n: (n.load, n.id))


def route(
    me: NodeRecord,
    nodes: list[NodeRecord],
    room: str,
    *,
    rng: random.Random,
    now: float,
) -> Decision:
    """Where a viewer asking ``me`` for ``room`` should be served, at ``now`` (the clock of the
    nodes' ``updated_at``)."""
    nodes = [n for n in nodes if n.id == me.id or not missed_heartbeat(n, now)]
    if me.role == "edge" and in_rotation(me):
        return Serve()
    if me.role == "origin" and not any(n.role == "edge" for n in nodes if n.id != me.id):
        return Serve() if me.has_capacity else Full("this node is full")
    target = choose_edge(nodes, room, rng=rng, exclude=me.id)
    if target is None:
        return Full("every edge is full or draining")
    return Redirect(target)
