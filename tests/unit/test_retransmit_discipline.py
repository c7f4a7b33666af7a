"""Retransmission and keyframe discipline, sans I/O: which NACKed packets a viewer gets again
(playout deadline, one resend per round trip, a budget that is a share of its stream) and how a
viewer's keyframe requests back off."""

from __future__ import annotations

import itertools
import random

import pytest

from relay.media.frames import CodecSpec, EncodedFrame
from relay.media.hub import FanoutHub
from relay.media.keyframe_gate import KeyframeGate
from relay.media.nack_solicit import EVERY, LOSSY_EVERY, NackSolicitor
from relay.media.playout_delay import PlayoutDelayPolicy
from relay.media.retransmit import (
    FOLLOW_UP_AFTER,
    FOLLOW_UP_LOSS,
    MIN_SHARE,
    RetransmitBudget,
    RetransmitLimits,
    Verdict,
    estimate_allowance,
    rtx_allowance,
)
from relay.media.stream_key import StreamKey

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


def test_the_deadline_follows_the_round_trip_and_keyframes_get_longer() -> None:
    """A delta frame's packet is worth resending for ``playout`` + 1.5 RTT; a keyframe's up to
    ``max_age`` (without it the viewer shows nothing)."""
    limits = RetransmitLimits(max_age=2.0, playout=0.25, playout_rtts=1.5)
    b = RetransmitBudget(limits)
    # 40 ms RTT: deadline 0.31 s after the frame, checked at arrival (age + 20 ms)
    assert b.decide(1, SIZE, age=0.28, rtt=0.04, now=0.0) is Verdict.SEND
    assert b.decide(2, SIZE, age=0.30, rtt=0.04, now=0.0) is Verdict.LATE
    assert b.decide(3, SIZE, age=0.30, rtt=0.04, now=0.0, keyframe=True) is Verdict.SEND
    # 300 ms RTT: the receiver waits longer, so do we (0.7 s)
    assert b.decide(4, SIZE, age=0.5, rtt=0.3, now=0.0) is Verdict.SEND
    assert b.decide(5, SIZE, age=0.6, rtt=0.3, now=0.0) is Verdict.LATE
    # a keyframe's packet: up to max_age, never later
    assert b.decide(6, SIZE, age=1.8, rtt=0.3, now=0.0, keyframe=True) is Verdict.SEND
    assert b.decide(7, SIZE, age=1.9, rtt=0.3, now=0.0, keyframe=True) is Verdict.LATE
    assert limits.deadline(None, keyframe=False) == 0.25  # no RTT yet
    assert limits.deadline(5.0, keyframe=False) == 2.0  # capped by max_age


def test_retransmissions_stay_within_what_the_estimate_leaves() -> None:
    """A 1 Mbps estimate with 0.9 Mbps of media leaves 100 kbps: NACKs for everything (a
    starved viewer) get about that, however much the share of the stream would allow."""
    assert rtx_allowance(None, 5e5, 0.25) is None
    assert rtx_allowance(1_000_000, 900_000, 0.25) == pytest.approx(100_000)
    assert rtx_allowance(1_000_000, 100_000, 0.25) == pytest.approx(250_000)  # the share caps
    assert rtx_allowance(1_000_000, 2_000_000, 0.25) == pytest.approx(MIN_SHARE * 1_000_000)
    b = RetransmitBudget(RetransmitLimits(share=1.0, burst=10**9))
    b.tokens = 1e9  # the stream's share allows anything: the estimate is what limits
    resent = 0
    for i in range(3000):  # 10 s, every packet NACKed
        now = i / 300
        verdict = b.decide(i, SIZE, age=0.02, rtt=0.05, now=now, allowance_bps=100_000)
        resent += SIZE if verdict is Verdict.SEND else 0
    rate = resent * 8 / 10
    assert 80_000 <= rate <= 100_000 + 2 * 1500 * 8 / 10, rate
    assert b.refused[Verdict.OVER_BUDGET] > 2000


