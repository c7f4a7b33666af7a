"""What one viewer saw (sans-I/O): freezes counted as Chromium counts them, glass-to-glass
percentiles, time to first frame and rates."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass

FREEZE_MIN_INCREASE = 0.150
"""Chromium (VideoQualityObserver): a frame interval is a freeze when it is at least
max(3 x the average of the last 30 intervals, that average + 150 ms): 183 ms at 30 fps."""
AVERAGE_WINDOW = 30
GAP_INTERVALS = 3
"""Issue 17's plain rule beside Chromium's: a frame interval longer than 3 nominal intervals
(100 ms at 30 fps) is a gap; Chromium's rule needs 183 ms at 30 fps, so a repair that takes
two round trips can stall the picture visibly and still count as no freeze there."""


def gaps(times: Sequence[float], nominal_interval: float = 1 / 30) -> list[tuple[float, float]]:
    """(end, duration) of each interval between ``times`` (sorted) over ``GAP_INTERVALS``
    nominal intervals."""
    limit = GAP_INTERVALS * nominal_interval
    return [(b, b - a) for a, b in itertools.pairwise(times) if b - a > limit]


class FreezeCounter:
    """Feeds on the times frames were rendered (decoded, here); ``finish`` also counts a freeze
    still going on at the end of the run, which Chromium would only count at the next frame (a
    viewer that never recovers would otherwise show none)."""

    def __init__(self, window: int = AVERAGE_WINDOW, nominal_interval: float = 1 / 30) -> None:
        self._nominal = nominal_interval  # the average before the first interval is known
        self._intervals: deque[float] = deque(maxlen=window)
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.frames = 0
        self.freezes = 0
        self.frozen_seconds = 0.0
        self.longest = 0.0
        self.events: list[tuple[float, float]] = []  # (end, duration) of each freeze
        self.gap_events: list[tuple[float, float]] = []  # the same by ``GAP_INTERVALS``

    def _threshold(self) -> float:
        n = len(self._intervals)
        avg = sum(self._intervals) / n if n else self._nominal
        return max(3 * avg, avg + FREEZE_MIN_INCREASE)

    def _note(self, interval: float, end: float) -> None:
        threshold = self._threshold()
        if interval >= threshold:
            self.events.append((end, interval))
            self.freezes += 1
            self.frozen_seconds += interval
            self.longest = max(self.longest, interval)

    def frame(self, now: float) -> None:
        self.frames += 1
        if self.last_at is None:
            self.first_at = now
        else:
            interval = now - self.last_at
            self._note(interval, now)
            if interval > GAP_INTERVALS * self._nominal:
                self.gap_events.append((now, interval))
            self._intervals.append(interval)
        self.last_at = now

    def finish(self, now: float) -> None:
        if self.last_at is not None and now > self.last_at:
            self._note(now - self.last_at, now)
            if now - self.last_at > GAP_INTERVALS * self._nominal:
                self.gap_events.append((now, now - self.last_at))

    def frozen_share(self, end: float) -> float:
        """Share of the time from the first frame to ``end`` spent frozen (1.0 with no frame)."""
        if self.first_at is None:
            return 1.0
        span = end - self.first_at
        return min(1.0, self.frozen_seconds / span) if span > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` within 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Playback:
    """One viewer's run, as the bench prints it."""

    frames: int
    stamped: int  # frames whose stamp could be read (an undamaged top band)
    fps: float
    kbps: float  # all the connection's received bytes (media, RTX, RTCP)
    ttff_s: float | None
    freezes: int
    frozen_share: float
    longest_freeze_s: float
    g2g_p50_ms: float | None
    g2g_p95_ms: float | None
    packets_lost: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(
    counter: FreezeCounter,
    latencies_ms: Sequence[float],
    *,
    joined_at: float,
    end: float,
    bytes_received: int,
    packets_lost: int = 0,
) -> Playback:
    """Close ``counter`` at ``end`` and sum up the run (times on one monotonic clock)."""
    counter.finish(end)
    first = counter.first_at
    span = end - first if first is not None else 0.0
    return Playback(
        frames=counter.frames,
        stamped=len(latencies_ms),
        fps=counter.frames / span if span > 0 else 0.0,
        kbps=bytes_received * 8 / 1000 / (end - joined_at) if end > joined_at else 0.0,
        ttff_s=None if first is None else first - joined_at,
        freezes=counter.freezes,
        frozen_share=counter.frozen_share(end),
        longest_freeze_s=counter.longest,
        g2g_p50_ms=percentile(latencies_ms, 50),
        g2g_p95_ms=percentile(latencies_ms, 95),
        packets_lost=packets_lost,
    )
