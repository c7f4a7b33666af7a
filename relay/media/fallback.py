"""When a viewer should move down (or back up) the rendition ladder, sans I/O.

A viewer whose video keeps overflowing (its socket is backlogged, or its queue full) or whose
receiver reports keep showing loss drops to the next keyframe each time: a stream of freezes. If
that happens ``threshold`` times within ``window`` seconds, the link cannot carry this rendition;
the next lower one is the cure.

A viewer that stepped down is tried one step up again after ``hold`` seconds without congestion.
If it falls back within ``settle`` seconds of that, the link really cannot carry the higher
rendition: the hold doubles (up to ``max_hold``), so a bad link is not flipped every few seconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Track:
    last_overflows: int = 0
    events: deque[float] = field(default_factory=deque)
    down: int = 0  # steps below the rendition the viewer asked for
    last_event: float | None = None
    moved_at: float | None = None
    stepped_up_at: float | None = None
    hold: float = 0.0


class FallbackPolicy:
    def __init__(
        self,
        *,
        threshold: int = 3,
        window: float = 10.0,
        hold: float = 20.0,
        max_hold: float = 300.0,
        settle: float = 30.0,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.hold = hold
        self.max_hold = max_hold
        self.settle = settle
        self._viewers: dict[str, _Track] = {}

    def _track(self, viewer_id: str, overflows: int) -> _Track:
        track = self._viewers.get(viewer_id)
        if track is None:
            track = self._viewers[viewer_id] = _Track(last_overflows=overflows, hold=self.hold)
        return track

    def observe(self, viewer_id: str, overflows: int, now: float) -> bool:
        """Feed a viewer's (monotonic) congestion count; True when it should step down."""
        track = self._track(viewer_id, overflows)
        new = overflows - track.last_overflows
        track.last_overflows = overflows
        for _ in range(max(0, new)):
            track.events.append(now)
            track.last_event = now
        while track.events and now - track.events[0] > self.window:
            track.events.popleft()
        return len(track.events) >= self.threshold

    def should_step_up(self, viewer_id: str, now: float) -> bool:
        """True when a viewer below its rendition has had ``hold`` quiet seconds."""
        track = self._viewers.get(viewer_id)
        if track is None or track.down == 0 or track.moved_at is None:
            return False
        quiet_since = max(track.moved_at, track.last_event or track.moved_at)
        return now - quiet_since >= track.hold

    def moved(self, viewer_id: str, now: float = 0.0, *, down: bool = True) -> None:
        """The viewer changed rendition: judge the new one afresh."""
        track = self._viewers.get(viewer_id)
        if track is None:
            return
        track.events.clear()
        track.moved_at = now
        if down:
            track.down += 1
            if track.stepped_up_at is not None and now - track.stepped_up_at < self.settle:
                track.hold = min(self.max_hold, track.hold * 2)
        else:
            track.down = max(0, track.down - 1)
            track.stepped_up_at = now

    def forget(self, viewer_id: str) -> None:
        self._viewers.pop(viewer_id, None)