def test_a_starved_viewer_cannot_make_the_room_send_more_than_one_keyframe_per_interval() -> None:
    """One viewer PLIs 20 times a second for 60 s; its gate and the hub's coalescing together
    let at most one request per ``keyframe_interval`` reach the anchor, and after the backoff
    far fewer. Its queue overflowing (the other path to the anchor) is coalesced the same way."""
    clock = [0.0]
    hub = FanoutHub(
        StreamKey("room"),
        {"video": CodecSpec("video", "H264", 90000)},
        keyframe_interval=1.0,
        video_queue_frames=2,
        clock=lambda: clock[0],
    )
    asked: list[float] = []
    hub.set_keyframe_requester(lambda: asked.append(clock[0]))
    starved = hub.add_viewer("starved")  # never drained: its queue overflows
    gate = KeyframeGate(interval=0.5, max_interval=8.0)
    for step in range(1200):
        clock[0] = step / 20
        if gate.request(clock[0]):
            hub.request_keyframe()
        if step % 2 == 0:
            key = step % 60 == 0
            frame = EncodedFrame("video", "H264", step * 3000, (b"x",), b"x", key, clock[0])
            hub.publish(frame)
    assert starved.queues["video"].overflows > 0
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    assert min(gaps) >= 1.0 - 1e-9
    assert len(asked) <= 61


def test_a_packet_is_resent_at_most_once_per_round_trip() -> None:
    b = RetransmitBudget()
    assert b.decide(7, SIZE, age=0.0, rtt=0.1, now=1.0) is Verdict.SEND
    assert b.decide(7, SIZE, age=0.05, rtt=0.1, now=1.05) is Verdict.REPEAT  # NACK crossed it
    assert b.decide(7, SIZE, age=0.11, rtt=0.1, now=1.11) is Verdict.SEND  # it was lost again


def test_only_a_transport_cc_estimate_limits_the_retransmission_rate() -> None:
    """aiortc's REMB reports what it receives: a "target" at the media rate leaves the
    MIN_SHARE floor, and a viewer on 5 % loss (its NACKs repeated when a retransmission is
    lost too) had a third of its NACKed packets refused over budget. Such estimates are not
    used; the share of the stream limits retransmissions then."""
    media = 1_450_000
    assert estimate_allowance("twcc", 1_500_000, media, 0.25) == rtx_allowance(
        1_500_000, media, 0.25
    )
    for source in ("remb", "rr", "none"):
        assert estimate_allowance(source, 1_500_000, media, 0.25) is None
    before = rtx_allowance(1_500_000, media, 0.25)  # a REMB "target" used as it came
    now_used = estimate_allowance("remb", 1_500_000, media, 0.25)
    refused = []
    for allowance in (before, now_used):
        b = RetransmitBudget()
        for i in range(3000):  # 20 s at 150 packets/s, 5 % lost, a NACK listing three
            now = i / 150
            b.on_media(SIZE)
            if i % 20 == 19:
                for seq in range(i - 2, i + 1):
                    b.decide(seq, SIZE, age=0.05, rtt=0.05, now=now, allowance_bps=allowance)
        refused.append(b.refused[Verdict.OVER_BUDGET])
    assert refused[0] > 100 and refused[1] == 0, refused


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


def test_a_new_layers_keyframe_is_not_refused_for_the_old_layers_retransmissions() -> None:
    """A viewer whose layer overran its link spent its budget on NACKs; the move down's
    keyframe, lost in the queue the old layer left, gets its retransmission all the same
    (before: refused over budget, and the viewer waited a GOP for the next keyframe)."""
    b = RetransmitBudget(RetransmitLimits(share=0.25, burst=64 * 1024))
    for seq in range(300):  # one second of a layer the link does not carry: NACKs galore
        b.on_media(SIZE)
        b.decide(seq, SIZE, age=0.05, rtt=0.1, now=seq / 300, allowance_bps=200_000)
    late = b.decide(300, SIZE, 0.1, 0.1, 299 / 300, keyframe=True, allowance_bps=200_000)
    assert late is Verdict.OVER_BUDGET  # what the new layer's keyframe met before
    b.new_timeline()
    for seq in (1000, 1001, 1002):  # the new layer's keyframe, ~3.5 KB (180p)
        verdict = b.decide(seq, SIZE, 0.1, 0.1, 1.0, keyframe=True, allowance_bps=200_000)
        assert verdict is Verdict.SEND
    assert b.decide(1000, SIZE, 0.12, 0.1, 1.02, allowance_bps=200_000) is Verdict.REPEAT


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


