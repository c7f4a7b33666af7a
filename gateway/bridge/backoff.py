"""Pure timing policies of a bridge: the restart backoff of its ffmpeg and its keyframe cadence."""

from __future__ import annotations


class Backoff:
    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        limit: int = 0,
        factor: float = 2.0,
        stable_after: float = 10.0,
    ) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.limit = limit  # consecutive failures allowed; 0 = no limit
        self.factor = factor
        self.stable_after = stable_after
        self.failures = 0

    def failed(self, ran_for: float) -> float | None:
        """Delay before the next attempt after a run that ended after ``ran_for`` seconds, or
        None when the limit of consecutive failures is reached (give up)."""
        if ran_for >= self.stable_after:
            self.failures = 0
        self.failures += 1
        if self.limit and self.failures > self.limit:
            return None
        return float(min(self.maximum, self.initial * self.factor ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


class KeyframeCadence:
    """When to ask the anchor for a keyframe: when none came for ``interval`` seconds. Keyframes
    asked for by anyone count, so several bridges (and viewers) of a room do not add up."""

    def __init__(self, interval: float, start: float, *, lead: float = 0.05) -> None:
        self.interval = interval
        self.lead = lead  # ask this much early: the answer takes a round trip
        self.last = start  # the last keyframe, or the last ask

    def keyframe(self, at: float) -> None:
        self.last = max(self.last, at)

    def due(self, now: float) -> bool:
        """True (and counted as asked) when a request should go out now."""
        if now - self.last < self.interval - self.lead:
            return False
        self.last = now  # at most one ask per interval, even if none comes
        return True
