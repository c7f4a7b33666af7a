"""The test bed's sans-I/O parts: the impairment model (seeded), the profiles and the freeze
counter."""

from __future__ import annotations

import itertools
import random

import pytest

from bench.adaptation import frozen_after, frozen_share, own_cell, own_freezes
from bench.netbed.holes import HoleLog, freeze_causes, hole_summary
from bench.netbed.impairment import GilbertElliott, Impairment, LinkSpec
from bench.netbed.playback import FreezeCounter, gaps, percentile, summarize
from bench.netbed.profiles import PROFILES, Profile, profile

N = 200_000


def run(spec: LinkSpec, n: int = N, gap: float = 0.001, seed: int = 7) -> list[float | None]:
    imp = Impairment(spec, random.Random(seed))
    return [imp.decide(1200, i * gap) for i in range(n)]


def test_clean_link_delivers_every_packet_at_once() -> None:
    out = run(LinkSpec(), n=1000)
    assert out == [i * 0.001 for i in range(1000)]


def test_random_loss_rate_and_independence() -> None:
    out = run(LinkSpec(loss=0.02))
    lost = [x is None for x in out]
    assert sum(lost) / N == pytest.approx(0.02, abs=0.002)
    # independent: a loss right after a loss is no likelier than any loss
    pairs = sum(1 for a, b in itertools.pairwise(lost) if a and b)
    assert pairs / max(1, sum(lost)) == pytest.approx(0.02, abs=0.01)


def test_seeded_runs_repeat() -> None:
    spec = LinkSpec(loss=0.05, delay_ms=20, jitter_ms=5)
    assert run(spec, n=5000, seed=3) == run(spec, n=5000, seed=3)
    assert run(spec, n=5000, seed=3) != run(spec, n=5000, seed=4)


def bursts(lost: list[bool]) -> list[int]:
    out, n = [], 0
    for x in lost:
        if x:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def test_gilbert_elliott_mean_loss_and_burst_length() -> None:
    ge = GilbertElliott.from_burst(0.03, 5.0)
    assert ge.mean_loss == pytest.approx(0.03)
    lost = [x is None for x in run(LinkSpec(burst=ge), n=400_000)]
    assert sum(lost) / len(lost) == pytest.approx(0.03, abs=0.004)
    b = bursts(lost)
    assert sum(b) / len(b) == pytest.approx(5.0, rel=0.1)
    random_b = bursts([x is None for x in run(LinkSpec(loss=0.03), n=400_000)])
    assert sum(random_b) / len(random_b) < 1.1  # independent loss comes one packet at a time


def test_delay_and_jitter_stay_in_bounds_and_in_order() -> None:
    out = run(LinkSpec(delay_ms=20, jitter_ms=5), n=20_000, gap=0.005)
    delays = [at - i * 0.005 for i, at in enumerate(out) if at is not None]
    assert min(delays) >= 0.015 - 1e-9
    assert max(delays) <= 0.025 + 0.005  # in-order holding adds at most about a jitter span
    assert sum(delays) / len(delays) == pytest.approx(0.020, abs=0.002)
    times = [at for at in out if at is not None]
    assert times == sorted(times)  # jitter alone never reorders


def test_reorder_lets_later_packets_overtake() -> None:
    imp = Impairment(LinkSpec(reorder=0.1, reorder_ms=10), random.Random(1))
    out = [imp.decide(100, i * 0.001) for i in range(10_000)]
    times = [at for at in out if at is not None]
    overtaken = sum(1 for a, b in itertools.pairwise(times) if b < a)
    assert imp.reordered == pytest.approx(1000, rel=0.1)
    assert 0.8 * imp.reordered <= overtaken <= imp.reordered  # runs of held packets count once


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        LinkSpec(loss=1.5)
    with pytest.raises(ValueError):
        LinkSpec(delay_ms=5, jitter_ms=10)
    with pytest.raises(ValueError):
        GilbertElliott(p=0, r=0)
    with pytest.raises(ValueError):
        Profile("x", "bad steps", rate_steps=((0.6, 100), (0.3, None)))