def test_by_default_a_delta_frames_packet_waits_for_a_keyframe_not_a_playout_time() -> None:
    """A receiver that lost a packet waits on it until it comes or a keyframe does: by default
    a delta frame's packet is resent up to ``max_age`` unless a later keyframe superseded it."""
    b = RetransmitBudget()
    assert b.decide(1, SIZE, age=0.6, rtt=0.04, now=0.0) is Verdict.SEND
    assert b.decide(2, SIZE, age=1.97, rtt=0.04, now=0.0) is Verdict.SEND
    assert b.decide(3, SIZE, age=1.99, rtt=0.04, now=0.0) is Verdict.LATE  # past max_age
    assert b.decide(4, SIZE, age=0.4, rtt=0.04, now=0.0, superseded=True) is Verdict.LATE
    keyframe = b.decide(5, SIZE, age=0.4, rtt=0.04, now=0.0, keyframe=True, superseded=True)
    assert keyframe is Verdict.LATE  # a later keyframe supersedes an earlier one too
    # within SUPERSEDE_AFTER + 1.5 RTT it is sent all the same: a receiver that waits on every
    # hole before a keyframe (aiortc's jitter buffer) decodes nothing past it otherwise
    assert b.decide(6, SIZE, age=0.3, rtt=0.04, now=0.0, superseded=True) is Verdict.SEND
    assert b.refused[Verdict.LATE] == 3


def single_nack_receiver(
    limits: RetransmitLimits, seed: int, follow_ups: bool = False
) -> tuple[int, int]:
    """aiortc's receiver on 2 % loss both ways (140 video packets/s, 40 ms RTT, a keyframe
    every 2 s): it NACKs every hole it still misses when a NEW hole appears, never again in
    between, and sends no PLI (rtcrtpreceiver.NackGenerator). Returns (holes, holes open for
    more than 0.1 s when the next keyframe came: each a freeze until then). ``follow_ups``:
    the budget's second copies (``FOLLOW_UP_AFTER`` later, lost on their own)."""
    rng = random.Random(seed)
    budget = RetransmitBudget(limits)
    rate, rtt, loss, gop = 140, 0.04, 0.02, 280
    missing: dict[int, float] = {}  # sequence -> when sent first
    arriving: dict[int, float] = {}  # retransmissions on their way: sequence -> arrival
    holes = stuck = 0
    keyframe_at = -1.0
    for seq in range(rate * 120):
        now = seq / rate
        for s, at in list(arriving.items()):
            if at <= now:
                del arriving[s]
                missing.pop(s, None)
        if seq % gop == 0:  # the keyframe starts the picture over: a hole open since more
            # than ~2 RTT froze the picture until now (a younger one is the keyframe's luck)
            stuck += sum(1 for sent in missing.values() if now - sent > 0.1)
            missing.clear()
            keyframe_at = now
        budget.on_media(SIZE)
        if rng.random() >= loss:
            continue
        holes += 1
        missing[seq] = now
        if rng.random() < loss:
            continue  # the NACK itself is lost
        at = now + rtt / 2
        budget.on_nack(sorted(missing), seq, rtt, at)
        for s, sent in list(missing.items()):
            verdict = budget.decide(
                s, SIZE, age=at - sent, rtt=rtt, now=at, superseded=keyframe_at > sent,
            )  # fmt: skip
            if verdict is not Verdict.SEND:
                continue
            if rng.random() >= loss:
                arriving[s] = min(arriving.get(s, 1e9), now + rtt)
            if (
                follow_ups
                and budget.wants_follow_up
                and budget.follow_up(s, SIZE, at + FOLLOW_UP_AFTER)
                and rng.random() >= loss
            ):
                arriving[s] = min(arriving.get(s, 1e9), now + rtt + FOLLOW_UP_AFTER)
    assert not budget.asks_again  # its repeats always ride a new hole
    return holes, stuck


