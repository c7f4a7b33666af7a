"""Keeps a stream's RTP timestamps continuous when its source changes (an anchor reconnects).

Each viewer's sender numbers packets itself, so sequence numbers never jump; timestamps come from
the source, so a new source is shifted to continue where the old one stopped, advanced by the
wall-clock time that passed (a decoder then sees a pause, not a jump backwards or far ahead).
"""

from __future__ import annotations

from dataclasses import replace

from relay.media.frames import EncodedFrame, MediaKind


class TimestampRebaser:
    def __init__(self, clock_rates: dict[MediaKind, int]) -> None:
        self._rates = clock_rates
        self._offset: dict[MediaKind, int] = {}
        self._last: dict[MediaKind, tuple[int, float]] = {}  # kind -> (out timestamp, arrival)
        self._pending: set[MediaKind] = set()

    def new_source(self) -> None:
        """The next frame of each kind comes from a new source: rebase it."""
        self._pending = set(self._rates)

    def apply(self, frame: EncodedFrame) -> EncodedFrame:
        kind = frame.kind
        if kind in self._pending:
            # Video viewers resume on the new source's first keyframe: anchor the offset there,
            # so the pause they see in timestamps is the pause they see on the wall clock.
            if kind != "video" or frame.keyframe:
                self._pending.discard(kind)
            last = self._last.get(kind)
            if last is not None:
                elapsed = max(0.0, frame.received_at - last[1])
                target = last[0] + max(1, round(elapsed * self._rates.get(kind, 90000)))
                self._offset[kind] = target - frame.timestamp
        offset = self._offset.get(kind, 0)
        if offset:
            frame = replace(frame, timestamp=frame.timestamp + offset)
        if kind not in self._pending:
            self._last[kind] = (frame.timestamp, frame.received_at)
        return frame
