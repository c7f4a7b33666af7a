"""Probing a viewer's link for headroom (relay/media/probe.py) with the estimator's cluster
measurement and the layer selector, on the closed-loop synthetic link of
tests/support/link_trace.py (fake clock): a dip's recovery is found, a steady bottleneck is
probed ever less and never flaps, a lossy link does not probe itself into switches, a cluster
stops at the first overuse; and the blind retry (no estimate) after a sudden drop."""

from __future__ import annotations

import itertools

from relay.media.cc_feedback import build_transport_feedback
from relay.media.estimator import BandwidthEstimate, BandwidthEstimator, ProbeResult
from relay.media.layer_selector import Layer, LayerSelector, ReportEstimate
from relay.media.probe import ProbeConfig, ProbeController
from tests.support.link_trace import Link, run_adaptive

LADDER = (Layer("720p", 1_600_000), Layer("360p", 564_000), Layer("180p", 264_000))


def layer_at(layers: list[tuple[float, str]], t: float) -> str:
    return [name for at, name in layers if at <= t][-1]


def test_a_dip_to_400k_goes_down_within_2_s_and_back_up_within_10_s() -> None:
    link = Link(capacity_bps=5e6, queue=0.1, dip=(10.0, 20.0, 4e5))
    seen = run_adaptive(link, LADDER, seconds=40)
    downs = [t for t, _, down in seen.switches if down]
    ups = [t for t, _, down in seen.switches if not down]
    assert downs and 10.0 <= downs[0] <= 12.0, seen.switches
    assert ups and 20.0 < ups[0] <= 30.0, seen.switches
    assert layer_at(seen.layers, 39.0) == "720p"  # all the way back
    assert len(seen.switches) <= 3
    # the C feedback loop (used while no cluster waits for feedback) and the Python one agree
    python = run_adaptive(link, LADDER, seconds=40, native=False)
    assert python.switches == seen.switches
    # the probes are what finds the recovery: without them the viewer stays down
    blind = run_adaptive(link, LADDER, seconds=40, probing=False)
    assert [(to, down) for _, to, down in blind.switches] == [("180p", True)]


def test_a_long_dip_is_probed_often_enough_to_find_its_end() -> None:
    """A 30 s dip after 10 s on 720p: the clusters that fail inside it do not push the next
    one out to 12-24 s (the backoff's doubling): ``dip_retry`` keeps them 4 s apart, so the
    recovery is found within ~3 s (it was 22.5 s)."""
    link = Link(capacity_bps=5e6, queue=0.1, dip=(10.0, 40.0, 4e5))
    seen = run_adaptive(link, LADDER, seconds=65)
    ups = [t for t, _, down in seen.switches if not down]
    assert ups and 40.0 < ups[0] <= 45.0, seen.switches
    assert layer_at(seen.layers, 64.0) == "720p"
    # a viewer that never fitted (moved down right after joining) keeps the doubling
    steady = run_adaptive(Link(capacity_bps=4e5, queue=0.1), LADDER, seconds=65)
    assert steady.controller is not None and steady.controller.clusters <= 5


def test_a_steady_bottleneck_is_probed_ever_less_and_never_flaps() -> None:
    seen = run_adaptive(Link(capacity_bps=1e6, queue=0.1), LADDER, seconds=120)
    assert [(to, down) for _, to, down in seen.switches] == [("360p", True)]
    c = seen.controller
    assert c is not None and c.successes == 0
    assert 3 <= c.clusters <= 7  # every 3, 6, 12, 24, 30 s
    # the probes cost little: a 0.3 s cluster each (it stops at the first overuse), at most
    # 1.25 x the next layer's rate
    assert seen.probe_packets < 50 * c.clusters


def test_a_lossy_link_neither_probes_nor_flaps() -> None:
    """2 % random loss on a wide link: no switch at all from the top layer (nothing above it
    to probe); from a lower layer one climb, then nothing."""
    link = Link(capacity_bps=5e6, queue=0.1, loss=0.02)
    top = run_adaptive(link, LADDER, seconds=60, seed=3)
    assert top.switches == []
    assert top.controller is not None and top.controller.clusters == 0
    low = run_adaptive(link, LADDER, seconds=60, start="180p", seed=3)
    assert all(not down for _, _, down in low.switches), low.switches
    assert len(low.switches) <= 2 and layer_at(low.layers, 59.0) == "720p"
    # 5 % loss and 40 ms RTT: no more than one switch per 10 s, none of them down
    lossy = Link(capacity_bps=5e6, queue=0.1, loss=0.05, delay=0.02)
    seen = run_adaptive(lossy, LADDER, seconds=60, start="180p", seed=5)
    assert all(not down for _, _, down in seen.switches), seen.switches
    assert all(b - a >= 10.0 for a, b in itertools.pairwise(t for t, _, _ in seen.switches))