def test_a_receiver_that_asks_once_is_answered_until_its_keyframe() -> None:
    """Its second request for a hole comes with the next new hole, ~360 ms later at 2 % loss:
    past 0.25 s + 1.5 RTT it was refused and the viewer froze to the next keyframe (0-2 s).
    Answered, the freeze ends a round trip later. Over 20 simulated minutes the holes that
    froze the picture to a keyframe go from 61 to 19 of 3483; the rest are NACKs or
    retransmissions lost with no new hole before the keyframe: this receiver's own limit (a
    browser NACKs a hole again every round trip; sending every retransmission twice would
    leave 10)."""
    old = RetransmitLimits(playout=0.25)
    new = RetransmitLimits()
    stuck_old = stuck_new = holes = 0
    for seed in range(10):
        h, s_old = single_nack_receiver(old, seed)
        _, s_new = single_nack_receiver(new, seed)
        holes, stuck_old, stuck_new = holes + h, stuck_old + s_old, stuck_new + s_new
    assert holes > 3000
    assert 2.5 * stuck_new <= stuck_old, (stuck_old, stuck_new, holes)


def test_random_loss_is_repaired_within_a_transport_cc_estimate_at_the_media_rate() -> None:
    """A browser at 5 % random loss whose estimate sits at its media rate (held there by the
    delay detector on a busy bed): at the ``MIN_SHARE`` floor its NACKs (every loss at once,
    again each round trip while the retransmission is lost too) were refused over budget (78 of
    280 NACKed packets, netbed loss5-rtt40); the floor follows the loss up to 10 %. In 30 s
    (~225 packets lost) the old floor left 19 given up after 10 NACKs each, this one none. A
    bottleneck's loss (over 10 %) keeps the old floor."""
    media, loss = 1_500_000, 0.05
    assert rtx_allowance(media, media, 0.25, 0.05) == pytest.approx(0.10 * media)
    assert rtx_allowance(media, media, 0.25, 0.3) == pytest.approx(MIN_SHARE * media)
    assert rtx_allowance(media, media, 0.25, 0.09) == pytest.approx(0.18 * media)
    unrepaired = []
    for reported_loss in (0.0, loss):
        rng = random.Random(3)
        b = RetransmitBudget()
        allowance = estimate_allowance("twcc", media, media, 0.25, reported_loss)
        asked: list[tuple[float, int, int]] = []  # (when, sequence, tries) NACKs due
        given_up = 0
        for i in range(150 * 30):  # 30 s at 150 packets/s
            now = i / 150
            b.on_media(SIZE)
            if rng.random() < loss:
                asked.append((now + 0.02, i, 0))
            due = [x for x in asked if x[0] <= now]
            asked = [x for x in asked if x[0] > now]
            for _, seq, tries in due:
                verdict = b.decide(seq, SIZE, 0.05, 0.04, now, allowance_bps=allowance)
                if verdict is Verdict.SEND and rng.random() >= loss:
                    continue  # repaired
                if tries >= 9:  # libwebrtc gives a packet up after 10 NACKs
                    given_up += 1
                else:  # asked again a round trip later
                    asked.append((now + 0.04, seq, tries + 1))
        unrepaired.append(given_up)
    assert unrepaired[0] > 10 and unrepaired[1] == 0, unrepaired