def test_spec_round_trips_through_the_forwarder_config() -> None:
    for p in PROFILES.values():
        for spec in (p.up, p.down):
            assert LinkSpec.from_dict(spec.to_dict()) == spec


def test_named_profiles() -> None:
    assert set(PROFILES) >= {
        "clean", "loss2", "loss5-rtt40", "burst3", "1mbps", "500kbps", "rtt300", "drop400"
    }  # fmt: skip
    assert PROFILES["clean"].up.transparent and PROFILES["clean"].rate_kbps is None
    rtt = PROFILES["loss5-rtt40"]
    assert rtt.up.delay_ms + rtt.down.delay_ms == 40
    assert rtt.up.jitter_ms + rtt.down.jitter_ms == 10
    burst = PROFILES["burst3"].down.burst
    assert burst is not None and burst.mean_loss == pytest.approx(0.03)
    assert 1 / burst.r == pytest.approx(5)
    assert profile("drop400").rate_schedule(30) == [(10.0, 400), (20.0, None)]
    with pytest.raises(KeyError, match="unknown profile"):
        profile("nope")


def frames(counter: FreezeCounter, start: float, n: int, gap: float = 1 / 30) -> float:
    t = start
    for _ in range(n):
        counter.frame(t)
        t += gap
    return t - gap


def test_steady_playback_has_no_freeze() -> None:
    c = FreezeCounter()
    end = frames(c, 0.0, 300)
    c.finish(end + 1 / 30)
    assert (c.freezes, c.frozen_seconds) == (0, 0.0)
    assert c.frozen_share(end) == 0.0


def test_freeze_counts_like_chromium() -> None:
    c = FreezeCounter()
    last = frames(c, 0.0, 60)
    c.frame(last + 0.150)  # below max(3 x 33 ms, 33 + 150 ms): not a freeze
    assert c.freezes == 0
    last = frames(c, last + 0.150 + 1 / 30, 60)
    c.frame(last + 0.500)
    assert c.freezes == 1 and c.frozen_seconds == pytest.approx(0.5)
    assert c.longest == pytest.approx(0.5)


def test_the_plain_rule_counts_gaps_chromium_does_not() -> None:
    """Issue 17's rule (an interval over 3 nominal frame intervals, 100 ms at 30 fps) beside
    Chromium's (183 ms): a one-round repair of 150 ms is a gap and no freeze."""
    c = FreezeCounter()
    last = frames(c, 0.0, 60)
    c.frame(last + 0.150)
    assert c.freezes == 0 and c.gap_events == [(pytest.approx(last + 0.150), pytest.approx(0.15))]
    times = [i / 30 for i in range(30)] + [1.2, 1.25, 1.5]
    assert [round(d, 3) for _, d in gaps(times)] == [0.233, 0.25]


def test_own_freezes_leave_out_the_control_viewers() -> None:
    """A freeze that overlaps one of the clean control viewer's is the machine's."""
    control = {"leg": "control", "freeze_events": [(10.5, 0.5)]}
    viewer = {"leg": "auto", "joined_at": 0.0, "ended_at": 20.0, "ttff_s": 0.5,
              "freeze_events": [(10.3, 0.4), (15.4, 0.4)]}  # fmt: skip
    assert own_freezes(viewer, control) == [(15.4, 0.4)]
    assert own_cell(viewer, control) == "2.0 (1)"  # 0.4 s of 20, the first picture's wait aside
    assert own_cell(control, control) == "-"


def test_an_unfinished_freeze_counts_at_the_end() -> None:
    c = FreezeCounter()
    last = frames(c, 0.0, 30)
    c.finish(last + 9.0)
    assert c.freezes == 1 and c.frozen_share(last + 9.0) == pytest.approx(9.0 / (last + 9.0))


def test_summary_of_a_viewer_that_saw_nothing() -> None:
    p = summarize(FreezeCounter(), [], joined_at=0.0, end=30.0, bytes_received=0)
    assert p.frames == 0 and p.frozen_share == 1.0 and p.ttff_s is None and p.g2g_p50_ms is None