def calm(target: int = 300_000, sent: int = 264_000, usage: str = "normal") -> BandwidthEstimate:
    return BandwidthEstimate(target, 0.0, 0.02, "twcc", sent, sent, usage)


def test_a_cluster_stops_at_the_first_overuse_and_a_failure_backs_off() -> None:
    config = ProbeConfig(retry=3.0, max_retry=12.0)
    c = ProbeController(config, now=0.0)
    higher = [564_000, 1_600_000]
    assert c.update(0.5, calm(), higher) is None  # calm only from now
    assert c.update(1.5, calm(), higher) is None  # first_after: 2 s
    cluster = c.update(2.0, calm(), higher)
    assert cluster is not None and cluster.bitrate == int(1.25 * 564_000)
    assert c.update(2.01, calm(), higher) is None  # one at a time
    first = c.due(2.0)
    assert first is not None and first > 0  # a frame's worth at once
    c.sent(first)
    assert c.due(2.03, overuse=True) is None and c.active is None and c.aborted == 1
    # its result (overuse) is a failure: the next cluster 3 s later, then 6, then 12 (the cap)
    failed = ProbeResult(cluster.id, 400_000, 700_000, 400_000, 10, 1, "overuse")
    starts = []
    t = 2.5
    results: list[ProbeResult] = [failed]
    while t < 60:
        got = c.update(t, calm(), higher, results)
        results = []
        if got is not None:
            starts.append(t)
            c.due(t)
            assert c.due(t + 0.9) is None  # over by its timeout (0.8 s), whatever was sent
            results = [ProbeResult(got.id, 380_000, 700_000, 400_000, 10, 0, "normal")]
        t = round(t + 0.5, 6)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # (each judged at the tick after its cluster: +0.5 s)
    assert starts[0] == 5.5 and gaps[:3] == [6.5, 12.5, 12.5], starts
    assert max(gaps) <= 12.5 and c.failures == len(starts) + 1 and c.successes == 0


def test_a_success_climbs_the_ladder_before_it_answers() -> None:
    c = ProbeController(now=0.0)
    higher = [564_000, 1_600_000]
    c.update(1.0, calm(), higher)
    first = c.update(2.0, calm(), higher)
    assert first is not None
    # it carries 0.3 s worth of probe bytes, at most three frames' worth with one frame (a late
    # frame stretches the cluster, never bursts it), and ends once they went out
    total = first.probe_bps * 0.3 / 8
    late = c.due(2.3)
    assert late is not None and late <= first.probe_bps * 3 / 30 / 8 + 1
    c.sent(late)
    rest = c.due(2.31)
    assert rest is not None and rest > 0
    c.sent(int(total))
    assert c.due(2.32) is None and c.active is None
    ok = ProbeResult(first.id, 700_000, 700_000, 720_000, 10, 0, "normal")
    assert c.update(2.5, calm(), higher, [ok]) is None  # again: 0.3 s later
    assert c.probed(2.5, len(higher)) is None  # still climbing
    second = c.update(3.0, calm(), higher)
    assert second is not None and second.bitrate == int(1.25 * 1_600_000)
    assert c.due(3.9) is None  # its timeout: over
    top = ProbeResult(second.id, 1_950_000, 1_950_000, 2_000_000, 20, 0, "normal")
    c.update(3.7, calm(), higher, [top])
    assert c.probed(3.7, len(higher)) == 1_950_000
    assert c.probed(9.0, len(higher)) is None  # stale after 5 s
    # a cluster that arrived as fast as it was sent, but was sent below its rate (a stalled
    # source gave few frames to carry it), is neither a success nor a failure
    c.switched(10.0)
    c.update(11.0, calm(), higher)
    third = c.update(12.0, calm(), higher)
    assert third is not None
    assert c.due(12.9) is None
    thin = ProbeResult(third.id, 300_000, 300_000, 310_000, 6, 0, "normal")
    c.update(12.7, calm(), higher, [thin])
    assert (c.inconclusive, c.failures) == (1, 0)
    # nothing is probed without transport-cc, or while the delay detector is not calm
    other = ProbeController(now=0.0)
    remb = BandwidthEstimate(300_000, 0.0, 0.02, "remb", None, 264_000)
    assert all(other.update(t, remb, higher) is None for t in (1.0, 3.0, 5.0))
    assert all(other.update(t, calm(usage="underuse"), higher) is None for t in (6.0, 9.0))


