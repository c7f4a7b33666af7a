"""Retransmission and keyframe discipline, sans I/O: which NACKed packets a viewer gets again
(playout deadline, one resend per round trip, a budget that is a share of its stream) and how a
viewer's keyframe requests back off."""

from __future__ import annotations

import itertools

import pytest

from relay.media.keyframe_gate import KeyframeGate
from relay.media.retransmit import RetransmitBudget, RetransmitLimits, Verdict

SIZE = 1200


def test_a_fresh_loss_is_resent() -> None:
    b = RetransmitBudget()
    assert b.decide(1, SIZE, age=0.03, rtt=0.04, now=0.0) is Verdict.SEND


def test_a_packet_that_cannot_arrive_before_its_deadline_is_not_resent() -> None:
    b = RetransmitBudget(RetransmitLimits(max_age=0.3))
    assert b.decide(1, SIZE, age=0.25, rtt=0.04, now=0.0) is Verdict.SEND  # 0.27 s at arrival
    assert b.decide(2, SIZE, age=0.25, rtt=0.2, now=0.0) is Verdict.LATE  # 0.35 s at arrival
    assert b.decide(3, SIZE, age=0.31, rtt=None, now=0.0) is Verdict.LATE
    assert b.refused[Verdict.LATE] == 2


def test_a_packet_is_resent_at_most_once_per_round_trip() -> None:
    b = RetransmitBudget()
    assert b.decide(7, SIZE, age=0.0, rtt=0.1, now=1.0) is Verdict.SEND
    assert b.decide(7, SIZE, age=0.05, rtt=0.1, now=1.05) is Verdict.REPEAT  # NACK crossed it
    assert b.decide(7, SIZE, age=0.11, rtt=0.1, now=1.11) is Verdict.SEND  # it was lost again


def test_retransmissions_stay_within_their_share_of_the_stream() -> None:
    """A viewer that NACKs everything (a link the stream does not fit) gets at most ``share``
    of what it is sent, plus the burst it saved up."""
    limits = RetransmitLimits(share=0.25, burst=32 * 1024)
    b = RetransmitBudget(limits)
    media = resent = 0
    for seq in range(3000):  # 10 s of a ~1.5 Mbps stream, every packet NACKed once
        b.on_media(SIZE)
        media += SIZE
        if b.decide(seq, SIZE, age=0.02, rtt=0.05, now=seq / 300) is Verdict.SEND:
            resent += SIZE
    assert resent <= 0.25 * media + limits.burst
    assert resent >= 0.2 * media  # and it does use its share
    assert b.refused[Verdict.OVER_BUDGET] > 0


def test_unused_budget_is_capped_at_the_burst() -> None:
    b = RetransmitBudget(RetransmitLimits(share=1.0, burst=10 * SIZE))
    for _ in range(1000):
        b.on_media(SIZE)
    sent = sum(b.decide(s, SIZE, age=0.0, rtt=0.0, now=0.0) is Verdict.SEND for s in range(100))
    assert sent == 10


def test_the_memory_of_resent_packets_is_bounded() -> None:
    b = RetransmitBudget(RetransmitLimits(share=1.0, burst=10**9))
    b.tokens = 1e9
    for s in range(5000):
        b.decide(s, SIZE, age=0.0, rtt=0.0, now=0.0)
    assert len(b._sent_at) <= 1024


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RetransmitLimits(max_age=0)
    with pytest.raises(ValueError):
        RetransmitLimits(share=2)


def test_a_starved_viewer_backs_off() -> None:
    """A viewer asking 20 times a second for 60 s gets few of its requests through, ever
    further apart; the room's own coalescing comes on top of this."""
    gate = KeyframeGate(interval=0.5, max_interval=8.0)
    passed_at = [t / 20 for t in range(1200) if gate.request(t / 20)]
    gaps = [b - a for a, b in itertools.pairwise(passed_at)]
    assert passed_at[0] == 0.0  # the first request goes at once
    assert gaps == sorted(gaps) and max(gaps) == pytest.approx(8.0)
    assert len(passed_at) <= 12  # vs 240 at the hub's 0.25 s coalescing alone
    assert gate.suppressed == 1200 - len(passed_at)


def test_occasional_requests_are_never_held_back() -> None:
    """A viewer that loses a keyframe's worth now and then (every 3 s) is heard every time."""
    gate = KeyframeGate(interval=0.5, max_interval=8.0)
    assert all(gate.request(t * 3.0) for t in range(20))


def test_a_viewer_that_was_quiet_is_heard_at_once_again() -> None:
    gate = KeyframeGate(interval=0.5, max_interval=8.0)
    for t in (0.0, 0.5, 1.5, 3.5):
        assert gate.request(t)
    assert not gate.request(5.0)  # waits 4 s now
    assert gate.request(3.5 + 10.0)  # quiet for more than twice that: back to the short wait
    assert not gate.request(13.6) and gate.request(14.0)
