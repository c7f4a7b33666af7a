"""Packets a viewer lost that it did not ask for, found in its transport-cc feedback (sans-I/O).

A Chromium viewer NACKs a hole when it sees it, and asks again only after its own round-trip
estimate (libwebrtc's NackRequester), which a receive-only Chromium never measures: it keeps
the default, 100 ms. When that first NACK is lost on the way (5 % loss on the uplink), the hole
waits ~100 ms for the repeat plus a round trip for the answer: a frame gap past Chromium's
183 ms freeze threshold at 40 ms RTT. The viewer's transport-cc feedback (every 50-100 ms)
already says which packets did not arrive. A media packet it reports lost for which no NACK
came within ``MARGIN`` (the NACK leaves at gap detection, before or with the feedback; the
margin is for the uplink's jitter between the two) is resent as if NACKed: same budget, same
deadline, and a NACK that comes later within a round trip is a repeat
(``relay.media.retransmit``). A packet a later feedback reports received (reordered, late)
before the margin is up is left alone.

``on_sent`` every frame's run of numbers (transport-wide first, RTP first, count), ``on_nack``
every NACK, ``on_lost`` what a feedback reported lost; ``due`` hands out the RTP sequence
numbers to resend once their margin has passed.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Any

MARGIN = 0.02
"""Seconds a packet reported lost waits for its NACK before it is resent without one: the
jitter between a NACK and the feedback that left with it (the bed's +-10 ms per packet)."""
MEMORY = 1024
"""RTP sequence numbers NACKed lately (and packets waiting for their margin), at most."""
RUNS = 256
"""Frames whose numbers are remembered, at least (~8 s at 30 fps; the budget's deadline is 2 s)."""
MAX_PER_FEEDBACK = 64
"""Lost packets taken from one feedback (its newest): an honest one reports a few; one that
says everything was lost costs no more than this."""


class FeedbackRepair:
    """One video sender's packets lost without a NACK. Counters: ``reported`` (media packets
    the feedback reported lost), ``unasked`` (no NACK within the margin), ``late_nacks`` (of
    those, a NACK came after all; ``late_nack_delay``: seconds from their send to it, summed;
    ``unasked_delay``: seconds from their send to the end of their margin, summed: what a
    repair gains on the viewer's own repeat is the difference of the two means)."""

    def __init__(self, margin: float = MARGIN) -> None:
        if margin < 0:
            raise ValueError("margin >= 0")
        self.margin = margin
        # one entry per frame (per frame and viewer: an append, no loop): its first
        # transport-wide number unwrapped, and (first RTP number, packets, send time)
        self._starts: list[int] = []
        self._runs: list[tuple[int, int, float]] = []
        self._newest: tuple[int, int] | None = None  # (16-bit, unwrapped) of the last start
        self._nacked: dict[int, float] = {}  # RTP sequence number -> when a NACK asked for it
        self._pending: dict[int, tuple[float, int]] = {}  # RTP seq -> (due, transport seq)
        self._unasked: dict[int, float] = {}  # RTP seq -> its send time, reported, never asked
        self.reported = 0
        self.unasked = 0
        self.late_nacks = 0
        self.late_nack_delay = 0.0
        self.unasked_delay = 0.0

    def on_sent(self, first_transport: int, first_seq: int, count: int, now: float) -> None:
        """A frame's ``count`` media packets went out now, numbered from both firsts on."""
        if count <= 0:
            return
        newest = self._newest
        u = first_transport if newest is None else newest[1] + _delta(first_transport, newest[0])
        self._newest = (first_transport, u)
        starts, runs = self._starts, self._runs
        starts.append(u)
        runs.append((first_seq, count, now))
        if len(starts) > 2 * RUNS:
            del starts[:RUNS], runs[:RUNS]

    def on_nack(self, sequences: Iterable[int], now: float) -> None:
        nacked, pending, unasked = self._nacked, self._pending, self._unasked
        for seq in sequences:
            pending.pop(seq, None)
            sent = unasked.pop(seq, None)
            if sent is not None:
                self.late_nacks += 1
                self.late_nack_delay += now - sent
            nacked.pop(seq, None)
            nacked[seq] = now
        _trim(nacked)
        _trim(unasked)

    def on_lost(self, transport_seqs: Iterable[int], now: float) -> float | None:
        """Transport-wide numbers a feedback reported lost: the media packets among them that no
        NACK asked for wait ``margin``; returns when the first of them is due (None: none)."""
        due: float | None = None
        for tseq in list(transport_seqs)[-MAX_PER_FEEDBACK:]:
            found = self._media(tseq)
            if found is None:
                continue
            seq, _ = found
            if seq in self._pending:
                continue
            self.reported += 1
            if seq in self._nacked:
                continue
            at = now + self.margin
            self._pending[seq] = (at, tseq)
            due = at if due is None else min(due, at)
        _trim(self._pending)
        return due

    def next_due(self) -> float | None:
        return min((at for at, _ in self._pending.values()), default=None)

    def due(self, now: float, acked: Callable[[int], bool]) -> list[int]:
        """RTP sequence numbers whose margin passed with no NACK, and no later feedback saying
        they arrived (``acked(transport_seq)``): to be resent as if NACKed."""
        out: list[int] = []
        pending = self._pending
        for seq, (at, tseq) in list(pending.items()):
            if at > now:
                continue
            del pending[seq]
            if acked(tseq):
                continue
            found = self._media(tseq)
            sent = found[1] if found is not None else now
            self.unasked += 1
            self.unasked_delay += now - sent
            self._unasked[seq] = sent
            out.append(seq)
        _trim(self._unasked)
        return out

    def _media(self, tseq: int) -> tuple[int, float] | None:
        """The RTP sequence number and send time of the media packet numbered ``tseq``
        (None: not one of ours: audio, a retransmission, parity, or forgotten)."""
        newest = self._newest
        if newest is None:
            return None
        u = newest[1] + _delta(tseq, newest[0])
        i = bisect_right(self._starts, u) - 1
        if i < 0:
            return None
        first_seq, count, sent = self._runs[i]
        offset = u - self._starts[i]
        if offset >= count:
            return None
        return (first_seq + offset) & 0xFFFF, sent


def _delta(a: int, b: int) -> int:
    """``a - b`` for 16-bit numbers, within -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def _trim(table: dict[int, Any]) -> None:
    while len(table) > MEMORY:
        del table[next(iter(table))]
