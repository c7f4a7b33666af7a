"""Synthetic viewer links for the bandwidth estimator (and whatever reads its estimate).

An open-loop sender (a stream of fixed bitrate, each frame's packets sent as one burst, as the
direct sender does) through a link with a bottleneck rate, a drop-tail queue, random loss and a
propagation delay; the receiver sends transport-cc feedback every ``feedback_interval`` the way
libwebrtc does (every packet from the first not yet reported to the newest arrived, the gaps
reported missing). ``run_trace`` feeds it all to a ``BandwidthEstimator`` on a fake clock;
``run_adaptive`` closes the loop (the layer selector picks the stream, probe clusters are added).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass

from relay.media.cc_feedback import build_transport_feedback
from relay.media.estimator import BandwidthEstimate, BandwidthEstimator
from relay.media.layer_selector import Layer, LayerSelector, SelectorConfig
from relay.media.probe import ProbeConfig, ProbeController

PACKET = 1200


class EventQueue:
    """A simulation's events in time order, ties in the order pushed; an event may push more
    while the queue is being iterated."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, object]] = []  # (time, order, kind, payload)
        self._order = 0

    def push(self, t: float, kind: int, payload: object) -> None:
        self._order += 1
        heapq.heappush(self._heap, (t, self._order, kind, payload))

    def __iter__(self) -> Iterator[tuple[float, int, object]]:
        while self._heap:
            t, _, kind, payload = heapq.heappop(self._heap)
            yield t, kind, payload


@dataclass(frozen=True)
class Link:
    capacity_bps: float = 100e6
    delay: float = 0.02  # one way, each direction
    queue: float = 0.2  # seconds of queueing the bottleneck holds before it drops
    loss: float = 0.0  # random loss before the bottleneck
    dip: tuple[float, float, float] | None = None  # (from, until, capacity_bps) meanwhile

    def capacity(self, now: float) -> float:
        dip = self.dip
        if dip is not None and dip[0] <= now < dip[1]:
            return dip[2]
        return self.capacity_bps


def run_trace(
    estimator: BandwidthEstimator,
    link: Link,
    *,
    stream_bps: float,
    seconds: float,
    fps: int = 30,
    feedback_interval: float = 0.05,
    sample_every: float = 0.1,
    seed: int = 1,
) -> list[tuple[float, BandwidthEstimate]]:
    """(time, snapshot) every ``sample_every`` seconds."""
    rng = random.Random(seed)
    events = EventQueue()
    push = events.push

    frame_bytes = stream_bps / 8 / fps
    for f in range(int(seconds * fps)):
        push(f / fps, 0, None)  # a frame is sent
    t = feedback_interval
    while t < seconds:
        push(t, 1, None)  # the receiver reports
        t += feedback_interval
    t = sample_every
    while t <= seconds + 1e-9:
        push(t, 3, None)
        t += sample_every

    link_free = 0.0
    arrivals: dict[int, float] = {}  # unwrapped seq -> arrival time
    next_report = 0  # first unwrapped seq not reported yet
    sent_count = 0
    out: list[tuple[float, BandwidthEstimate]] = []
    for now, kind, payload in events:
        if kind == 0:
            n = max(1, round(frame_bytes / PACKET))
            sizes = [int(frame_bytes / n)] * n
            estimator.record(sizes, now)
            estimator.sent(sum(sizes), now)
            for size in sizes:
                seq = sent_count
                sent_count += 1
                if rng.random() < link.loss:
                    continue
                start = max(link_free, now)
                if start - now > link.queue:
                    continue  # tail drop
                link_free = start + size * 8 / link.capacity(now)
                arrivals[seq] = link_free + link.delay
        elif kind == 1:
            arrived = [s for s, a in arrivals.items() if a <= now and s >= next_report]
            if not arrived:
                continue
            highest = max(arrived)
            report = [arrivals.get(s) for s in range(next_report, highest + 1)]
            report = [a if a is not None and a <= now else None for a in report]
            packet = build_transport_feedback(next_report & 0xFFFF, report)
            for s in range(next_report, highest + 1):
                arrivals.pop(s, None)
            next_report = highest + 1
            push(now + link.delay, 2, packet)
        elif kind == 2:
            assert isinstance(payload, bytes)
            estimator.on_transport_feedback(payload[12:], now)
        else:
            out.append((now, estimator.snapshot(now)))
    return out


