"""What held a bench viewer's picture (sans-I/O): each hole in its video sequence numbers (when
its receiver NACKed it, every NACK that listed it again, when it was filled), and each freeze
put down to the hole whose repair ended it, to a hole never repaired (the picture started over
at a keyframe), or to no hole at all (the machine, the decoder or the source stalled).

The bed's ``control`` viewer only tells which freezes the whole machine shared; a freeze of a
720p viewer that the cheap 180p control did not share may still be its own decoder waiting for
a core. A freeze with no hole open is not the link's, whatever the control saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Hole = tuple[int, float, list[float], float | None, float | None]
"""(sequence number, first NACKed at, every NACK listing it, filled at, given up at)."""


@dataclass(slots=True)
class _Open:
    nacks: list[float] = field(default_factory=list)
    filled_at: float | None = None
    given_up_at: float | None = None


class HoleLog:
    """Fed by the viewer's NACK generator: ``nacked`` with each NACK's list, ``arrived`` with
    each packet that fills one (a retransmission, or a late original), ``given_up`` with those
    it stops asking for unfilled."""

    def __init__(self) -> None:
        self._holes: dict[int, _Open] = {}

    def nacked(self, now: float, sequences: Iterable[int]) -> None:
        for s in sequences:
            hole = self._holes.setdefault(s, _Open())
            if hole.filled_at is None:
                hole.nacks.append(now)

    def arrived(self, now: float, sequence: int) -> None:
        hole = self._holes.get(sequence)
        if hole is not None and hole.filled_at is None:
            hole.filled_at = now

    def given_up(self, now: float, sequences: Iterable[int]) -> None:
        for s in sequences:
            hole = self._holes.get(s)
            if hole is not None and hole.filled_at is None and hole.given_up_at is None:
                hole.given_up_at = now

    def holes(self) -> list[Hole]:
        return [
            (s, h.nacks[0], h.nacks, h.filled_at, h.given_up_at)
            for s, h in self._holes.items()
            if h.nacks
        ]


@dataclass(frozen=True, slots=True)
class FreezeCause:
    at: float  # when the freeze began (the clock of the events)
    seconds: float
    cause: str  # "repaired" | "keyframe" | "no hole"
    nacks: int  # NACKs that listed the hole before it was filled ("repaired")
    open_s: float  # how long the hole was open ("repaired"; 0 otherwise)
    asked_again_after_s: float  # first NACK to the one that brought the repair (0: one round)


def freeze_causes(
    freezes: Sequence[tuple[float, float]], holes: Sequence[Hole]
) -> list[FreezeCause]:
    """Each freeze ((end, duration)) with what held it: of the holes open for at least half
    of it, the one filled last within it (its filling released the frames queued behind it),
    else one left unfilled (the picture restarted at a keyframe), else none (a hole filled
    in a few ms inside a stall of the machine's did not make it)."""
    out = []
    for end, seconds in freezes:
        start = end - seconds
        open_ = [
            h for h in holes if min(end, h[3] or h[4] or end) - max(start, h[1]) >= seconds / 2
        ]
        filled = [h for h in open_ if h[3] is not None and h[3] <= end]
        if filled:
            _, first, nacks, at, _ = max(filled, key=lambda h: h[3] or 0.0)
            assert at is not None
            before = [t for t in nacks if t < at]
            cause = FreezeCause(start, seconds, "repaired", len(before), at - first,
                                before[-1] - first if before else 0.0)  # fmt: skip
        elif open_:
            cause = FreezeCause(start, seconds, "keyframe", 0, 0.0, 0.0)
        else:
            cause = FreezeCause(start, seconds, "no hole", 0, 0.0, 0.0)
        out.append(cause)
    return out


def hole_summary(holes: Sequence[Hole], longer_than: float = 0.15) -> dict[str, int]:
    """Holes, those filled after one NACK and after more, and those open longer than
    ``longer_than`` s (a freeze by Chromium's rule at 30 fps from ~150 ms of hole), split the
    same way, plus those never filled."""
    out = {"holes": len(holes), "one_nack": 0, "more_nacks": 0, "never": 0,
           "long_one_nack": 0, "long_more_nacks": 0}  # fmt: skip
    for _, first, nacks, filled, _ in holes:
        if filled is None:
            out["never"] += 1
            continue
        once = sum(1 for t in nacks if t < filled) <= 1
        out["one_nack" if once else "more_nacks"] += 1
        if filled - first > longer_than:
            out["long_one_nack" if once else "long_more_nacks"] += 1
    return out
