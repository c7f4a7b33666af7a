"""Which process of a multi-process node takes the next viewer, and how a viewer's resource
URL names that process (sans-I/O: no sockets, no processes, no clock of its own)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FRONT = 0  # the process that owns the public HTTP port; workers are 1..N-1
WORKER_KEY_HEADER = "x-stagecast-worker-key"  # what the front proves itself to its workers with
ROOMS_PATH = "/worker/rooms"
"""A worker's viewers per room (JSON), for its front's per-room limits; the front's only."""
SEPARATOR = "."  # never in a session id (URL-safe base64: A-Z a-z 0-9 - _)
_WORKER_ID = re.compile(r"^([0-9]{1,3})\.([A-Za-z0-9_-]{1,64})$")


def worker_session_id(worker: int, session_id: str) -> str:
    """The id a viewer's resource URL carries for a session served by ``worker``; the
    front's own sessions keep their plain id."""
    return session_id if worker == FRONT else f"{worker}{SEPARATOR}{session_id}"


def split_session_id(resource_id: str) -> tuple[int, str] | None:
    """``(worker, session id)`` of a resource id made by ``worker_session_id`` (a plain id is
    the front's); None when it has a worker prefix that is not a number."""
    if SEPARATOR not in resource_id:
        return FRONT, resource_id
    m = _WORKER_ID.match(resource_id)
    if m is None:
        return None
    return int(m.group(1)), m.group(2)


@dataclass(frozen=True, slots=True)
class WorkerPorts:
    """One worker's media ports: the node's UDP (and ICE-TCP) port plus its index, so a
    node of N processes takes ports ``udp_port .. udp_port+N-1`` (0 stays 0: per peer)."""

    udp: int
    tcp: int


def worker_ports(index: int, udp_port: int, tcp_port: int) -> WorkerPorts:
    return WorkerPorts(udp_port + index if udp_port else 0, tcp_port + index if tcp_port else 0)


@dataclass(slots=True)
class _Load:
    ready: bool = False
    viewers: int = 0  # as last reported
    pending: int = 0  # assigned since that report
    busy: float = 0.0  # share of one core its loop used (0..1), as last reported
    rooms: dict[str, int] = field(default_factory=dict)  # viewers per room, as last reported
    room_pending: dict[str, int] = field(default_factory=dict)  # assigned since, per room


@dataclass(slots=True)
class Assigner:
    """Least-loaded assignment of viewers over processes ``0..count-1``. ``report`` takes each
    process's own figures (viewer count, loop busy share); between reports, each assignment
    counts as one more viewer there, so a burst spreads instead of landing on the process that
    looked emptiest at the last report. A process whose loop is busier than ``max_busy`` (its
    own overload guard would refuse) is skipped while another is not; ``front_weight`` makes
    the front (which also runs ingest, the API and every worker's pull) look that many viewers
    fuller."""

    count: int
    front_serves: bool = True
    front_weight: int = 0
    max_busy: float = 0.8
    _loads: list[_Load] = field(init=False)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a node has at least one process")
        self._loads = [_Load() for _ in range(self.count)]
        self._loads[FRONT].ready = self.front_serves

    def report(
        self,
        worker: int,
        *,
        ready: bool,
        viewers: int,
        busy: float = 0.0,
        rooms: dict[str, int] | None = None,
    ) -> None:
        load = self._loads[worker]
        if worker == FRONT and not self.front_serves:
            ready = False
        load.ready, load.viewers, load.pending, load.busy = ready, viewers, 0, busy
        if rooms is not None:
            load.rooms, load.room_pending = rooms, {}

    def worker_room_viewers(self, room: str) -> int:
        """Viewers of ``room`` on the workers (last reports plus what went since)."""
        return sum(
            load.rooms.get(room, 0) + load.room_pending.get(room, 0) for load in self._loads[1:]
        )

    def down(self, worker: int) -> None:
        """``worker`` exited (it restarts): nothing goes there until it reports ready."""
        self.report(worker, ready=False, viewers=0)

    def viewers(self) -> int:
        """Viewers of the whole node (every process's last report plus what went since)."""
        return sum(load.viewers + load.pending for load in self._loads)

    def worker_viewers(self) -> int:
        """Viewers of the workers (all but the front's)."""
        return sum(load.viewers + load.pending for load in self._loads[1:])

    def pick(self, exclude: frozenset[int] = frozenset(), room: str = "") -> int | None:
        """The process for the next viewer (of ``room``: counted there at once), or None: none
        is ready."""
        ready = [i for i, load in enumerate(self._loads) if load.ready and i not in exclude]
        if not ready:
            return None
        calm = [i for i in ready if self._loads[i].busy < self.max_busy] or ready

        def score(i: int) -> tuple[int, int]:
            load = self._loads[i]
            return load.viewers + load.pending + (self.front_weight if i == FRONT else 0), i

        best = min(calm, key=score)
        load = self._loads[best]
        load.pending += 1
        if room:
            load.room_pending[room] = load.room_pending.get(room, 0) + 1
        return best

    def release(self, worker: int, room: str = "") -> None:
        """An assignment that did not become a viewer (the worker refused it)."""
        load = self._loads[worker]
        load.pending = max(0, load.pending - 1)
        if room and load.room_pending.get(room):
            load.room_pending[room] -= 1
