"""The per-viewer layer selector on synthetic traces (fake clock): down fast, up slowly, no
flapping, a layer that stops, a pin; the switch is made when the selector is told it was."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from relay.media.layer_selector import (
    Layer,
    LayerSelector,
    ReportEstimate,
    SelectorConfig,
    Switch,
)

LADDER = (Layer("720p", 1_600_000), Layer("360p", 650_000), Layer("180p", 300_000))
TICK = 0.5


@dataclass
class Sample:
    target_bps: int | None = None
    loss: float = 0.0
    congestion: int = 0  # monotonic
    layers: tuple[Layer, ...] = LADDER


def run(
    sel: LayerSelector, trace: Callable[[float, str], Sample], until: float, start: float = 0.0
) -> list[tuple[float, Switch]]:
    """Tick the selector every TICK s; a switch happens at once (its keyframe came)."""
    made = []
    t = start
    while t <= until + 1e-9:
        s = trace(t, sel.current)
        est = ReportEstimate(s.target_bps, s.loss, 0.05)
        switch = sel.update(t, s.layers, est, s.congestion)
        if switch is not None:
            sel.switched(t)
            made.append((t, switch))
        t = round(t + TICK, 6)
    return made


def link(capacity: Callable[[float], int]) -> Callable[[float, str], Sample]:
    """An estimator that tracks a link of ``capacity(t)`` bits/s."""
    return lambda t, current: Sample(target_bps=capacity(t))


def test_a_bottleneck_moves_the_viewer_down_at_once_and_it_stays() -> None:
    sel = LayerSelector("720p")
    made = run(sel, link(lambda t: 1_000_000), 60.0)
    assert [(s.target, s.down) for _, s in made] == [("360p", True)]
    assert made[0][0] <= 2.0  # well within the 3 s target
    assert sel.switches_down == 1 and sel.switches_up == 0


def test_500k_goes_straight_to_the_lowest_layer() -> None:
    sel = LayerSelector("720p")
    made = run(sel, link(lambda t: 450_000), 30.0)
    assert [s.target for _, s in made] == ["180p"]
    assert made[0][0] <= 2.0


def test_the_joining_layer_is_left_without_the_switch_interval() -> None:
    """The first layer was never switched to: a viewer that joins behind a thin link moves
    down as soon as its first reports say so (severe loss: at once; an estimate below the
    layer: after ``down_after``), not after ``min_down_interval``; after a switch it waits."""
    lossy = LayerSelector("720p", now=0.0)
    lossy.update(0.0, LADDER, ReportEstimate(None, 0.0, 0.05), 0)
    switch = lossy.update(0.5, LADDER, ReportEstimate(None, 0.5, 0.05), 1)
    assert switch is not None and switch.down and switch.reason == "congestion"
    made = run(LayerSelector("720p"), link(lambda t: 1_000_000), 10.0)
    assert made[0][0] == 1.0 and made[0][1].target == "360p"
    # after a switch: min_down_interval (1.5 s) before the next move down, severe loss or not
    lossy.switched(0.5)
    assert lossy.update(1.0, LADDER, ReportEstimate(None, 0.5, 0.05), 2) is None
    late = lossy.update(2.0, LADDER, ReportEstimate(None, 0.5, 0.05), 3)
    assert late is not None and late.down


def test_receiver_reports_alone_size_the_step_from_the_loss() -> None:
    """No bitrate estimate: a link that loses 40 % of 1.6 Mbit/s carries ~1 Mbit/s: 360p; one
    losing 70 % of it carries ~0.5: 180p. A lossy report each second (the congestion count)."""

    def lossy(loss: float, clean_on: str) -> Callable[[float, str], Sample]:
        def trace(t: float, current: str) -> Sample:
            reports = int(t)  # one receiver report a second
            bad = current != clean_on
            return Sample(loss=loss if bad else 0.0, congestion=reports if bad else 0)

        return trace

    sel = LayerSelector("720p")
    made = run(sel, lossy(0.4, "360p"), 8.0)
    assert [s.target for _, s in made] == ["360p"] and made[0][0] <= 2.0
    sel = LayerSelector("720p")
    made = run(sel, lossy(0.7, "180p"), 8.0)
    assert [s.target for _, s in made] == ["180p"] and made[0][0] <= 2.0


def test_dip_and_recovery_down_within_2_s_up_within_10_s() -> None:
    sel = LayerSelector("720p")
    made = run(sel, link(lambda t: 400_000 if 10 <= t < 20 else 3_000_000), 60.0)
    assert [(s.target, s.down) for _, s in made] == [("180p", True), ("720p", False)]
    (down_at, _), (up_at, _) = made
    assert 10 <= down_at <= 12
    assert 20 < up_at <= 30


def test_a_failed_up_switch_doubles_the_hold_and_flapping_is_bounded() -> None:
    """An estimate that overshoots right after each recovery (the link cannot carry 720p):
    every up-switch fails; the holds double, so switches thin out."""

    def trace(t: float, current: str) -> Sample:
        if current == "720p":
            return Sample(target_bps=900_000)  # the link buckles under 720p
        return Sample(target_bps=2_500_000)  # and looks wide open under 360p

    sel = LayerSelector("360p", config=SelectorConfig(hold=3.0, max_hold=60.0))
    made = run(sel, trace, 200.0)
    ups = [t for t, s in made if not s.down]
    gaps = [b - a for a, b in itertools.pairwise(ups)]
    assert len(ups) >= 3
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps))
    assert sel.hold > 3.0
    # no more than one switch per 10 s, pairs of up+down aside, over any window
    assert all(b - a >= 10.0 for a, b in itertools.pairwise(ups))


def test_steady_lossy_link_does_not_flap() -> None:
    """5 % random loss: now and then a report crosses the lossy line; that is no bottleneck."""

    rng = random.Random(7)
    count = 0
    last_report = -1

    def trace(t: float, current: str) -> Sample:
        nonlocal count, last_report
        loss = 0.05
        if int(t) != last_report:  # a report a second, binomial over ~60 packets
            last_report = int(t)
            loss = sum(rng.random() < 0.05 for _ in range(60)) / 60
            if loss >= 0.1:
                count += 1
        return Sample(loss=loss, congestion=count)

    sel = LayerSelector("720p")
    made = run(sel, trace, 120.0)
    assert sel.switches <= 120 / 10
    times = [t for t, _ in made]
    assert all(b - a >= 1.5 for a, b in itertools.pairwise(times))


def test_a_layer_that_stops_moves_its_viewers_within_a_tick() -> None:
    sel = LayerSelector("720p")
    assert run(sel, link(lambda t: 3_000_000), 20.0) == []

    def gone(t: float, current: str) -> Sample:
        top = Layer("720p", 1_600_000, live=t < 21.0)
        return Sample(target_bps=3_000_000, layers=(top, *LADDER[1:]))

    made = run(sel, gone, 22.0, start=20.5)
    assert [(t, s.target, s.urgent, s.reason) for t, s in made] == [(21.0, "360p", True, "gone")]


def test_a_pin_wins_over_the_estimate_and_survives_its_layer_stopping() -> None:
    sel = LayerSelector("720p", pinned="720p")
    assert run(sel, link(lambda t: 300_000), 20.0) == []  # pinned: starved, but kept
    sel.pin("180p")
    made = run(sel, link(lambda t: 5_000_000), 40.0, start=20.0)
    assert [(s.target, s.reason) for _, s in made] == [("180p", "pin")]

    def stopped(t: float, current: str) -> Sample:
        low = Layer("180p", 300_000, live=not 45 <= t < 50)
        return Sample(target_bps=5_000_000, layers=(*LADDER[:2], low))

    made = run(sel, stopped, 60.0, start=40.0)
    assert [s.target for _, s in made] == ["720p", "180p"]  # away while gone, back after
    sel.pin(None)  # auto again: climbs once the estimate has held
    made = run(sel, link(lambda t: 5_000_000), 80.0, start=60.0)
    assert [s.target for _, s in made] == ["720p"]


def test_no_second_decision_while_a_switch_waits_for_its_keyframe() -> None:
    sel = LayerSelector("720p")
    first = None
    t = 0.0
    while first is None:
        first = sel.update(t, LADDER, ReportEstimate(400_000), 0)
        t += TICK
    assert first.target == "180p" and sel.pending == first
    assert sel.update(t + 5, LADDER, ReportEstimate(100), 0) is None
    assert sel.current == "720p"
    sel.switched(t + 5)
    assert sel.current == "180p" and sel.pending is None


def test_an_abandoned_probe_backs_off() -> None:
    sel = LayerSelector("360p", config=SelectorConfig(hold=2.0))
    made = None
    t = 0.0
    while made is None:
        made = sel.update(t, LADDER, ReportEstimate(3_000_000), 0)
        t += TICK
    assert not made.down
    sel.abandoned(t)
    assert sel.current == "360p" and sel.hold == 4.0
    assert sel.update(t + 5, LADDER, ReportEstimate(3_000_000), 0) is None  # waits again


def test_without_any_estimate_it_probes_up_after_a_quiet_hold() -> None:
    sel = LayerSelector("180p", now=0.0)
    made = run(sel, lambda t, cur: Sample(), 30.0)
    assert [(t, s.target, s.reason) for t, s in made] == [
        (10.0, "360p", "probe"),
        (20.0, "720p", "probe"),
    ]


def test_a_failed_probe_comes_back_down_at_the_first_lossy_report() -> None:
    """No estimate: the blind probe up meets a link that loses 15 % on the higher layer (not
    "severe"): the first lossy report after the probe is enough, and the next probe waits
    twice as long."""
    count = 0

    def trace(t: float, current: str) -> Sample:
        nonlocal count
        if current == "720p" and t == int(t):  # a lossy report a second on 720p only
            count += 1
            return Sample(loss=0.15, congestion=count)
        return Sample(congestion=count)

    sel = LayerSelector("360p", config=SelectorConfig(blind_hold=8.0))
    made = run(sel, trace, 60.0)
    assert [(t, s.target) for t, s in made][:2] == [(10.0, "720p"), (11.0, "360p")]
    ups = [t for t, s in made if not s.down]
    assert ups[1] - ups[0] >= 16.0


def test_the_ladder_order_says_which_layer_is_higher_not_the_bitrates() -> None:
    """The top layer measured below the next one's nominal rate (an easy picture under its
    ceiling): 30 % loss still moves the viewer down the ladder."""
    ladder = (Layer("main", 60_000), Layer("low", 214_000))
    count = 0

    def trace(t: float, current: str) -> Sample:
        nonlocal count
        if current == "main" and t == int(t):
            count += 1
            return Sample(loss=0.3, congestion=count, layers=ladder)
        return Sample(congestion=count, layers=ladder)

    made = run(LayerSelector("main"), trace, 5.0)
    assert [s.target for _, s in made] == ["low"]


def test_a_move_down_for_the_link_drains_the_current_layer_a_pin_does_not() -> None:
    """A layer that overruns the link stops at the decision (``drain``), not at the target's
    keyframe: its packets would fill the bottleneck queue that keyframe must cross. A pin to
    a lower layer on a link that carries the current one keeps it playing until then."""
    sel = LayerSelector("720p")
    made = run(sel, link(lambda t: 1_000_000), 5.0)
    assert [(s.target, s.down, s.drain) for _, s in made] == [("360p", True, True)]
    lossy = LayerSelector("720p")
    made = run(lossy, lambda t, current: Sample(loss=0.3, congestion=int(t)), 5.0)
    assert made and all(s.down and s.drain and s.reason == "congestion" for _, s in made)
    pinned = LayerSelector("720p")
    pinned.pin("180p")
    switch = pinned.update(0.0, LADDER, ReportEstimate(5_000_000), 0)
    assert switch is not None and switch.down and not switch.drain