def test_the_estimator_measures_a_cluster_through_a_bottleneck() -> None:
    """A cluster sent at 1.2 Mbit/s through a 700 kbit/s bottleneck arrives spread out: the
    link's rate (x 0.95) is its result; through a wide link, the rate it was sent at."""
    for capacity, low, high in ((700_000, 600_000, 700_000), (10e6, 1_000_000, 1_300_000)):
        est = BandwidthEstimator()
        link_free = 0.0
        arrivals: list[float | None] = []
        est.begin_probe(1, 0.0)
        for k in range(10):  # 10 ms apart, 1500 bytes: 1.2 Mbit/s
            now = k * 0.01
            est.record([1500], now)
            link_free = max(link_free, now) + 1500 * 8 / capacity
            arrivals.append(link_free + 0.02)
        est.end_probe(0.1)
        packet = build_transport_feedback(0, arrivals)
        est.on_transport_feedback(packet[12:], 0.3)
        (result,) = est.take_probe_results(0.3)
        assert result.bitrate is not None and low <= result.bitrate <= high, result
        assert result.lost == 0 and result.sent == 10
        assert est.snapshot(0.3).probes == 1


def test_a_token_bucket_does_not_pass_for_capacity() -> None:
    """A 500 kbit/s tbf with a 4000-byte bucket (the test bed's): a 0.1 s cluster at 1.2 Mbit/s
    gets its head through at line rate until the bucket is empty (~46 ms); the rest arrives at
    500 kbit/s, which is the result. (A cluster within ~1.4 x the rate never empties such a
    bucket in 0.1 s: the link does carry it for that long.)"""
    est = BandwidthEstimator()
    est.begin_probe(1, 0.0)
    rate, tokens, last, queue_free = 500_000 / 8, 4000.0, 0.0, 0.0
    arrivals: list[float | None] = []
    for k in range(20):
        now = k * 0.005  # 750 bytes every 5 ms: 1.2 Mbit/s
        est.record([750], now)
        tokens = min(4000.0, tokens + (now - last) * rate)
        last = now
        if tokens >= 750 and queue_free <= now:
            tokens -= 750
            at = now
        else:
            at = max(queue_free, now) + 750 / rate
        queue_free = max(queue_free, at) if at > now else queue_free
        arrivals.append(at + 0.02)
    est.end_probe(0.1)
    est.on_transport_feedback(build_transport_feedback(0, arrivals)[12:], 0.3)
    (result,) = est.take_probe_results(0.3)
    assert result.bitrate is not None and result.bitrate < 600_000, result


def test_a_cluster_whose_feedback_never_comes_fails_after_a_second() -> None:
    est = BandwidthEstimator()
    est.begin_probe(7, 0.0)
    est.record([1200] * 6, 0.0)
    est.end_probe(0.1)
    assert est.take_probe_results(0.5) == []
    (result,) = est.take_probe_results(1.2)
    assert result.cluster == 7 and result.bitrate is None


def test_a_sudden_drop_shortens_the_blind_retry_a_first_fit_does_not() -> None:
    """Without an estimate (aiortc viewers): a move down from a layer held for 15 s is a dip
    and the blind probe up comes as soon as ``min_up_interval`` allows (10 s), not after the
    20 s ``blind_hold``; a viewer moved down right after joining keeps the long hold."""
    from relay.media.layer_selector import SelectorConfig

    config = SelectorConfig(blind_hold=20.0)

    downs: list[float] = []

    def first_up(sel: LayerSelector, lossy_until: float, t0: float) -> float | None:
        count = 0
        t = t0
        while t < t0 + 60:
            lossy = t < lossy_until
            count += int(lossy)
            est = ReportEstimate(None, 0.3 if lossy else 0.0, 0.05)
            switch = sel.update(t, LADDER, est, count)
            if switch is not None:
                sel.switched(t)
                if not switch.down:
                    return t
                downs.append(t)
            t = round(t + 0.5, 6)
        return None

    dip = LayerSelector("720p", config=config, now=0.0)
    # 30 s fine on 720p, then 2 s of lossy reports: down, and up 10 s after that move
    up = first_up(dip, 32.0, 30.0)
    assert downs and downs[0] <= 31.0
    assert up is not None and up - downs[-1] <= 10.5, (downs, up)
    joined = LayerSelector("720p", config=config, now=0.0)
    up = first_up(joined, 2.0, 0.0)
    assert up is not None and up >= 20.0, up


