"""How late the event loop runs: media forwarding, signalling and ICE all share that one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from relay.ops.timer_grid import next_tick

log = logging.getLogger(__name__)


class LoopLagMonitor:
    """Measures how late a sleep to the next multiple of ``interval`` wakes up and how busy the
    loop's thread was meanwhile (its own CPU time, so other processes on the machine do not
    count), and remembers the last ``window`` s.

    One event loop can use one core. A loop that is behind, or near that core, cannot take on
    more viewers without making every viewer (and the anchors' ICE consent checks) late:
    ``lagging`` and ``busy`` are what admission control asks.

    While ``idle`` (set by the app) says nobody takes media and no join was asked about within
    the window (``quicken``), it samples every ``idle_interval`` s instead: ten wake-ups a
    second were most of what a node with nothing to do spent. A loop that stays behind is late
    at every sample whatever the interval, and ``busy`` is a CPU share over the whole interval;
    what a long sleep cannot see is a stall that begins and ends inside it (a 0.4 s block in a
    1 s sleep woke it 0.09 s late), which while nobody watches nobody feels. A join ends that
    sleep at once (``quicken``): the join that makes the node watched must not leave the
    sampler blind for up to ``idle_interval`` more (with only "from the next sample on", a
    viewer watching did not stop a 0.4 s block from passing unseen, and the next join was
    admitted)."""

    def __init__(
        self, interval: float = 0.1, window: float = 3.0, idle_interval: float = 1.0
    ) -> None:
        self.interval = interval
        self.window = window
        self.idle_interval = idle_interval
        self.idle: Callable[[], bool] | None = None  # None: always every ``interval``
        self._fast_until = 0.0
        self._due = 0.0  # when the sample under way is due (``quicken`` may bring it forward)
        self._woken: asyncio.Future[None] | None = None  # the sample under way's wake-up
        self.last_lag = 0.0
        self.max_lag = 0.0
        # (time, lag, busy, span: the sample's length, what its busy share weighs)
        self._recent: deque[tuple[float, float, float, float]] = deque()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    def quicken(self) -> None:
        """A join is being judged: sample every ``interval`` for the window, and a sample
        under way that is due later than ``interval`` from now is taken now (its lag: how late
        the loop comes back to it)."""
        now = time.monotonic()
        self._fast_until = now + self.window
        woken = self._woken
        if woken is not None and not woken.done() and self._due - now > self.interval:
            self._due = now
            woken.set_result(None)

    def _next_interval(self) -> float:
        idle = self.idle
        if idle is None or time.monotonic() < self._fast_until:
            return self.interval
        try:
            return self.idle_interval if idle() else self.interval
        except Exception:
            log.exception("loop lag: the idle check failed")
            return self.interval

    def record(self, lag: float, now: float, busy: float = 0.0, span: float = 1.0) -> None:
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        self._recent.append((now, lag, busy, span))
        while self._recent and now - self._recent[0][0] > self.window:
            self._recent.popleft()

    def lagging(self, threshold: float, now: float | None = None) -> bool:
        """Whether the loop was more than ``threshold`` s late within the last window."""
        now = time.monotonic() if now is None else now
        return any(lag > threshold for t, lag, _, _ in self._recent if now - t <= self.window)

    def busy(self, now: float | None = None) -> float:
        """The loop thread's CPU share (of one core) over the last window: each sample weighed
        by its length, as samples are 1 s, 0.1 s or (ended by ``quicken``) shorter: a join's
        own work in a 1 ms sample must not count as much as a quiet second."""
        now = time.monotonic() if now is None else now
        spans = [(b * s, s) for t, _, b, s in self._recent if now - t <= self.window]
        total = sum(s for _, s in spans)
        return sum(w for w, _ in spans) / total if total > 0 else 0.0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            interval = self._next_interval()
            t0, c0 = time.monotonic(), time.thread_time()
            # due on the grid of the node's other timers, woken with them (timer_grid)
            at = loop.time()
            wait = next_tick(at, interval) - at
            self._due = t0 + wait
            self._woken = woken = loop.create_future()
            timer = loop.call_at(at + wait, _wake, woken)
            try:
                await woken
            finally:
                timer.cancel()
                self._woken = None
            now = time.monotonic()
            busy = (time.thread_time() - c0) / max(now - t0, 1e-6)
            self.record(max(0.0, now - self._due), now, min(1.0, busy), now - t0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


class OverloadCheck:
    """Admission control for viewers: overloaded while the loop runs late or near its core
    (None turns a check off). A burst of joins taken in turns (relay.rtc.join_queue) is not
    refused by it: its own work keeps the loop near its core, and its joins wait in line
    instead."""

    def __init__(self, lag: LoopLagMonitor, max_lag: float | None, max_busy: float | None) -> None:
        self.lag = lag
        self.max_lag = max_lag
        self.max_busy = max_busy

    def late(self) -> bool:
        """The loop ran more than ``max_lag`` late within the monitor's window."""
        return self.max_lag is not None and self.lag.lagging(self.max_lag)

    def __call__(self) -> bool:
        self.lag.quicken()
        if self.late():
            return True
        return self.max_busy is not None and self.lag.busy() >= self.max_busy


def overload_check(
    lag: LoopLagMonitor, max_lag: float | None, max_busy: float | None
) -> OverloadCheck:
    """Admission control for viewers: refuse while the loop runs late or near its core (None
    turns a check off)."""
    return OverloadCheck(lag, max_lag, max_busy)
