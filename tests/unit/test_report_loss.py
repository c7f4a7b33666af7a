"""A viewer's loss from receiver reports over a window (relay.media.report_loss), on synthetic
traces of what a receiver reports: random loss repaired by retransmission with a report block
in every NACK (a browser), and a bottleneck whose losses are not repaired."""

from __future__ import annotations

import random

from relay.media.layer_selector import Layer, LayerSelector, ReportEstimate
from relay.media.report_loss import LOSSY, ReportLoss


class Receiver:
    """What a receiver counts of a 140 packet/s stream: RFC 3550's cumulative loss (expected
    minus received, late arrivals included) and its extended highest sequence number; the
    fraction lost since its previous report, as a report block carries it."""

    def __init__(self) -> None:
        self.highest = 1000
        self.received = 0
        self.first = 1001
        self._last_expected = 0
        self._last_received = 0

    @property
    def lost(self) -> int:
        return (self.highest - self.first + 1) - self.received

    def report(self) -> tuple[float, int, int]:
        expected = self.highest - self.first + 1
        interval, got = expected - self._last_expected, self.received - self._last_received
        self._last_expected, self._last_received = expected, self.received
        fraction = max(0, interval - got) / interval if interval else 0.0
        return fraction, self.highest, self.lost


def random_loss_trace(
    loss: float, seconds: float, *, repaired: bool, seed: int = 1
) -> list[tuple[float, float, int, int]]:
    """(time, per-report fraction, highest, cumulative lost) of every report: one each second
    and one with every NACK, sent at the hole; a lost packet's retransmission arrives 50 ms
    later (when ``repaired``; itself lost at the same rate)."""
    rng = random.Random(seed)
    rx = Receiver()
    pending: list[float] = []  # when the retransmissions arrive
    reports = []
    next_periodic = 1.0
    for i in range(int(seconds * 140)):
        now = i / 140
        pending_now = [t for t in pending if t <= now]
        pending = [t for t in pending if t > now]
        rx.received += len(pending_now)
        rx.highest += 1
        if rng.random() < loss:
            if repaired and rng.random() >= loss:
                pending.append(now + 0.05)
            reports.append((now, *rx.report()))  # the NACK's compound packet
        else:
            rx.received += 1
        if now >= next_periodic:
            next_periodic += 1.0
            reports.append((now, *rx.report()))
    return reports


def test_random_loss_repaired_is_not_lossy_though_single_reports_say_so() -> None:
    trace = random_loss_trace(0.02, 60, repaired=True)
    per_report = sum(1 for _, fraction, _, _ in trace if fraction >= LOSSY)
    assert per_report > 20  # what counted as congestion: a hole against a few packets
    window = ReportLoss()
    for now, _, highest, lost in trace:
        window.on_report(highest, lost, now)
    assert window.windows >= 50
    assert window.lossy == 0
    trace5 = random_loss_trace(0.05, 60, repaired=True, seed=2)
    window5 = ReportLoss()
    for now, _, highest, lost in trace5:
        window5.on_report(highest, lost, now)
    assert window5.lossy == 0
    assert window5.fraction < LOSSY


def test_a_bottleneck_is_lossy_every_window() -> None:
    trace = random_loss_trace(0.3, 10, repaired=False)
    window = ReportLoss()
    closed = [window.on_report(highest, lost, now) for now, _, highest, lost in trace]
    assert sum(closed) == window.lossy >= 8
    assert 0.2 <= window.fraction <= 0.4


def test_windows_need_time_and_packets() -> None:
    window = ReportLoss()
    assert not window.on_report(100, 0, 0.0)
    assert not window.on_report(110, 5, 0.5)  # half a second: not judged
    assert not window.on_report(110, 5, 1.2)  # a second, 10 packets: too few yet
    assert window.windows == 0
    assert window.on_report(115, 6, 3.1)  # three seconds: judged anyway, 6 of 15
    assert window.fraction == 0.4 and window.lossy == 1