def test_a_receiver_that_asks_once_gets_each_retransmission_twice() -> None:
    """aiortc's receiver never repeats a NACK on its own, so a lost retransmission leaves its
    hole open until the next new hole or keyframe. A second copy ``FOLLOW_UP_AFTER`` later
    closes most of those: over 20 simulated minutes at 2 % loss both ways the holes that
    froze the picture to a keyframe go from ~19 to ~10 of ~3480 (what is left: the NACK itself
    lost, which only the next hole's NACK repeats)."""
    once = twice = holes = 0
    for seed in range(10):
        h, s_once = single_nack_receiver(RetransmitLimits(), seed)
        _, s_twice = single_nack_receiver(RetransmitLimits(), seed, follow_ups=True)
        holes, once, twice = holes + h, once + s_once, twice + s_twice
    assert holes > 3000
    assert twice <= 0.7 * once, (once, twice, holes)


def repeating_receiver(loss: float, seed: int, follow_ups: bool) -> tuple[int, int]:
    """A browser's receiver (libwebrtc's NackRequester): NACKs a hole at once and again every
    ~100 ms until it is filled; ``loss`` both ways, 40 ms RTT, 150 packets/s, 60 s. Returns
    (holes, holes filled more than 120 ms after they opened: those that needed the receiver's
    second round, ~100 ms after its first; a hole that misses that one too is a freeze by
    Chromium's rule)."""
    rng = random.Random(seed)
    budget = RetransmitBudget()
    rtt, repeat = 0.04, 0.1
    asks: list[tuple[float, int, float]] = []  # (when the NACK leaves, sequence, hole opened)
    filled: dict[int, float] = {}
    holes = 0
    for i in range(150 * 60):
        now = i / 150
        budget.on_media(SIZE)
        if rng.random() < loss:
            holes += 1
            asks.append((now, i, now))
        due = [a for a in asks if a[0] <= now]
        asks = [a for a in asks if a[0] > now]
        for when, seq, opened in due:
            if seq in filled and filled[seq] <= when:
                continue
            at = when + rtt / 2
            if rng.random() >= loss:  # the NACK arrives
                budget.on_nack([seq], i, rtt, at)
                if budget.decide(seq, SIZE, at - opened, rtt, at) is Verdict.SEND:
                    copies = [at + rtt / 2]
                    if budget.wants_follow_up and budget.follow_up(seq, SIZE, at + FOLLOW_UP_AFTER):
                        copies.append(at + FOLLOW_UP_AFTER + rtt / 2)
                    if not follow_ups:
                        copies = copies[:1]
                    for arrival in copies:
                        if rng.random() >= loss:
                            filled[seq] = min(filled.get(seq, 1e9), arrival)
            if opened + 1.0 > when + repeat:
                asks.append((when + repeat, seq, opened))
    late = sum(1 for seq, at in filled.items() if at - (seq / 150) > 0.12)
    return holes, late


def test_a_browser_at_high_loss_gets_retransmissions_twice_and_fewer_freezes() -> None:
    """A browser repeats its NACKs (``asks_again``), so at low loss its retransmissions go
    once; at 5 % loss each way one retransmission in ten is lost or never asked for, and the
    second round comes ~100 ms later (a third is past 183 ms with the frame's own time). Its
    share of packets asked for is over ``FOLLOW_UP_LOSS`` there, and a second copy leaves
    about half the holes needing a second round (the NACK itself lost: only the receiver
    repairs that)."""
    b = RetransmitBudget()
    for i in range(200):
        b.on_media(10 * SIZE)  # 10 packets a NACK
        b.on_nack([i], i * 10, 0.04, i * 0.1)
        assert b.decide(i, SIZE, 0.05, 0.04, i * 0.1) is Verdict.SEND
    b.on_nack([5], 2000, 0.04, 20.0)  # asks again for a packet resent long ago, alone
    assert b.asks_again and b.loss == pytest.approx(0.1, abs=0.02)
    assert b.wants_follow_up  # 10 % of its packets asked for
    b.on_nack([], 2000, 0.04, 21.0)
    b.on_nack([], 4000, 0.04, 22.1)  # a quiet second: 0 % asked for
    assert b.loss == 0.0 and not b.wants_follow_up
    b.on_nack(list(range(1000, 1300)), 6000, 0.04, 23.2)  # 15 %: a link the stream overruns
    assert b.loss == pytest.approx(0.15) and not b.wants_follow_up
    b.asks_again = False
    assert not b.wants_follow_up  # not even for a receiver that asks once
    assert FOLLOW_UP_LOSS > 0.02  # a browser at 2 % loss gets one copy

    once = twice = holes = 0
    for seed in range(4):
        h, late_once = repeating_receiver(0.05, seed, follow_ups=False)
        _, late_twice = repeating_receiver(0.05, seed, follow_ups=True)
        holes, once, twice = holes + h, once + late_once, twice + late_twice
    assert holes > 1500
    assert twice <= 0.7 * once, (once, twice, holes)