def test_probes_that_pass_on_a_link_that_then_sinks_back_off() -> None:
    """Every probe says 720p fits, but on 720p the estimate sinks (a loaded sender's delay
    noise read as overuse): each such up-switch fails, and the wait before the next doubles,
    whatever moved it up, so the viewer does not flap every 10 s."""
    sel = LayerSelector("360p", now=0.0)
    ups: list[float] = []
    t = 0.0
    while t < 300.0:
        target = 900_000 if sel.current == "720p" else 700_000
        switch = sel.update(t, LADDER, ReportEstimate(target, 0.02, 0.05), 0, 2_500_000)
        if switch is not None:
            sel.switched(t)
            if not switch.down:
                assert switch.reason == "probed"
                ups.append(t)
        t = round(t + 0.5, 6)
    gaps = [b - a for a, b in itertools.pairwise(ups)]
    assert len(ups) >= 3 and gaps[0] >= 20.0, ups
    assert all(later >= 1.9 * earlier for earlier, later in itertools.pairwise(gaps[:3])), gaps
    assert len(ups) <= 8  # over 300 s; 10 s apart would be ~27


def test_only_a_move_down_after_a_calm_stretch_is_a_dip() -> None:
    """The short retry after a dip needs ``fitted`` s of calm estimate before the move down:
    a viewer that joined on a thin link (never calm, however long it sat on the top layer:
    Chromium's first picture can take 9 s on a loaded machine) keeps the doubling."""
    higher = [564_000, 1_600_000]

    def waits(before: BandwidthEstimate) -> list[float]:
        c = ProbeController(now=0.0)
        t = 0.0
        while t < 9.0:  # on 720p (nothing higher), then moved down
            c.update(t, before, [])
            t = round(t + 0.5, 6)
        c.update(9.0, calm(usage="overuse"), [])
        c.switched(9.5, down=True)
        starts: list[float] = []
        results: list[ProbeResult] = []
        t = 10.0
        while t < 50.0:
            got = c.update(t, calm(), higher, results)
            results = []
            if got is not None:
                starts.append(t)
                c.due(t)
                assert c.due(t + 0.9) is None
                results = [ProbeResult(got.id, 380_000, 700_000, 400_000, 10, 0, "normal")]
            t = round(t + 0.5, 6)
        return [b - a for a, b in itertools.pairwise(starts)]

    dip = waits(calm())
    assert dip and max(dip) <= 4.5, dip  # within dip_window (30 s): every ~4 s
    thin = waits(calm(usage="overuse"))
    assert thin[:2] == [3.5, 6.5], thin  # 3, 6, 12 s (+ the tick that judges each)


def test_late_frames_carry_the_bytes_due_since_the_frame_before() -> None:
    """A starved source's frames 0.1 s apart: each carries 0.1 s of probe bytes (the cluster
    keeps its rate; with two frames' worth each it was sent at 2/3 of it and measured as
    far below the layer); a frame 0.5 s late carries three frames' worth, not the lot."""
    c = ProbeController(now=0.0)
    higher = [564_000, 1_600_000]
    c.update(1.0, calm(), higher)
    cluster = c.update(2.0, calm(), higher)
    assert cluster is not None
    sent = 0
    for t in (2.05, 2.15, 2.25):
        due = c.due(t)
        assert due is not None
        c.sent(due)
        sent += due
    assert sent >= 0.9 * cluster.probe_bps * 0.25 / 8  # on the rate, ~0.28 s in
    stalled = ProbeController(now=0.0)
    stalled.update(1.0, calm(), higher)
    again = stalled.update(2.0, calm(), higher)
    assert again is not None
    burst = stalled.due(2.5)
    assert burst is not None and burst <= again.probe_bps * 3 / 30 / 8 + 1


def test_a_cluster_stops_once_its_packets_queue() -> None:
    """Its packets' one-way delay grows 40 ms through a 1 Mbit/s bottleneck: stopped there,
    before the bottleneck's queue overflows (and takes media with it); on a wide link the
    delay does not grow and the cluster runs on."""
    for capacity, stops in ((1e6, True), (10e6, False)):
        est = BandwidthEstimator()
        est.begin_probe(1, 0.0)
        link_free = 0.0
        arrivals: list[float | None] = []
        for k in range(20):  # 1500 bytes every 6 ms: 2 Mbit/s
            now = k * 0.006
            est.record([1500], now)
            link_free = max(link_free, now) + 1500 * 8 / capacity
            arrivals.append(link_free + 0.02)
        est.on_transport_feedback(build_transport_feedback(0, arrivals)[12:], 0.15)
        assert (est.probe_queued >= 0.04) is stops, est.probe_queued
    c = ProbeController(now=0.0)
    c.update(1.0, calm(), [564_000])
    assert c.update(2.0, calm(), [564_000]) is not None
    assert c.due(2.03, queued=0.01) is not None
    assert c.due(2.06, queued=0.05) is None and c.aborted == 1