def test_wraps_and_lies() -> None:
    window = ReportLoss()
    window.on_report((1 << 32) - 10, (1 << 24) - 2, 0.0)  # both counters about to wrap
    assert not window.on_report(90, 1, 1.0)  # 100 expected, 3 lost (the 24-bit count wrapped)
    assert window.fraction == 0.03
    assert not window.on_report(200, 0, 2.0)  # fewer lost than before: late arrivals
    assert window.fraction == 0.0
    assert not window.on_report(50, 0, 3.0)  # went backwards: a restart, no judgement
    assert not window.on_report(150, 999, 3.5)  # within the new window's first second
    assert window.windows == 2
    assert window.on_report(250, 999, 4.1)  # 999 lost of 200 expected: at most all of them
    assert window.fraction == 1.0


def test_the_selector_keeps_a_lossy_but_repaired_viewer_up() -> None:
    """The selector fed the windowed count and loss (as ViewerService.adapt does) keeps a
    viewer on 720p through 60 s of 2 % repaired loss; fed the per-report counts it moved."""
    layers = [Layer("720p", 1_500_000), Layer("360p", 500_000), Layer("180p", 200_000)]
    trace = random_loss_trace(0.02, 60, repaired=True)
    old, new = LayerSelector("720p"), LayerSelector("720p")
    window = ReportLoss()
    old_count = 0
    last_fraction = 0.0
    for now, fraction, highest, lost in trace:
        window.on_report(highest, lost, now)
        old_count += fraction >= LOSSY
        last_fraction = fraction
        for selector, count, loss in (
            (old, old_count, last_fraction),
            (new, window.lossy, window.fraction),
        ):
            switch = selector.update(now, layers, ReportEstimate(None, loss, 0.01), count)
            if switch is not None:
                selector.switched(now)
    assert old.switches_down >= 1
    assert new.switches_down == 0 and new.current == "720p"


def test_clean_windows_are_those_that_carried_a_stream() -> None:
    """A receiver that gets nothing reports no loss either: its windows, judged after
    MAX_WINDOW with fewer than MIN_PACKETS expected, are not clean (the layer selector counts
    a layer's calm from the first clean one)."""
    starved = ReportLoss()
    for i in range(10):
        starved.on_report(100 + i, 0, float(i))
    assert starved.windows >= 2 and starved.clean == 0 and starved.lossy == 0
    flowing = ReportLoss()
    for i in range(10):
        flowing.on_report(100 + 50 * i, 0, float(i))
    assert flowing.clean == flowing.windows == 9 and flowing.lossy == 0
    lossy = ReportLoss()
    for i in range(10):
        lossy.on_report(100 + 50 * i, 20 * i, float(i))
    assert lossy.clean == 0 and lossy.lossy == 9


def test_the_first_report_is_judged_by_its_own_fraction_when_it_lost_enough() -> None:
    """The first report's fraction lost covers the stream from its start: judged at once when it
    counts FIRST_LOST packets lost or more (a viewer that joins behind a thin link), not when a
    clean link lost a handful, nor on a later report (those cover only the packets since the
    one before, hence the windows)."""
    thin = ReportLoss()
    assert thin.on_report(150, 100, 1.0, 100 / 150)
    assert thin.lossy == 1 and thin.fraction == 100 / 150
    clean = ReportLoss()
    assert not clean.on_report(150, 3, 1.0, 0.2)  # 20 % of a handful
    assert not clean.on_report(300, 3, 1.5, 0.9)  # not the first: a window, not yet judged
    assert clean.lossy == 0
    mild = ReportLoss()
    assert not mild.on_report(300, 12, 1.0, 0.04)  # random loss under LOSSY
    liar = ReportLoss()
    assert not liar.on_report(300, 100, 1.0, 7.0) and liar.lossy == 0  # no such fraction