def test_summary() -> None:
    c = FreezeCounter()
    frames(c, 0.5, 300)
    p = summarize(c, [10.0, 20.0, 30.0, 40.0], joined_at=0.0, end=10.5, bytes_received=1_250_000)
    assert p.ttff_s == pytest.approx(0.5)
    assert p.fps == pytest.approx(30, rel=0.01)
    assert p.kbps == pytest.approx(1_250_000 * 8 / 1000 / 10.5)
    assert (p.g2g_p50_ms, p.g2g_p95_ms) == (20.0, 40.0)
    assert percentile([3, 1, 2], 100) == 3


def test_frozen_share_counts_from_the_first_picture() -> None:
    """As Chromium's getStats: the wait for the first picture (on a lossy leg, the handshake's
    lost packets) is the ttff column's, not frozen time."""
    v = {"joined_at": 0.0, "ended_at": 30.0, "ttff_s": 1.5, "freeze_events": [(10.3, 0.3)],
         "gap_events": [(10.3, 0.3), (20.2, 0.12)]}  # fmt: skip
    assert frozen_share(v) == pytest.approx(0.3 / 28.5)
    assert frozen_share(v, "gap_events") == pytest.approx(0.42 / 28.5)
    assert frozen_after(v, 0.0) == pytest.approx(1.8 / 30)  # the wait counted in
    assert frozen_share({**v, "ttff_s": None}) == 1.0  # no picture at all


def test_freezes_are_put_down_to_the_hole_that_held_them() -> None:
    log = HoleLog()
    log.nacked(1.00, [10])
    log.arrived(1.05, 10)  # one round: no freeze
    log.nacked(5.00, [20])
    log.nacked(5.12, [20, 21])  # asked again (a hole made to solicit it, or a new one)
    log.arrived(5.13, 21)
    log.arrived(5.17, 20)  # the repair that ends the freeze
    log.nacked(5.30, [20])  # too late to count: it was filled
    log.arrived(5.40, 20)
    log.nacked(9.00, [30])  # never filled: the picture starts over at a keyframe
    log.given_up(10.0, [30])  # 128 packets on: no longer asked for
    log.nacked(14.80, [40])
    log.arrived(14.805, 40)  # filled within 5 ms inside a stall of the machine's
    freezes = [(5.20, 0.22), (9.6, 0.5), (15.0, 0.3)]
    held = freeze_causes(freezes, log.holes())
    assert [c.cause for c in held] == ["repaired", "keyframe", "no hole"]
    assert held[0].nacks == 2
    assert held[0].open_s == pytest.approx(0.17) and held[0].asked_again_after_s == pytest.approx(
        0.12
    )
    assert hole_summary(log.holes()) == {"holes": 5, "one_nack": 3, "more_nacks": 1, "never": 1,
                                         "long_one_nack": 0, "long_more_nacks": 1}  # fmt: skip


def test_the_bench_viewers_nack_log_follows_aiortcs_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``adapter.use_bench_nack_log`` wraps the NackGenerator aiortc's receivers build (fails
    loudly if aiortc changes it): each NACK's list, each filling packet, holes given up."""
    from aiortc import rtcrtpreceiver
    from aiortc.rtp import RtpPacket

    from relay.rtc.adapter import use_bench_nack_log

    monkeypatch.setattr(rtcrtpreceiver, "NackGenerator", rtcrtpreceiver.NackGenerator)
    clock = [0.0]
    log = HoleLog()
    use_bench_nack_log(
        lambda seqs: log.nacked(clock[0], seqs),
        lambda seq: log.arrived(clock[0], seq),
        lambda seqs: log.given_up(clock[0], seqs),
    )
    generator = rtcrtpreceiver.NackGenerator()
    for t, seq in ((0.0, 1), (0.01, 2), (0.02, 4), (0.03, 5), (0.07, 3), (0.08, 7), (1.0, 200)):
        clock[0] = t
        generator.add(RtpPacket(payload_type=96, sequence_number=seq))
    holes = {h[0]: h for h in log.holes()}
    assert holes[3][1:] == (0.02, [0.02], 0.07, None)  # NACKed at once, filled 50 ms later
    assert holes[6][1:] == (0.08, [0.08], None, 1.0)  # given up: 128 packets behind
    assert holes[72][1] == 1.0 and 71 not in holes  # the new list reaches 128 packets back
