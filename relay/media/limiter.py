"""Rate limiting for keyframe requests: many viewers' PLIs collapse into one upstream request."""

from __future__ import annotations


class IntervalLimiter:
    """Allows an action at most once per ``interval`` seconds; a refused call is remembered so the
    caller can retry it when the interval has passed (``due``)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self.pending = False
        self.allowed = 0
        self.coalesced = 0

    def try_acquire(self, now: float) -> bool:
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            self.pending = False
            self.allowed += 1
            return True
        self.pending = True
        self.coalesced += 1
        return False

    def reset(self) -> None:
        """Forget the last action (a new source has never been asked)."""
        self._last = None
        self.pending = False

    def due(self, now: float) -> float | None:
        """Seconds until a pending request may go out, or None when nothing is pending."""
        if not self.pending or self._last is None:
            return None
        return max(0.0, self.interval - (now - self._last))
