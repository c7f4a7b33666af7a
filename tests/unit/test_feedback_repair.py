"""Packets a viewer lost without a NACK, found in its transport-cc feedback (sans I/O), on
synthetic feedback traces through the real estimator (the C feedback path and the Python
reference alike): only a media packet reported lost that no NACK asked for is resent, after the
margin; one a later feedback reports received (reordered, late) is not; a clean link reads no
feedback twice; a viewer that reports everything lost gets no more than its budget."""

from __future__ import annotations

import random

import pytest

from relay.media.cc_feedback import build_transport_feedback
from relay.media.estimator import BandwidthEstimator, _twcc
from relay.media.feedback_repair import MARGIN, FeedbackRepair
from relay.media.retransmit import RetransmitBudget, RetransmitLimits, Verdict

NATIVE = [False] + ([True] if _twcc is not None else [])
PACKETS = 5  # per frame
SIZE = 1200


class Viewer:
    """A sender's view of one viewer: frames numbered for transport-cc and for RTP (RTP numbers
    from 1000, so the two never agree by chance), an audio packet between frames (its own
    transport-wide number, no RTP number of the video's), feedback built by the test."""

    def __init__(self, native: bool) -> None:
        self.estimator = BandwidthEstimator(native=native)
        self.repair = FeedbackRepair()
        self.lost_calls: list[list[int]] = []
        self.estimator.on_lost = self._lost
        self.rtp = 1000
        self.sent: list[tuple[int, int | None]] = []  # (transport seq, RTP seq or None: audio)

    def _lost(self, seqs: list[int], now: float) -> None:
        self.lost_calls.append(seqs)
        self.repair.on_lost(seqs, now)

    def frame(self, now: float) -> None:
        first = self.estimator.record([SIZE] * PACKETS, now)
        self.repair.on_sent(first, self.rtp, PACKETS, now)
        self.sent += [((first + k) & 0xFFFF, self.rtp + k) for k in range(PACKETS)]
        self.rtp += PACKETS
        audio = self.estimator.record([100], now)
        self.sent.append((audio, None))

    def feedback(self, first: int, arrivals: list[float | None], now: float) -> None:
        packet = build_transport_feedback(first, arrivals)
        self.estimator.on_transport_feedback(packet[12:], now)


def run(native: bool, lose: set[int], nacked: dict[int, float], late: dict[int, float]) -> Viewer:
    """Four frames; the packets at ``lose`` (indexes into what was sent) lost; a NACK at the
    given time for the RTP numbers in ``nacked``; ``late``: index -> arrival reported in the
    second feedback (reordered)."""
    v = Viewer(native)
    for i in range(4):
        v.frame(0.033 * i)
    arrivals: list[float | None] = [
        None if i in lose else 0.02 + 0.001 * i for i in range(len(v.sent))
    ]
    for rtp, at in nacked.items():
        if at < 0.15:
            v.repair.on_nack([rtp], at)
    v.feedback(0, arrivals, 0.15)
    for rtp, at in nacked.items():
        if at >= 0.15:
            v.repair.on_nack([rtp], at)
    if late:  # the next feedback starts at the first reordered one, as libwebrtc's does
        first = min(late)
        v.feedback(first, [late.get(i, arrivals[i]) for i in range(first, len(v.sent))], 0.16)
    return v


@pytest.mark.parametrize("native", NATIVE)
def test_only_a_loss_no_nack_asked_for_is_resent_after_the_margin(native: bool) -> None:
    v = run(native, lose={1, 8, 14, 17}, nacked={}, late={})
    rtp = {i: v.sent[i][1] for i in (1, 8, 14, 17)}
    # 1 NACKed before the feedback, 8 within the margin after it, 14 never; 17 is audio
    v2 = run(native, lose={1, 8, 14, 17}, nacked={rtp[1]: 0.1, rtp[8]: 0.16}, late={})
    assert v.sent[17][1] is None and v.lost_calls and v2.lost_calls
    assert v.repair.due(0.15 + MARGIN / 2, v.estimator.acked) == []  # not yet
    assert sorted(v.repair.due(0.15 + MARGIN, v.estimator.acked)) == [rtp[1], rtp[8], rtp[14]]
    assert v2.repair.due(0.15 + MARGIN, v2.estimator.acked) == [rtp[14]]
    assert v2.repair.reported == 3 and v2.repair.unasked == 1
    assert v2.repair.unasked_delay == pytest.approx(0.15 + MARGIN - 0.033 * 2)
    # the viewer's own repeat for 14 comes ~0.1 s later: a late NACK, and no second repair
    v2.repair.on_nack([rtp[14]], 0.3)
    assert v2.repair.late_nacks == 1
    assert v2.repair.late_nack_delay == pytest.approx(0.3 - 0.033 * 2)
    assert v2.repair.due(1.0, v2.estimator.acked) == []