@dataclass
class Adaptive:
    """What ``run_adaptive`` saw: the layer over time and the switches, the probes."""

    layers: list[tuple[float, str]]
    switches: list[tuple[float, str, bool]]  # (time, to, down)
    estimates: list[tuple[float, BandwidthEstimate]]
    controller: ProbeController | None
    probe_packets: int = 0


def run_adaptive(
    link: Link,
    ladder: tuple[Layer, ...],
    *,
    seconds: float,
    start: str | None = None,
    probing: bool = True,
    probe: ProbeConfig | None = None,
    selector: SelectorConfig | None = None,
    fps: int = 30,
    feedback_interval: float = 0.05,
    tick: float = 0.5,
    seed: int = 1,
    native: bool = True,
) -> Adaptive:
    """The closed loop of one transport-cc viewer on a fake clock, as ``ViewerService.adapt``
    drives it: the sender sends the selector's layer (its switches take effect at once), the
    estimator reads the receiver's feedback, a ``ProbeController`` adds probe packets to the
    frames while a cluster runs, and the selector reads the estimate and what was probed."""
    rng = random.Random(seed)
    estimator = BandwidthEstimator(native=native)
    sel = LayerSelector(start or ladder[0].name, config=selector)
    controller = ProbeController(probe) if probing else None
    by_name = {x.name: x for x in ladder}
    events = EventQueue()
    push = events.push

    for f in range(int(seconds * fps)):
        push(f / fps, 0, None)
    t = feedback_interval
    while t < seconds:
        push(t, 1, None)
        t += feedback_interval
    t = tick
    while t <= seconds + 1e-9:
        push(t, 3, None)
        t += tick

    link_free = 0.0
    arrivals: dict[int, float] = {}
    next_report = 0
    sent_count = 0
    seen = Adaptive([(0.0, sel.current)], [], [], controller)

    def send(sizes: list[int], now: float) -> None:
        nonlocal sent_count, link_free
        estimator.record(sizes, now)
        estimator.sent(sum(sizes), now)
        for size in sizes:
            seq = sent_count
            sent_count += 1
            if rng.random() < link.loss:
                continue
            begin = max(link_free, now)
            if begin - now > link.queue:
                continue
            link_free = begin + size * 8 / link.capacity(now)
            arrivals[seq] = link_free + link.delay

    for now, kind, payload in events:
        if kind == 0:
            frame_bytes = by_name[sel.current].bitrate / 8 / fps
            n = max(1, round(frame_bytes / PACKET))
            send([int(frame_bytes / n)] * n, now)
            if controller is not None and controller.active is not None:
                due = controller.due(
                    now,
                    overuse=estimator.usage.value == "overuse",
                    lost_packets=estimator.lost_packets,
                    queued=estimator.probe_queued,
                )
                if due is None:
                    estimator.end_probe(now)
                elif due:
                    k = -(-due // PACKET)
                    send([PACKET] * k, now)
                    controller.sent(k * PACKET)
                    seen.probe_packets += k
        elif kind == 1:
            arrived = [s for s, a in arrivals.items() if a <= now and s >= next_report]
            if not arrived:
                continue
            highest = max(arrived)
            report = [arrivals.get(s) for s in range(next_report, highest + 1)]
            report = [a if a is not None and a <= now else None for a in report]
            packet = build_transport_feedback(next_report & 0xFFFF, report)
            for s in range(next_report, highest + 1):
                arrivals.pop(s, None)
            next_report = highest + 1
            push(now + link.delay, 2, packet)
        elif kind == 2:
            assert isinstance(payload, bytes)
            estimator.on_transport_feedback(payload[12:], now)
        else:
            snap = estimator.snapshot(now)
            seen.estimates.append((now, snap))
            names = [x.name for x in ladder]
            higher = [x.bitrate for x in ladder[: names.index(sel.current)]][::-1]
            probed = None
            if controller is not None:
                results = estimator.take_probe_results(now)
                cluster = controller.update(
                    now, snap, higher, results, lost_packets=estimator.lost_packets
                )
                if cluster is not None:
                    estimator.begin_probe(cluster.id, now)
                probed = controller.probed(now, len(higher))
            estimate = snap if snap.source == "twcc" and snap.target_bps is not None else None
            switch = sel.update(now, ladder, estimate, 0, probed)
            if switch is not None:
                sel.switched(now)
                seen.switches.append((now, switch.target, switch.down))
                seen.layers.append((now, sel.current))
                if controller is not None:
                    controller.switched(now, down=switch.down)
                    if not switch.down:
                        estimator.renew_probe(now)
                if estimator.probing:
                    estimator.end_probe(now)
    return seen


@dataclass(frozen=True)
class Reporting:
    """A receiver that sends receiver reports only (aiortc: no transport-cc; its REMB follows
    what it receives, so the selector reads none): one every 0.5-1.5 s, as aiortc's RTCP loop
    sleeps, and the sender's stream has a keyframe of ``keyframe_frames`` frames' bytes every
    ``gop`` seconds (a thin link's tbf drops a keyframe's tail even when the layer fits)."""

    gop: float = 2.0
    keyframe_frames: float = 8.0
    switch_delay: float = 0.2  # s from a switch's decision to the target's keyframe
    first_report: float = 0.0  # s before which it sends none (a viewer slow to start)


def run_reports(
    link: Link,
    ladder: tuple[Layer, ...],
    *,
    seconds: float,
    start: str | None = None,
    selector: SelectorConfig | None = None,
    receiver: Reporting | None = None,
    fps: int = 30,
    tick: float = 0.5,
    seed: int = 1,
) -> Adaptive:
    """The closed loop of one REMB/RR-only viewer on a fake clock, as ``ViewerService.adapt``
    drives it: the sender sends the selector's layer (a switch takes effect at the target's
    keyframe, ``switch_delay`` later), the receiver's reports (highest sequence number and
    cumulative loss) go through ``ReportLoss`` as the direct sender's do, and the selector reads
    their loss with no bitrate (``relay.rtc.viewers.link_estimate``)."""
    from relay.media.layer_selector import ReportEstimate
    from relay.media.report_loss import ReportLoss

    rx = receiver or Reporting()
    rng = random.Random(seed)
    sel = LayerSelector(start or ladder[0].name, config=selector)
    by_name = {x.name: x for x in ladder}
    reports = ReportLoss()
    events = EventQueue()
    push = events.push

    for f in range(int(seconds * fps)):
        push(f / fps, 0, f)
    t = rx.first_report + 0.5 + rng.random()
    while t < seconds:
        push(t, 1, None)
        t += 0.5 + rng.random()
    t = tick
    while t <= seconds + 1e-9:
        push(t, 3, None)
        t += tick

    link_free = 0.0
    arrivals: list[float] = []  # by sequence number: arrival time (inf: lost)
    seen = Adaptive([(0.0, sel.current)], [], [], None)
    gop_frames = max(1, round(rx.gop * fps))
    prior_counts = (0, 0)  # (expected, received) at the last report: its fraction lost
    due: tuple[float, str] | None = None  # a switch waiting for its keyframe
    for now, kind, payload in events:
        if kind == 0:
            assert isinstance(payload, int)
            frame = payload
            key = frame % gop_frames == 0
            if due is not None and now >= due[0]:  # the target's keyframe: the switch is made
                names = [x.name for x in ladder]
                down = names.index(due[1]) > names.index(sel.current)
                sel.switched(now)
                seen.switches.append((now, sel.current, down))
                seen.layers.append((now, sel.current))
                due, key = None, True
            frame_bytes = by_name[sel.current].bitrate / 8 / fps
            if key:
                frame_bytes *= rx.keyframe_frames
            n = max(1, round(frame_bytes / PACKET))
            for _ in range(n):
                size = frame_bytes / n
                if rng.random() < link.loss:
                    arrivals.append(float("inf"))
                    continue
                begin = max(link_free, now)
                if begin - now > link.queue:
                    arrivals.append(float("inf"))
                    continue
                link_free = begin + size * 8 / link.capacity(now)
                arrivals.append(link_free + link.delay)
        elif kind == 1:
            arrived = [s for s, a in enumerate(arrivals) if a <= now]
            if not arrived:
                continue
            highest = max(arrived)
            lost = highest + 1 - len(arrived)
            expected, prior = highest + 1, prior_counts
            received = len(arrived)
            interval = expected - prior[0]
            fraction = max(0, interval - (received - prior[1])) / interval if interval else 0.0
            prior_counts = (expected, received)
            push(now + link.delay, 2, (highest, lost, fraction))
        elif kind == 2:
            assert isinstance(payload, tuple)
            reports.on_report(payload[0], payload[1], now, payload[2])
        else:
            if due is not None:
                continue
            estimate = ReportEstimate(None, reports.fraction, 2 * link.delay)
            switch = sel.update(now, ladder, estimate, reports.lossy, clean=reports.clean)
            if switch is not None:
                due = (now + rx.switch_delay, switch.target)
    return seen
