"""How late the event loop runs: media forwarding, signalling and ICE all share that one loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable


class LoopLagMonitor:
    """Measures how late a ``interval`` sleep wakes up, and remembers the last ``window`` s.

    A loop that is behind cannot take on more viewers without making every viewer (and the
    anchor's ICE consent checks) late: ``lagging`` is what admission control asks."""

    def __init__(self, interval: float = 0.1, window: float = 3.0) -> None:
        self.interval = interval
        self.window = window
        self.last_lag = 0.0
        self.max_lag = 0.0
        self._recent: deque[tuple[float, float]] = deque()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    def record(self, lag: float, now: float) -> None:
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        self._recent.append((now, lag))
        while self._recent and now - self._recent[0][0] > self.window:
            self._recent.popleft()

    def lagging(self, threshold: float, now: float | None = None) -> bool:
        """Whether the loop was more than ``threshold`` s late within the last window."""
        now = time.monotonic() if now is None else now
        return any(lag > threshold for t, lag in self._recent if now - t <= self.window)

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.record(max(0.0, now - t0 - self.interval), now)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def overload_check(lag: LoopLagMonitor, threshold: float | None) -> Callable[[], bool]:
    """Admission control for viewers: refuse while the loop runs late (None: never)."""
    if threshold is None:
        return lambda: False
    return lambda: lag.lagging(threshold)
