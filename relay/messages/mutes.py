"""Muted senders per room (sans-I/O): an operator's mute holds until its time is up."""

from __future__ import annotations


class MuteList:
    def __init__(self) -> None:
        self._until: dict[tuple[str, str], float] = {}

    def set(self, room: str, subject: str, until: float, now: float) -> None:
        """Mute ``subject`` in ``room`` until ``until`` (a time not after ``now`` unmutes)."""
        if until <= now:
            self._until.pop((room, subject), None)
        else:
            self._until[(room, subject)] = until
        for key in [k for k, t in self._until.items() if t <= now]:
            del self._until[key]

    def muted_until(self, room: str, subject: str, now: float) -> float | None:
        until = self._until.get((room, subject))
        return until if until is not None and until > now else None

    def listed(self, room: str, now: float) -> dict[str, float]:
        return {s: t for (r, s), t in sorted(self._until.items()) if r == room and t > now}
