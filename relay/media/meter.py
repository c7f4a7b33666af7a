"""Sliding-window rate meter (frames/s, bits/s) fed per frame, read by stats and metrics."""

from __future__ import annotations

from collections import deque


class RateMeter:
    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._events: deque[tuple[float, int]] = deque()
        self._bytes = 0
        self.total_frames = 0
        self.total_bytes = 0

    def add(self, now: float, size: int) -> None:
        self._events.append((now, size))
        self._bytes += size
        self.total_frames += 1
        self.total_bytes += size
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window:
            self._bytes -= self._events.popleft()[1]

    def rates(self, now: float) -> tuple[float, float]:
        """(frames per second, bits per second) over the window ending at ``now``."""
        self._trim(now)
        return len(self._events) / self.window, self._bytes * 8 / self.window
