"""Which NACKed packets a viewer gets again (sans-I/O).

A retransmission is worth its bytes only if it can still be played: a packet whose frame is
older than ``max_age`` by the time it would arrive (its age plus half the round trip) is left
out, as is one already sent again within the last round trip (the NACK crossed it). What is
left is paid from a token bucket that fills with ``share`` of every media byte sent to the
viewer, so retransmissions never take more than that share of its stream (a viewer on a link
the stream does not fit asks for far more than that: answering all of it starves the link).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

MIN_RESEND_GAP = 0.02
"""Seconds between two retransmissions of one packet when the round trip is not known yet."""
MEMORY = 1024
"""Packets whose last retransmission time is remembered (older entries are forgotten)."""


class Verdict(Enum):
    SEND = "send"
    LATE = "late"  # cannot arrive before its playout deadline
    REPEAT = "repeat"  # sent again less than a round trip ago
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True, slots=True)
class RetransmitLimits:
    max_age: float = 2.0
    """Seconds after its frame that a packet can still be played (the receiver's patience)."""
    share: float = 0.25
    """Retransmitted bytes per media byte sent to the viewer, at most."""
    burst: int = 64 * 1024
    """Bytes of unused budget a viewer may save up for a burst of losses."""

    def __post_init__(self) -> None:
        if self.max_age <= 0 or not 0 <= self.share <= 1 or self.burst < 0:
            raise ValueError("max_age > 0, share within 0..1 and burst >= 0")


class RetransmitBudget:
    """One viewer's retransmissions for one kind: ``on_media`` for every packet sent first,
    ``decide`` for every packet a NACK asks for (counting what it refuses and why)."""

    def __init__(self, limits: RetransmitLimits | None = None) -> None:
        self.limits = limits or RetransmitLimits()
        self.tokens = float(min(self.limits.burst, 16 * 1024))  # a first loss is answered
        self._sent_at: dict[int, float] = {}
        self.refused: dict[Verdict, int] = {v: 0 for v in Verdict if v is not Verdict.SEND}

    def on_media(self, size: int) -> None:
        limits = self.limits
        self.tokens = min(float(limits.burst), self.tokens + limits.share * size)

    def decide(
        self, sequence: int, size: int, age: float, rtt: float | None, now: float
    ) -> Verdict:
        """``age``: seconds since the packet's frame was sent first; ``rtt``: the viewer's round
        trip in seconds (None while unknown)."""
        verdict = self._verdict(sequence, size, age, rtt, now)
        if verdict is Verdict.SEND:
            self.tokens -= size
            sent = self._sent_at
            sent.pop(sequence, None)
            sent[sequence] = now
            if len(sent) > MEMORY:
                del sent[next(iter(sent))]
        else:
            self.refused[verdict] += 1
        return verdict

    def _verdict(
        self, sequence: int, size: int, age: float, rtt: float | None, now: float
    ) -> Verdict:
        one_way = (rtt or 0.0) / 2
        if age + one_way > self.limits.max_age:
            return Verdict.LATE
        last = self._sent_at.get(sequence)
        if last is not None and now - last < max(rtt or 0.0, MIN_RESEND_GAP):
            return Verdict.REPEAT
        if size > self.tokens:
            return Verdict.OVER_BUDGET
        return Verdict.SEND
