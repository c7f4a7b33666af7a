"""Viewer sessions out of the cyclic collector's full passes: the node freezes them once joined.

A full collection scans every object the collector tracks, and stops the whole process while
it runs: with hundreds of peer connections alive (~1,700 tracked objects each) one pass is
100-400 ms, a freeze for every viewer watching. CPython starts a full pass whenever the
objects that survived into the oldest generation grew by a quarter since the last one, so a
flash crowd that takes a node from 0 to 500 viewers brings ~20 of them, each bigger than the
last. ``gc.freeze()`` moves everything alive into a permanent generation that no collection
scans (it costs nothing: the generations' lists are spliced): the node already does it once
after startup, and here again each second in which viewers joined, so full passes only ever
scan what arrived since.

The price: a frozen object that becomes cyclic garbage is not collected while it stays frozen.
A viewer that leaves mostly goes by reference counting, but an aiortc peer connection's
objects refer to each other: once as many frozen sessions have ended as ``thaw_share`` of
those frozen (and at least ``thaw_min``), and no session has joined for ``thaw_quiet`` s (a
burst's failed handshakes end sessions in the middle of it), the node unfreezes,
collects once (one pause the size of what is alive then, at a calm moment after many have
left), and freezes the survivors again. A room whose audience comes and goes all the time is
never quiet that long: there a thaw waits ``thaw_overdue`` s at most (outside a burst), or the
ended sessions' garbage would pile up for as long as the node runs.

``FreezePlan`` decides (sans-I/O: session ids, ``bursting`` and ``now`` in, an action out);
``GcFreezer`` drives it from a task on the loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterator
from enum import Enum

from relay.ops.timer_grid import sleep_to_tick

log = logging.getLogger("stagecast.gc")

_FREEZING = threading.RLock()
"""Freezing is process-wide. A node has one freezer, but a test process runs several nodes'
loops in threads, and a walk of the heap (``thawed``) must not have a freeze land between its
unfreeze and its walk: the frozen objects would be missing from it."""

PERIOD = 1.0  # s between two looks
THAW_SHARE = 0.5  # ended frozen sessions (share of those frozen) that make a thaw worth it
THAW_MIN = 64  # ... and at least this many
THAW_QUIET = 10.0  # s without a new session (and no joins in line) before a thaw
THAW_OVERDUE = 60.0  # s since the last thaw after which joins that keep coming do not delay one


@contextlib.contextmanager
def thawed() -> Iterator[None]:
    """Everything in the collector's view (collectable and listed by ``gc.get_objects``) for the
    block, frozen again after; no freezer step in between."""
    with _FREEZING:
        gc.unfreeze()
        try:
            yield
        finally:
            gc.freeze()


class Action(Enum):
    NOTHING = "nothing"
    FREEZE = "freeze"  # new sessions: freeze what is alive now
    THAW = "thaw"  # enough frozen sessions ended: unfreeze, collect, freeze again


class FreezePlan:
    """Which sessions are frozen, and what to do on each look."""

    def __init__(
        self,
        thaw_share: float = THAW_SHARE,
        thaw_min: int = THAW_MIN,
        thaw_quiet: float = THAW_QUIET,
        thaw_overdue: float = THAW_OVERDUE,
    ) -> None:
        self.thaw_share = thaw_share
        self.thaw_min = thaw_min
        self.thaw_quiet = thaw_quiet
        self.thaw_overdue = thaw_overdue
        self.last_freeze = -1e9
        self.last_thaw = 0.0
        self.frozen: set[Hashable] = set()
        self.freezes = 0
        self.thaws = 0

    def look(self, sessions: Collection[Hashable], bursting: bool, now: float) -> Action:
        alive = set(sessions)
        ended = len(self.frozen - alive)
        calm = not bursting and (
            now - self.last_freeze >= self.thaw_quiet or now - self.last_thaw >= self.thaw_overdue
        )
        if calm and ended >= max(self.thaw_min, self.thaw_share * len(self.frozen)):
            self.frozen = alive
            self.thaws += 1
            self.last_thaw = now
            return Action.THAW
        if alive - self.frozen:
            self.frozen = alive | self.frozen  # the ended stay frozen (garbage until a thaw)
            self.freezes += 1
            self.last_freeze = now
            return Action.FREEZE
        return Action.NOTHING


class GcFreezer:
    """Looks every ``period`` s at the node's sessions and freezes or thaws."""

    def __init__(
        self,
        sessions: Callable[[], Collection[Hashable]],
        bursting: Callable[[], bool],
        plan: FreezePlan | None = None,
        period: float = PERIOD,
    ) -> None:
        self._sessions = sessions
        self._bursting = bursting
        self.plan = plan or FreezePlan()
        self.period = period
        self.last_thaw_s = 0.0  # the last thaw's pause (its collection), s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gc-freezer")

    def step(self) -> Action:
        action = self.plan.look(self._sessions(), self._bursting(), time.monotonic())
        if action is Action.FREEZE:
            with _FREEZING:
                gc.collect(1)  # the young generations' garbage first (cheap: young only)
                gc.freeze()
        elif action is Action.THAW:
            t0 = time.perf_counter()
            with thawed():
                gc.collect()
            self.last_thaw_s = time.perf_counter() - t0
            log.info(
                "gc thaw: %.0f ms to collect the ended sessions' objects (%d frozen left)",
                self.last_thaw_s * 1000,
                gc.get_freeze_count(),
            )
        return action

    async def _run(self) -> None:
        while True:
            await sleep_to_tick(self.period)  # with the node's other timers (timer_grid)
            try:
                self.step()
            except Exception:  # never the end of the node
                log.exception("gc freezer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
