"""Synthetic viewer links for the bandwidth estimator (and whatever reads its estimate).

An open-loop sender (a stream of fixed bitrate, each frame's packets sent as one burst, as the
direct sender does) through a link with a bottleneck rate, a drop-tail queue, random loss and a
propagation delay; the receiver sends transport-cc feedback every ``feedback_interval`` the way
libwebrtc does (every packet from the first not yet reported to the newest arrived, the gaps
reported missing). ``run_trace`` feeds it all to a ``BandwidthEstimator`` on a fake clock.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from relay.media.cc_feedback import build_transport_feedback
from relay.media.estimator import BandwidthEstimate, BandwidthEstimator

PACKET = 1200


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
    events: list[tuple[float, int, int, object]] = []  # (time, order, kind, payload)
    order = 0

    def push(t: float, kind: int, payload: object) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, payload))

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
    while events:
        now, _, kind, payload = heapq.heappop(events)
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
