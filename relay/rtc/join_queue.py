"""Joins take turns: a burst of viewers is answered a few at a time, not all in one loop turn.

A viewer's offer/answer is ~2-3 ms of the event loop's one core, in a few steps. Hundreds of
POSTs arriving together would each run their first step in the same turn of the loop, and the
viewers already watching would wait for all of them (a freeze of a second or more). Here at
most ``concurrency`` joins are between their first and last step at once, and each step yields
to the loop, so a turn carries a few milliseconds of join work at most. The others wait in
line, and they wait rather than being refused while the line's expected wait stays within
``max_wait`` (a joining viewer would rather see its first frame two seconds late than get a
503); beyond it, 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from relay.errors import ServiceUnavailable

DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_WAIT = 8.0  # s a join may be expected to wait for its turn before 503
RECENT = 3.0  # s after a burst during which it still explains a busy loop (LoopLagMonitor's window)


class JoinQueue:
    """The line of joins of one node (one event loop)."""

    def __init__(
        self,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_wait: float = DEFAULT_MAX_WAIT,
        *,
        retry_after: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1 or max_wait <= 0:
            raise ValueError("concurrency must be >= 1 and max_wait positive")
        self.concurrency = concurrency
        self.max_wait = max_wait
        self.retry_after = retry_after
        self._clock = clock
        self._running = 0
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()
        self._turn_s = 0.005  # a turn's mean length (wall clock), learned
        self._last_end = -RECENT
        self.taken = 0  # turns taken, monotonic
        self.refused = 0  # joins refused because the line was too long
        self.max_waiting = 0  # the longest line seen

    @property
    def waiting(self) -> int:
        return len(self._line)

    def expected_wait(self) -> float:
        """Seconds a join arriving now would wait for its turn (from the recent turns' length)."""
        return (len(self._line) + 1) * self._turn_s / self.concurrency if self._full() else 0.0

    def bursting(self, now: float | None = None) -> bool:
        """Joins are in line or being answered, or a join had to wait in line within the last
        few seconds: a busy loop is (at least partly) their doing, and they are taken in turns.
        A trickle of joins that never waits does not count (it would switch the busy-loop
        guard off for good)."""
        now = self._clock() if now is None else now
        return self._running > 0 or bool(self._line) or now - self._last_end < RECENT

    def _full(self) -> bool:
        return self._running >= self.concurrency or bool(self._line)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for this join's turn (ServiceUnavailable when the line is too long), then
        hold one of the ``concurrency`` places until the block ends."""
        queued = self._full()
        if queued:
            if self.expected_wait() > self.max_wait:
                self.refused += 1
                raise ServiceUnavailable(
                    "this node is taking a burst of viewers; try again shortly",
                    retry_after=self.retry_after,
                )
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._line.append(waiter)
            self.max_waiting = max(self.max_waiting, len(self._line))
            try:
                await waiter  # _leave hands its place over: _running already counts this one
            except BaseException:
                if waiter in self._line:
                    self._line.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._leave()  # handed the place just as it was cancelled: pass it on
                raise
        else:
            self._running += 1
        start = self._clock()
        self.taken += 1
        try:
            yield
        finally:
            end = self._clock()
            self._turn_s += 0.1 * (end - start - self._turn_s)
            if queued or self._line:
                self._last_end = end
            self._leave()

    def _leave(self) -> None:
        while self._line:
            waiter = self._line.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place passes straight to the next in line
                return
        self._running -= 1
