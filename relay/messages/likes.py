"""Like aggregation (sans-I/O): a flood of likes becomes a counter update a few times a second."""

from __future__ import annotations


class LikeAggregator:
    """Counts likes per room and releases each room's count at most once per ``interval``
    seconds: however many likes arrive, the bus and every subscriber see one update per room
    per interval."""

    def __init__(self, interval: float = 0.25) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = interval
        self._pending: dict[str, int] = {}
        self._last: dict[str, float] = {}  # room -> when its last count was released

    def add(self, room: str, count: int) -> None:
        self._pending[room] = self._pending.get(room, 0) + count

    @property
    def pending(self) -> int:
        return sum(self._pending.values())

    def due(self, now: float) -> list[tuple[str, int]]:
        """(room, likes) whose count may go out now; those are taken from the pending ones."""
        out = []
        for room in sorted(self._pending):
            if now - self._last.get(room, float("-inf")) >= self.interval:
                out.append((room, self._pending.pop(room)))
                self._last[room] = now
        for room in [r for r, t in self._last.items() if now - t > 10 * self.interval]:
            if room not in self._pending:
                del self._last[room]
        return out

    def next_deadline(self, now: float) -> float | None:
        """When the next pending count may go out (None: nothing pending)."""
        if not self._pending:
            return None
        return min(self._last.get(r, now - self.interval) + self.interval for r in self._pending)
