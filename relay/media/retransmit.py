"""Which NACKed packets a viewer gets again (sans-I/O).

A retransmission is worth its bytes only if it can still be played. A receiver that lost a
packet of a frame cannot decode that frame nor any later one that refers to it: it waits on the
hole until the packet comes or a keyframe starts the picture over. So a packet is worth
resending until a keyframe sent after it supersedes it (``superseded``: past that the receiver
decodes from the keyframe) and at most ``max_age`` after its frame; a keyframe's packet within
``max_age`` (until a viewer has a keyframe it shows nothing). ``playout`` (+ ``playout_rtts``
round trips, capped by ``max_age``) can shorten that for delta frames; by default it does not:
at 0.25 s + 1.5 RTT it refused half of a Chromium viewer's NACKed packets at 2 % loss on a busy
machine, and most of an aiortc viewer's second requests (it asks for a hole again only with the
next new hole, a few hundred ms later at 2 % loss): each refusal froze the viewer to the next
keyframe (up to a GOP), where the packet would have ended the freeze a round trip later.
Past the deadline (its age plus half the round trip at arrival) the packet is left out, as is
one already sent again within the last round trip (the NACK crossed it).

A viewer that never asks for a packet again on its own (aiortc's NackGenerator asks again only
with its next new hole; found from behaviour: ``on_nack``), and any viewer that loses
``FOLLOW_UP_LOSS`` or more of its packets, gets each retransmission twice, the second copy
``FOLLOW_UP_AFTER`` after the first (``follow_up``; not on a link losing more than
``RANDOM_LOSS``, which the stream overruns): a lost retransmission or NACK otherwise
leaves the hole open until the next new hole or keyframe (aiortc) or one more round trip of
the receiver's own (Chromium repeats every ~100 ms: a second round past 183 ms is a freeze).

What is left is paid from two token buckets: one fills with ``share`` of every media byte sent
to the viewer, so retransmissions never take more than that share of its stream (a viewer on
a link the stream does not fit asks for far more than that: answering all of it starves the
link); the other, when the viewer's bandwidth estimate is known, fills at the rate
``rtx_allowance`` gives: what the estimate leaves beside the media, at most ``share`` of the
estimate and at least ``MIN_SHARE`` of it (a lost packet of a viewer whose link is full is
still worth a little).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

MIN_RESEND_GAP = 0.02
"""Seconds between two retransmissions of one packet when the round trip is not known yet."""
MEMORY = 1024
"""Packets whose last retransmission time is remembered (older entries are forgotten)."""
MIN_SHARE = 0.05
"""Share of the estimate retransmissions may always take, however full the link is."""
OPENING = 16 * 1024
"""Bytes of retransmission a viewer may spend before it has earned any (capped by the burst)."""
RATE_BURST = 0.25
"""Seconds of the estimate's retransmission rate that may be saved up for a burst of losses."""
SUPERSEDE_AFTER = 0.25
"""Seconds (plus ``playout_rtts`` round trips) within which a NACKed packet is resent even when
a keyframe went out after it: a receiver that waits on every hole before it (aiortc's jitter
buffer) decodes nothing past it otherwise, not even that keyframe (tests/live/
test_aiortc_adapter.py stalled: a lost packet NACKed 0.09 s after it was sent was refused).
Past it, a receiver that has not repaired the hole yet decodes from the keyframe."""
RANDOM_LOSS = 0.10
"""Loss up to which the estimate holds (``relay.media.estimator.LOSS_HIGH``): the link has
room, and the allowance's floor grows with the loss."""
LOSS_MARGIN = 2.0
"""The floor's multiple of the loss: a Chromium viewer at 5 % loss + 40 ms, its estimate near
its media rate, had 78 of 280 NACKed packets refused over budget at the ``MIN_SHARE`` floor."""


def rtx_allowance(
    target_bps: int | None, media_bps: float, share: float, loss: float = 0.0
) -> float | None:
    """Bits per second of retransmissions a viewer's estimate allows beside ``media_bps`` of
    media (None: no estimate, only the share of the stream limits them). ``loss``: the
    viewer's loss (0..1); up to ``RANDOM_LOSS`` (random loss on a link with room, which the
    estimate does not back off for) the floor is ``LOSS_MARGIN`` times it, at most ``share``:
    what repairing it takes, a lost retransmission asked for again included."""
    if target_bps is None:
        return None
    floor = MIN_SHARE
    if 0.0 < loss <= RANDOM_LOSS:
        floor = max(floor, min(share, LOSS_MARGIN * loss))
    return max(floor * target_bps, min(share * target_bps, target_bps - media_bps))