@pytest.mark.parametrize("native", NATIVE)
def test_a_packet_reported_received_later_is_not_resent(native: bool) -> None:
    v = run(native, lose={7, 12}, nacked={}, late={7: 0.2})  # 7 reordered, 12 lost
    assert v.repair.due(0.15 + MARGIN, v.estimator.acked) == [v.sent[12][1]]


@pytest.mark.parametrize("native", NATIVE)
def test_a_clean_link_reads_no_feedback_twice(native: bool) -> None:
    v = run(native, lose=set(), nacked={}, late={})
    assert v.lost_calls == [] and v.repair.reported == 0 and v.repair.next_due() is None


@pytest.mark.parametrize("native", NATIVE)
def test_reported_lost_matches_the_history(native: bool) -> None:
    """What a feedback reports lost, among the packets sent, once: a number never sent, or
    reported received before, is not among them."""
    v = Viewer(native)
    v.estimator.on_lost = None
    for i in range(3):
        v.frame(0.033 * i)
    v.feedback(0, [0.05] * 4 + [None] * 2, 0.1)  # 4 and 5 lost
    packet = build_transport_feedback(0, [None] * 40)  # 18 sent, 22 never sent
    assert v.estimator.reported_lost(packet[12:], 0.2) == list(range(4, 18))


@pytest.mark.parametrize("native", NATIVE)
def test_a_viewer_reporting_everything_lost_gets_its_budget_only(native: bool) -> None:
    """Every feedback says nothing arrived and no NACK ever comes: each packet is handed out
    once, and the budget (25 % of the media, plus its opening) is all that is resent."""
    rng = random.Random(5)
    v = Viewer(native)
    limits = RetransmitLimits()
    budget = RetransmitBudget(limits)
    resent = media = 0
    base = 0
    now = 0.0
    for i in range(300):  # 10 s
        now = 0.033 * i
        v.frame(now)
        budget.on_media(PACKETS * SIZE)
        media += PACKETS * SIZE
        if i % 3 == 2:
            count = len(v.sent) - base
            v.feedback(base, [None] * count, now)
            base = len(v.sent)
        for seq in v.repair.due(now, v.estimator.acked):
            verdict = budget.decide(seq, SIZE, rng.uniform(0, 0.1), 0.04, now)
            resent += SIZE if verdict is Verdict.SEND else 0
    assert v.repair.unasked <= 300 * PACKETS
    assert budget.refused[Verdict.OVER_BUDGET] > 0
    assert resent <= limits.share * media + budget.opening + SIZE


def test_numbers_map_across_the_wrap_and_only_while_remembered() -> None:
    r = FeedbackRepair()
    r.on_sent(65533, 65534, 5, 0.0)  # transport 65533..1, RTP 65534..2
    r.on_sent(3, 3, 4, 0.033)  # transport 3..6 (2 was audio), RTP 3..6
    assert r.on_lost([1, 2, 5, 7], 0.1) == pytest.approx(0.1 + MARGIN)
    assert sorted(r.due(0.2, lambda _: False)) == [2, 5]  # transport 2 was audio, 7 not sent
    assert r.unasked == 2 and r.unasked_delay == pytest.approx(0.2 + 0.2 - 0.033)
    for i in range(2 * 256 + 1):  # frames enough to forget the first ones
        r.on_sent((7 + 4 * i) & 0xFFFF, (7 + 4 * i) & 0xFFFF, 4, 1.0)
    assert r.on_lost([65534], 2.0) is None and r.reported == 2
