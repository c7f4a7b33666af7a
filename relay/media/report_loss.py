"""A viewer's loss from its receiver reports, over a second or more (sans-I/O).

A report block's ``fraction lost`` covers only the packets since the receiver's previous
report, and browsers put a report block in every compound RTCP packet, each NACK included:
a NACK sent right after a hole reports that hole against the handful of packets since the last
one. At 2 % random loss a Chromium viewer's reports said 7-11 % (netbed, loss2), two of them
within 4 s counted as congestion, and the layer selector moved it down to 180p on a link with
room to spare. Here the loss is taken from the cumulative counters (extended highest sequence
number, cumulative packets lost) over a window of at least ``WINDOW`` seconds and
``MIN_PACKETS`` expected packets: one judgement per window, whatever the report rate. The
cumulative count drops again for packets that arrive late (a retransmission), so what a window
shows is the loss that retransmission did not repair by its end: random loss on a link with
room is repaired; a bottleneck's is not (its retransmissions are dropped too, or refused).
"""

from __future__ import annotations

WINDOW = 1.0
"""Seconds of reports a loss judgement covers, at least."""
MAX_WINDOW = 3.0
"""Seconds after which a window is judged even with fewer than ``MIN_PACKETS`` (a thin layer)."""
MIN_PACKETS = 20
"""Packets a window must cover (expected) before it is judged within ``MAX_WINDOW``."""
LOSSY = 0.1
"""Loss over a window at which it counts as a lossy one (congestion for the layer selector)."""
FIRST_LOST = 10
"""Packets the first report must count lost for its own ``fraction lost`` (which covers every
packet since the stream began) to be judged at once: a viewer that joins behind a thin link is
known lossy at its first report, a second or two before the first window could close."""

_SEQ_SPAN = 1 << 32
_LOST_SPAN = 1 << 24


class ReportLoss:
    """``on_report`` for each report block about our stream; ``fraction`` is the loss of the
    last window judged, ``lossy`` counts the windows at or above ``LOSSY``, ``clean`` those
    below it that covered ``MIN_PACKETS`` or more (the viewer got the stream: a window of a
    receiver that gets nothing is judged lossless too)."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self.lossy = 0
        self.clean = 0
        self.windows = 0
        self._start: tuple[float, int, int] | None = None  # (time, highest, lost)

    def on_report(self, highest: int, lost: int, now: float, fraction: float | None = None) -> bool:
        """``highest``: the extended highest sequence number received; ``lost``: the cumulative
        number of packets lost (signed); ``fraction``: the report's own fraction lost (0..1), read
        from the first report only. True when this report closed a lossy window."""
        start = self._start
        if start is None:
            self._start = (now, highest, lost)
            if (
                fraction is not None
                and LOSSY <= fraction <= 1.0
                and FIRST_LOST <= lost < _LOST_SPAN // 2
            ):
                self.fraction = fraction
                self.windows += 1
                self.lossy += 1
                return True
            return False
        at, highest0, lost0 = start
        expected = (highest - highest0) % _SEQ_SPAN
        if expected >= _SEQ_SPAN // 2 or now < at:  # older than the window's start: a restart
            self._start = (now, highest, lost)
            return False
        span = now - at
        if span < WINDOW or (expected < MIN_PACKETS and span < MAX_WINDOW):
            return False
        missing = (lost - lost0) % _LOST_SPAN
        if missing >= _LOST_SPAN // 2:  # fewer lost than before: late arrivals, duplicates
            missing = 0
        self.fraction = min(1.0, missing / expected) if expected else 0.0
        self.windows += 1
        self._start = (now, highest, lost)
        if self.fraction >= LOSSY:
            self.lossy += 1
            return True
        if expected >= MIN_PACKETS:
            self.clean += 1
        return False