def test_a_second_copy_is_paid_from_the_budget_and_leaves_room_for_a_first() -> None:
    b = RetransmitBudget(RetransmitLimits(burst=3 * SIZE))
    b.tokens = 3 * SIZE
    assert b.decide(1, SIZE, 0.05, 0.04, 0.0) is Verdict.SEND
    assert b.follow_up(1, SIZE, 0.03)  # 2 packets' worth were left
    assert not b.follow_up(1, SIZE, 0.06)  # 1 left: kept for a first copy
    assert b.decide(2, SIZE, 0.05, 0.04, 0.1) is Verdict.SEND
    assert b.follow_ups == 1


def browser_playout(
    loss: float, rtt: float, seed: int, delay: PlayoutDelayPolicy | None, seconds: int = 60
) -> tuple[int, int, int, int | None]:
    """A browser (libwebrtc) playing a 30 fps stream of 5 packets a frame: ``loss`` both ways,
    a hole seen at the next packet's arrival (a frame's last packet: the next frame's first)
    and NACKed at once and every 100 ms until filled, the gateway's budget with its second
    copies. Each frame is played at its expected arrival plus the target delay: libwebrtc's
    own (``OWN_DELAY``: jitter + decode + render on this clean-timed link) or the minimum
    ``delay`` gives (fed the viewer's counters as the direct sender feeds it). Returns
    (frames, frames complete after their play time: a stall, of which more than 150 ms late: a
    freeze by Chromium's rule, the delay given at the end in ms)."""
    rng = random.Random(seed)
    budget = RetransmitBudget()
    per_frame, fps, repeat, own_delay = 5, 30, 0.1, 0.04
    frames = seconds * fps
    arrival: dict[int, float] = {}  # sequence -> when it is there (original or a copy)
    asks: list[tuple[float, int]] = []  # (when a NACK leaves, sequence)
    sent = 0
    for seq in range(frames * per_frame):
        now = (seq // per_frame) / fps + (seq % per_frame) * 0.002
        budget.on_media(SIZE)
        sent += 1
        if delay is not None:
            delay.update(now, budget.asked_total, sent, rtt)
        if rng.random() >= loss:
            arrival[seq] = now + rtt / 2
            continue
        # seen when the next packet arrives (the next frame's first, for a frame's last)
        nxt = seq + 1
        seen = (nxt // per_frame) / fps + (nxt % per_frame) * 0.002 + rtt / 2
        asks.append((seen, seq))
        arrival[seq] = float("inf")
        asks.sort()
        while asks and asks[0][0] <= now:
            when, s = asks.pop(0)
            if arrival[s] <= when:
                continue
            at = when + rtt / 2
            if rng.random() >= loss:  # the NACK arrives
                budget.on_nack([s], sent, rtt, at)
                age = at - ((s // per_frame) / fps)
                if budget.decide(s, SIZE, age, rtt, at) is Verdict.SEND:
                    copies = [at + rtt / 2]
                    if budget.wants_follow_up and budget.follow_up(s, SIZE, at + FOLLOW_UP_AFTER):
                        copies.append(at + FOLLOW_UP_AFTER + rtt / 2)
                    for landed in copies:
                        if rng.random() >= loss:
                            arrival[s] = min(arrival[s], landed)
            if when - (s // per_frame) / fps < 1.0:
                asks.append((when + repeat, s))
    stalls = freezes = 0
    for f in range(frames):
        expected = f / fps + rtt / 2
        complete = max(arrival[f * per_frame + i] for i in range(per_frame))
        minimum = (delay.delay_ms or 0) / 1000 if delay is not None else 0.0
        play = expected + max(own_delay, minimum) - 0.015  # decode + render come out of it
        if complete > play:
            stalls += 1
            freezes += complete - play > 0.15
    return frames, stalls, freezes, None if delay is None else delay.delay_ms


def test_a_minimum_playout_delay_of_one_repair_round_hides_the_repairs() -> None:
    """Issue 17's 5 % loss + 40 ms RTT for a browser (4 x 60 s): with its own ~40 ms target
    delay every frame that waited for a retransmission is played late (a stall; the bed's
    Chromium froze 3.2 % at the last merge). The minimum the policy gives such a viewer (one
    repair round: 140 ms here) leaves only the frames that needed a second NACK round (the
    NACK or both copies lost) late; at 2 % loss and ~2 ms RTT (100 ms) alike. A clean link
    gets no delay at all."""
    for loss, rtt, expected_ms in ((0.05, 0.045, 140), (0.02, 0.002, 100)):
        without = with_delay = late_without = late_with = 0
        for seed in range(4):
            frames, s0, f0, _ = browser_playout(loss, rtt, seed, None)
            _, s1, f1, given = browser_playout(loss, rtt, seed, PlayoutDelayPolicy())
            assert given == expected_ms
            without, with_delay = without + s0, with_delay + s1
            late_without, late_with = late_without + f0, late_with + f1
        assert without > 0.05 * 4 * frames * loss, (loss, without)  # most repaired frames
        assert with_delay <= 0.25 * without, (loss, without, with_delay)
        assert late_with <= late_without, (loss, late_without, late_with)
    clean = PlayoutDelayPolicy()
    _, stalls, _, given = browser_playout(0.0, 0.045, 0, clean)
    assert stalls == 0 and given is None and clean.value(60.0) is None


def asks_once_repairs(
    loss: float, seed: int, solicit: float | NackSolicitor | None, seconds: int = 120
) -> tuple[int, int, int]:
    """aiortc's receiver (it NACKs every hole it still misses when a NEW hole appears, never
    in between) at ``loss`` both ways, 40 ms RTT, 150 packets/s, a keyframe every 2 s, the
    budget's second copies. ``solicit``: every so many seconds the sender makes a hole of its
    own (a number skipped and filled at once), so the receiver sends its missing list then
    too; a ``NackSolicitor``: when it says so at the start of a frame (5 packets, 30 fps).
    Returns (holes, holes open more than 150 ms: a freeze by Chromium's rule at 30 fps, NACK
    messages the receiver sent)."""
    rng = random.Random(seed)
    budget = RetransmitBudget()
    rate, rtt, gop = 150, 0.04, 300
    missing: dict[int, float] = {}  # sequence -> when sent first
    arriving: dict[int, float] = {}  # retransmissions on their way: sequence -> arrival
    holes = long = nacks = 0
    next_solicit = 0.0

    def ask(now: float, solicited: bool = False) -> None:
        nonlocal nacks
        nacks += 1
        if rng.random() < loss:
            return  # the NACK itself is lost
        at = now + rtt / 2
        budget.on_nack(sorted(missing), int(now * rate), rtt, at, solicited=solicited)
        for s, sent in list(missing.items()):
            if budget.decide(s, SIZE, age=at - sent, rtt=rtt, now=at) is not Verdict.SEND:
                continue
            if rng.random() >= loss:
                arriving[s] = min(arriving.get(s, 1e9), now + rtt)
            if (
                budget.wants_follow_up
                and budget.follow_up(s, SIZE, at + FOLLOW_UP_AFTER)
                and rng.random() >= loss
            ):
                arriving[s] = min(arriving.get(s, 1e9), now + rtt + FOLLOW_UP_AFTER)

    for seq in range(rate * seconds):
        now = seq / rate
        for s, at in list(arriving.items()):
            if at <= now:
                del arriving[s]
                if s in missing:
                    long += at - missing.pop(s) > 0.15
        if seq % gop == 0:  # the keyframe starts the picture over
            long += sum(1 for sent in missing.values() if now - sent > 0.15)
            missing.clear()
            arriving.clear()
        budget.on_media(SIZE)
        if isinstance(solicit, NackSolicitor):
            due = seq % 5 == 0 and solicit.due(
                now, budget.asked_total, budget.asks_again, budget.loss
            )
        else:
            due = solicit is not None and now >= next_solicit
            next_solicit = now + solicit if due and solicit is not None else next_solicit
        if due and missing and rng.random() >= loss:  # the packet after the skipped one came
            ask(now, solicited=True)
        if rng.random() >= loss:
            continue
        holes += 1
        missing[seq] = now
        ask(now + 1 / rate)  # seen at the next packet
    assert not budget.asks_again
    return holes, long, nacks


def test_a_receiver_that_asks_once_is_made_to_ask_again() -> None:
    """What froze aiortc viewers at 2 % loss once retransmissions went twice: a lost NACK,
    repeated only with the receiver's next new hole (~330 ms later at 2 % of 150 packets/s,
    later still on a thin layer). A hole of the sender's own every 100 ms (filled at once)
    makes it send its missing list again: holes open past 150 ms (a freeze) fall by more than
    half at 2 % and 5 % loss, for ~10 more NACK messages a second from a lossy viewer."""
    for loss in (0.02, 0.05):
        base = solicited = holes = extra = 0
        for seed in range(6):
            h, long0, n0 = asks_once_repairs(loss, seed, None)
            _, long1, n1 = asks_once_repairs(loss, seed, 0.1)
            holes, base, solicited, extra = holes + h, base + long0, solicited + long1, n1 - n0
        assert holes > 6 * 150 * 120 * loss * 0.8
        assert base > 20 and solicited <= 0.5 * base, (loss, base, solicited, holes)
        assert extra <= 10.5 * 120, extra


def test_a_receiver_that_loses_much_is_made_to_ask_in_every_frame() -> None:
    """The solicitor's own pace (holes made at frame starts, as the sender makes them): at 5 %
    loss (3 % or more) a hole in every frame, where a lost NACK waited up to 0.1 s for the next
    one: holes open past 150 ms fall to a quarter or less (12 x 2 min: 93 -> 8, NACK messages
    9.9 -> 15.0 a second); at 2 % the pace mostly stays that of 0.1 s (its loss over a second
    crosses 3 % now and then: 4.1 -> 4.6 NACKs a second; long holes 8 -> 10, too few to tell)."""
    for loss, fewer in ((0.05, True), (0.02, False)):
        old = new = old_nacks = new_nacks = 0
        for seed in range(6):
            _, long0, n0 = asks_once_repairs(loss, seed, NackSolicitor(lossy_every=EVERY))
            _, long1, n1 = asks_once_repairs(loss, seed, NackSolicitor(lossy_every=LOSSY_EVERY))
            old, new = old + long0, new + long1
            old_nacks, new_nacks = old_nacks + n0, new_nacks + n1
        if fewer:
            assert old >= 20 and new <= old / 4, (loss, old, new)
            assert new_nacks <= 1.8 * old_nacks, (old_nacks, new_nacks)
        else:
            assert new_nacks <= 1.25 * old_nacks, (old_nacks, new_nacks)
