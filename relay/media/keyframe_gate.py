"""One viewer's keyframe requests (PLI/FIR) on their way to the anchor (sans-I/O).

The hub already coalesces the room's requests to one per ``keyframe_interval``; that still lets a
viewer whose link cannot carry the stream (every keyframe it gets arrives damaged, so it asks
again at once) make the anchor send a keyframe every interval, for the whole room. Here a
viewer's requests back off: after one is let through, the next waits ``interval``; a request
that comes less than twice the current wait after the last one let through (the keyframe did not
help: the viewer kept asking) doubles the wait, up to ``max_interval``; one that comes later
(an ordinary loss, some time after the last) starts again at ``interval``.
"""

from __future__ import annotations


class KeyframeGate:
    def __init__(self, interval: float = 0.5, max_interval: float = 8.0) -> None:
        if not 0 < interval <= max_interval:
            raise ValueError("0 < interval <= max_interval")
        self.interval = interval
        self.max_interval = max_interval
        self.wait = interval
        self._last: float | None = None
        self.passed = 0
        self.suppressed = 0

    def request(self, now: float) -> bool:
        """True when this request may go on to the hub."""
        last = self._last
        if last is not None:
            since = now - last
            if since < self.wait:
                self.suppressed += 1
                return False
            if since < 2 * self.wait:
                self.wait = min(self.max_interval, self.wait * 2)
            else:
                self.wait = self.interval
        self._last = now
        self.passed += 1
        return True