def estimate_allowance(
    source: str, target_bps: int | None, media_bps: float, share: float, loss: float = 0.0
) -> float | None:
    """``rtx_allowance`` from a viewer's estimate, when it is one: a transport-cc target
    (``source`` "twcc"). REMB from a receiver that reports what it receives (aiortc) and a
    target from receiver reports sit at the media rate, which leaves retransmissions the
    ``MIN_SHARE`` floor, about what 5 % loss needs before any NACK is repeated: a third of a
    viewer's NACKed packets were refused over budget (netbed, 5 % loss + 40 ms). Without one,
    the share of the stream alone limits them."""
    return rtx_allowance(target_bps if source == "twcc" else None, media_bps, share, loss)


FOLLOW_UP_AFTER = 0.03
"""Seconds between a retransmission and its second copy: past a burst of the bed's burst
profile (5 packets at ~150 a second), well within a freeze (183 ms at 30 fps)."""
FOLLOW_UP_LOSS = 0.03
"""Share of its packets a viewer that repeats its NACKs must ask for before its
retransmissions go twice too: at 5 % each way one in ten retransmissions is lost or never
asked for, one in four 720p frames has a hole."""
LOSS_WINDOW = 1.0
"""Seconds over which the share of packets a viewer asks for is counted."""


class Verdict(Enum):
    SEND = "send"
    LATE = "late"  # cannot arrive before its deadline, or a later keyframe superseded it
    REPEAT = "repeat"  # sent again less than a round trip ago
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True, slots=True)
class RetransmitLimits:
    max_age: float = 2.0
    """Seconds after its frame that a packet can still be played (the receiver's patience);
    no packet is resent later than this."""
    playout: float = 2.0
    """Seconds (beyond ``playout_rtts`` round trips) a receiver holds any other frame; at
    ``max_age`` or more only ``max_age`` and a later keyframe limit a delta frame's packets."""
    playout_rtts: float = 1.5
    share: float = 0.25
    """Retransmitted bytes per media byte sent to the viewer, at most."""
    burst: int = 64 * 1024
    """Bytes of unused budget a viewer may save up for a burst of losses."""

    def __post_init__(self) -> None:
        if self.max_age <= 0 or not 0 <= self.share <= 1 or self.burst < 0:
            raise ValueError("max_age > 0, share within 0..1 and burst >= 0")
        if self.playout <= 0 or self.playout_rtts < 0:
            raise ValueError("playout > 0 and playout_rtts >= 0")

    def deadline(self, rtt: float | None, keyframe: bool) -> float:
        """Seconds after its frame that a packet may still arrive."""
        if keyframe:
            return self.max_age
        return min(self.max_age, self.playout + self.playout_rtts * (rtt or 0.0))


