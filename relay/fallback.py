"""When a viewer should fall back to a lower rendition, sans I/O.

A viewer whose video keeps overflowing (its socket is backlogged, or its queue full) drops to the
next keyframe each time: a stream of freezes. If that happens ``threshold`` times within
``window`` seconds, the link cannot carry this rendition; the next lower one is the cure.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Track:
    last_overflows: int = 0
    events: deque[float] = field(default_factory=deque)


class FallbackPolicy:
    def __init__(self, *, threshold: int = 3, window: float = 10.0) -> None:
        self.threshold = threshold
        self.window = window
        self._viewers: dict[str, _Track] = {}

    def observe(self, viewer_id: str, overflows: int, now: float) -> bool:
        """Feed a viewer's (monotonic) video overflow count; True when it should step down."""
        track = self._viewers.setdefault(viewer_id, _Track(last_overflows=overflows))
        new = overflows - track.last_overflows
        track.last_overflows = overflows
        for _ in range(max(0, new)):
            track.events.append(now)
        while track.events and now - track.events[0] > self.window:
            track.events.popleft()
        return len(track.events) >= self.threshold

    def moved(self, viewer_id: str) -> None:
        """The viewer stepped down: judge the new rendition afresh."""
        track = self._viewers.get(viewer_id)
        if track is not None:
            track.events.clear()

    def forget(self, viewer_id: str) -> None:
        self._viewers.pop(viewer_id, None)
