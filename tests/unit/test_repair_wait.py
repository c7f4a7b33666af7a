"""relay.media.repair_wait with the frame assembler and the NACK tracker on simulated anchor legs:
a hole holds the video as long as this leg's repairs take (within a floor and a cap), a
keyframe is asked for only once the hole could not be repaired in that time, a clean leg pays
nothing, and a lost retransmission is asked for again after about a round trip."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from relay.media.nack_tracker import NackPolicy, NackTracker
from relay.media.reassembly import FrameAssembler
from relay.media.repair_wait import RepairWait, RepairWaitPolicy

FIRST = b"\x00\x00\x00\x01\x41" + b"\x22" * 10  # a frame's first packet (a start code)
REST = b"\x22" * 12  # an FU-A fragment's data: no start code


@dataclass
class Leg:
    """An anchor's uplink: ``per_frame`` packets every ``interval``; packets in ``lost`` are
    lost at their first send, ``lost_again[seq]`` of their retransmissions too; a
    retransmission arrives ``repair`` after its NACK was sent (a full bottleneck queue and the
    sender's pacer on the way)."""

    lost: set[int]
    repair: float
    lost_again: dict[int, int] = field(default_factory=dict)
    per_frame: int = 6
    interval: float = 1 / 30
    one_way: float = 0.005


@dataclass
class Outcome:
    held: dict[int, float]  # frame number -> release time - its last packet's first arrival
    keyframe_requests: int
    tracker: NackTracker
    waits: list[float]
    nack_times: dict[int, list[float]]


def run(leg: Leg, frames: int, repair: RepairWait | None, budget: float = 0.1) -> Outcome:
    tracker = NackTracker(NackPolicy(budget=budget), repair=repair)
    asm = FrameAssembler("video", "H264", max_wait=budget)
    events: list[tuple[float, int, int]] = []  # (arrival, order, seq)
    order = 0
    for seq in range(frames * leg.per_frame):
        sent = (seq // leg.per_frame) * leg.interval + (seq % leg.per_frame) * 0.001
        if seq not in leg.lost:
            heapq.heappush(events, (sent + leg.one_way, order, seq))
            order += 1
    last = (leg.per_frame - 1) * 0.001 + leg.one_way  # a frame's marker, after its send
    expected = {n: n * leg.interval + last for n in range(frames)}
    lost_again = dict(leg.lost_again)
    nack_times: dict[int, list[float]] = {}
    held: dict[int, float] = {}
    keyframes = 0
    waits: list[float] = []

    def nack(seqs: list[int], now: float) -> None:
        nonlocal order
        for seq in seqs:
            nack_times.setdefault(seq, []).append(now)
            if lost_again.get(seq, 0) > 0:
                lost_again[seq] -= 1
                continue
            heapq.heappush(events, (now + leg.repair, order, seq))
            order += 1

    while events:
        now, _, seq = heapq.heappop(events)
        while (deadline := tracker.next_deadline()) is not None and deadline < now:
            nack(tracker.due(deadline + 1e-9), deadline)  # (a timer fires a little after)
        nack(tracker.packet(seq, now), now)
        if repair is not None:
            asm.max_wait = repair.wait
        waits.append(asm.max_wait)
        number, index = divmod(seq, leg.per_frame)
        marker = index == leg.per_frame - 1
        data = FIRST if index == 0 else REST
        result = asm.push(seq, number * 3000, marker, b"pl" + data, data, now)
        next_seq = asm.next_sequence
        if next_seq is not None:
            tracker.played(next_seq)
        for frame in result.frames:
            n = frame.timestamp // 3000
            held[n] = now - expected[n]
        keyframes += result.need_keyframe
    return Outcome(held, keyframes, tracker, waits, nack_times)


def test_a_clean_leg_pays_nothing() -> None:
    """No hole, no wait: every frame leaves with its marker packet; the wait stays the floor."""
    repair = RepairWait(RepairWaitPolicy(floor=0.1, cap=0.3))
    out = run(Leg(lost=set(), repair=0.15), 300, repair)
    assert len(out.held) == 300 and max(out.held.values()) < 1e-9
    assert out.keyframe_requests == 0 and repair.samples == 0
    assert set(out.waits) == {0.1}


def test_slow_repairs_lengthen_the_wait_and_spare_keyframes() -> None:
    """Behind a full 100 ms bottleneck queue a retransmission comes 150 ms after its NACK: with
    the fixed 0.1 s wait every hole costs its frame and a keyframe request (what the 1 Mbit/s
    bench showed: 0-16 of 9-168 NACKed packets recovered); with the repair wait only the first
    one does (its late retransmission is measured), the rest are repaired and held <= 0.3 s."""
    lost = {seq for seq in range(40, 1700, 97)}  # ~1 % of packets, one per ~16 frames
    leg = Leg(lost=lost, repair=0.15)

    fixed = run(leg, 300, None)
    assert fixed.keyframe_requests == len(lost)
    assert fixed.tracker.stats.recovered == 0 and fixed.tracker.stats.late == len(lost)

    repair = RepairWait(RepairWaitPolicy(floor=0.1, cap=0.3))
    out = run(leg, 300, repair)
    assert out.keyframe_requests == 1  # the first hole, before any repair was measured
    assert out.tracker.stats.late == 1 and out.tracker.stats.recovered == len(lost) - 1
    assert 0.15 < repair.wait <= 0.3
    assert len(out.held) > len(fixed.held)
    assert max(out.held.values()) <= 0.3 + 0.01


def test_fast_repairs_keep_the_floor() -> None:
    """Repairs in 20 ms (a short clean link): the wait stays at the configured 0.1 s."""
    repair = RepairWait(RepairWaitPolicy(floor=0.1, cap=0.3))
    out = run(Leg(lost=set(range(40, 1700, 97)), repair=0.02), 300, repair)
    assert out.keyframe_requests == 0 and repair.samples > 10
    assert repair.wait == 0.1
    assert max(out.held.values()) < 0.06  # a lost marker waits for the next frame


def test_the_wait_is_capped() -> None:
    """Repairs that take 0.2 s, a cap of 0.25 s: a hole holds the video at most the cap."""
    repair = RepairWait(RepairWaitPolicy(floor=0.1, cap=0.25))
    lost = set(range(40, 1700, 97))
    out = run(Leg(lost=lost, repair=0.2), 300, repair)
    assert repair.wait == 0.25
    assert out.keyframe_requests == 1 and out.tracker.stats.recovered == len(lost) - 1
    assert max(out.held.values()) <= 0.25 + 0.04  # the cap, and the packet that finds it passed


def test_repairs_that_never_come_in_time_are_not_waited_for() -> None:
    """Repairs that take 0.6 s (a sender's pacer holding retransmissions): waiting the cap would
    only delay the keyframe, so after the first few the wait is back at the floor."""
    repair = RepairWait(RepairWaitPolicy(floor=0.1, cap=0.3))
    lost = set(range(40, 1700, 97))
    out = run(Leg(lost=lost, repair=0.6), 300, repair)
    assert out.keyframe_requests == len(lost) and out.tracker.stats.recovered == 0
    assert repair.wait == 0.1 and repair.in_time < 0.35
    late_holds = sorted(out.held.items())[-100:]  # the last 100 frames: the floor's wait
    assert max(h for _, h in late_holds) <= 0.1 + 0.04


def test_a_lost_retransmission_is_asked_again_after_a_round_trip() -> None:
    """The first retransmission is lost too: the packet is asked for again after the measured
    round trip, the second one arrives within the wait, and no keyframe is asked for."""
    lost = set(range(40, 1700, 97))
    repair = RepairWait(RepairWaitPolicy(floor=0.1, cap=0.3))
    # the holes before the last one teach the wait and the round trip (60 ms)
    out = run(Leg(lost=lost, repair=0.06, lost_again={1689: 1}), 300, repair)
    assert out.keyframe_requests == 0
    first, second = out.nack_times[1689][:2]
    assert 0.055 <= second - first <= 0.07
    # and the first hole's, asked again after the 50 ms assumed before a repair was measured
    assert out.tracker.stats.recovered_after_renack == 2


def test_a_later_hole_has_its_own_clock() -> None:
    """A hole filled just in time must not leave its age to the next hole behind it."""
    asm = FrameAssembler("video", "H264", max_wait=0.1)
    assert len(asm.push(1, 0, True, b"pl" + FIRST, FIRST, 0.0).frames) == 1
    asm.push(3, 3000, True, b"pl" + FIRST, FIRST, 0.0)  # 2 missing: a hole at 0.0
    asm.push(5, 6000, True, b"pl" + FIRST, FIRST, 0.09)  # 4 missing: a hole at 0.09
    out = asm.push(2, 3000, False, b"pl" + FIRST, FIRST, 0.095)  # the first hole filled
    assert [f.timestamp for f in out.frames] == [3000]
    out = asm.push(6, 9000, True, b"pl" + FIRST, FIRST, 0.15)  # the second is 60 ms old
    assert out.frames == [] and not out.need_keyframe
    out = asm.push(4, 6000, False, b"pl" + FIRST, FIRST, 0.17)  # repaired in time
    assert [f.timestamp for f in out.frames] == [6000, 9000] and asm.frames_skipped == 0


def test_repair_wait_estimate() -> None:
    """Room for one lost retransmission (2 x smoothed) + 4 deviations (RFC 6298's update) +
    margin, within floor and cap."""
    repair = RepairWait(RepairWaitPolicy(floor=0.1, cap=0.5, margin=0.01))
    assert repair.wait == 0.1
    repair.sample(0.03)  # 2 * 0.03 + 4 * 0.015 + 0.01 = 0.13
    assert abs(repair.wait - 0.13) < 1e-9
    for _ in range(60):
        repair.sample(0.03)  # steady: the deviations decay, the floor holds
    assert repair.wait == 0.1
    repair.sample(-1.0)  # nonsense is ignored
    assert repair.samples == 61
    for _ in range(3):
        repair.sample(0.45)  # slow, still in time
    assert repair.wait == 0.5
    for _ in range(9):
        repair.sample(2.0)  # never in time any more: not worth waiting for
    assert repair.wait == 0.1
    for _ in range(6):
        repair.sample(0.2)  # in time again
    assert repair.wait == 0.5