class RetransmitBudget:
    """One viewer's retransmissions for one kind: ``on_media`` for every packet sent first,
    ``decide`` for every packet a NACK asks for (counting what it refuses and why)."""

    def __init__(self, limits: RetransmitLimits | None = None) -> None:
        self.limits = limits or RetransmitLimits()
        self.tokens = self.opening  # a first loss is answered
        self._sent_at: dict[int, float] = {}
        self.refused: dict[Verdict, int] = {v: 0 for v in Verdict if v is not Verdict.SEND}
        self.rate_tokens: float | None = None  # the estimate's bucket (bytes), once known
        self._rate_at = 0.0
        self.asks_again = False  # seen asking for a resent packet again on its own
        self.follow_ups = 0  # second copies sent
        self.loss = 0.0  # share of the packets sent that the viewer asked for (last window)
        self.asked_total = 0  # packets asked for that had not been resent yet, ever
        self._asked = 0
        self._window: tuple[float, int] | None = None  # (start, packets sent then)

    def on_nack(
        self,
        sequences: list[int],
        packets_sent: int,
        rtt: float | None,
        now: float,
        *,
        solicited: bool = False,
    ) -> None:
        """A NACK message asking for ``sequences`` (``packets_sent``: the media packets sent so
        far). One that asks only for packets resent at least a round trip ago is the viewer
        repeating its own requests (a browser); aiortc's repeats only ride a new hole, or a
        hole we made to make it ask again (``solicited``: not a sign of a repeater)."""
        sent = self._sent_at
        gap = max(rtt or 0.0, MIN_RESEND_GAP)
        if (
            not solicited
            and sequences
            and all((t := sent.get(s)) is not None and now - t >= gap for s in sequences)
        ):
            self.asks_again = True
        new = sum(1 for s in sequences if s not in sent)
        self._asked += new
        self.asked_total += new
        if self._window is None:
            self._window = (now, packets_sent)
        elif now - self._window[0] >= LOSS_WINDOW:
            packets = packets_sent - self._window[1]
            self.loss = min(1.0, self._asked / packets) if packets > 0 else 0.0
            self._asked, self._window = 0, (now, packets_sent)

    @property
    def wants_follow_up(self) -> bool:
        """Retransmissions go twice (``follow_up``); not while the viewer asks for more than
        ``RANDOM_LOSS`` of its packets: a link the stream overruns (a bottleneck's loss) needs
        fewer bytes, not more."""
        if self.loss > RANDOM_LOSS:
            return False
        return not self.asks_again or self.loss >= FOLLOW_UP_LOSS

    def follow_up(self, sequence: int, size: int, now: float) -> bool:
        """The second copy of ``sequence``, due now: paid like the first, and only when a first
        copy of another packet could still be paid after it (False: not sent)."""
        rate = self.rate_tokens
        if 2 * size > self.tokens or (rate is not None and 2 * size > rate):
            return False
        self.tokens -= size
        if rate is not None:
            self.rate_tokens = rate - size
        self.follow_ups += 1  # (the first copy's time stays: a repeat is measured from it)
        return True

    @property
    def opening(self) -> float:
        """Bytes a new stream (or a new layer's first keyframe) may have resent at once."""
        return float(min(self.limits.burst, OPENING))

    def new_timeline(self) -> None:
        """The viewer moved to another layer: the old one's retransmissions (a layer that
        overran the link spends everything on NACKs nothing can repair in time) leave the
        new one's keyframe at least the opening budget, both buckets full."""
        self.tokens = max(self.tokens, self.opening)
        self.rate_tokens = None  # refilled to its cap at the next decision
        self._sent_at.clear()  # the sequence numbers go on: nothing of the new layer is in it

    def on_media(self, size: int) -> None:
        limits = self.limits
        self.tokens = min(float(limits.burst), self.tokens + limits.share * size)

    def decide(
        self,
        sequence: int,
        size: int,
        age: float,
        rtt: float | None,
        now: float,
        *,
        keyframe: bool = False,
        allowance_bps: float | None = None,
        superseded: bool = False,
    ) -> Verdict:
        """``age``: seconds since the packet's frame was sent first; ``rtt``: the viewer's round
        trip in seconds (None while unknown); ``allowance_bps``: the retransmission rate the
        viewer's estimate allows (``rtx_allowance``; None: no estimate); ``superseded``: a
        keyframe went to the viewer after the packet (the receiver starts over there)."""
        self._refill(allowance_bps, now)
        if superseded and age > SUPERSEDE_AFTER + self.limits.playout_rtts * (rtt or 0.0):
            verdict = Verdict.LATE
        else:
            verdict = self._verdict(sequence, size, age, rtt, now, keyframe)
        if verdict is Verdict.SEND:
            self.tokens -= size
            if self.rate_tokens is not None:
                self.rate_tokens -= size
            sent = self._sent_at
            sent.pop(sequence, None)
            sent[sequence] = now
            if len(sent) > MEMORY:
                del sent[next(iter(sent))]
        else:
            self.refused[verdict] += 1
        return verdict

    def _refill(self, allowance_bps: float | None, now: float) -> None:
        if allowance_bps is None:
            self.rate_tokens = None
            return
        rate = max(0.0, allowance_bps) / 8
        cap = max(2 * 1500.0, rate * RATE_BURST)
        if self.rate_tokens is None:
            self.rate_tokens = cap
        else:
            self.rate_tokens = min(cap, self.rate_tokens + rate * max(0.0, now - self._rate_at))
        self._rate_at = now

    def _verdict(
        self,
        sequence: int,
        size: int,
        age: float,
        rtt: float | None,
        now: float,
        keyframe: bool,
    ) -> Verdict:
        one_way = (rtt or 0.0) / 2
        if age + one_way > self.limits.deadline(rtt, keyframe):
            return Verdict.LATE
        last = self._sent_at.get(sequence)
        if last is not None and now - last < max(rtt or 0.0, MIN_RESEND_GAP):
            return Verdict.REPEAT
        if size > self.tokens or (self.rate_tokens is not None and size > self.rate_tokens):
            return Verdict.OVER_BUDGET
        return Verdict.SEND
