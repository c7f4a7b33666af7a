"""Prometheus metrics every node has, read from its state at scrape time: viewer sessions and
egress, event-loop lag, GC pauses. The origin adds its rooms, anchors and mixers
(``gateway.metrics``); an edge its pulls."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from relay.ops.gc_pauses import GcPauses
from relay.ops.loop_lag import LoopLagMonitor
from relay.rtc.viewers import ViewerService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ESTIMATE_BUCKETS = (250e3, 500e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6)
LOSS_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
RTT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 1.0)
SOURCES = ("twcc", "remb", "rr", "none")


def histogram(
    name: str, doc: str, values: list[float], buckets: tuple[float, ...]
) -> HistogramMetricFamily:
    """A histogram of the live viewers' current values (read at scrape time)."""
    counts = [sum(1 for v in values if v <= bound) for bound in buckets]
    cumulative = [(repr(bound), float(c)) for bound, c in zip(buckets, counts, strict=True)]
    cumulative.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=float(sum(values)))


class NodeCollector(Collector):
    def __init__(
        self, viewers: ViewerService, lag: LoopLagMonitor, *, gc_pauses: GcPauses | None = None
    ) -> None:
        self._viewers = viewers
        self._lag = lag
        self._gc = gc_pauses

    def _fec_levels(self) -> Metric:
        """Viewers that negotiated ULPFEC, by the parity they get now (per media packet of a
        delta frame; "0": none, a clean link)."""
        levels: dict[str, int] = {}
        for session in list(self._viewers.sessions.values()):
            video = session.senders.get("video")
            if video is not None and video.fec is not None:
                key = f"{video.fec.overhead:.3g}"
                levels[key] = levels.get(key, 0) + 1
        gauge = GaugeMetricFamily(
            "stagecast_viewers_fec",
            "Viewers with red + ulpfec negotiated, by parity packets per media packet now",
            labels=["overhead"],
        )
        for key, count in sorted(levels.items()):
            gauge.add_metric([key], count)
        return gauge

    def collect(self) -> Iterator[Metric]:
        eg = self._viewers.egress()
        counters: tuple[tuple[str, str, float], ...] = (
            (
                "stagecast_viewer_sessions",
                "Viewer sessions ended or live",
                eg.sessions + len(self._viewers.sessions),
            ),
            ("stagecast_egress_bytes", "RTP payload bytes sent to viewers", eg.bytes),
            ("stagecast_egress_packets", "RTP packets sent to viewers", eg.packets),
            ("stagecast_egress_frames", "Frames sent to viewers", eg.frames),
            ("stagecast_viewer_frame_drops", "Frames dropped by slow viewers' queues", eg.dropped),
            ("stagecast_viewer_nacks", "NACK messages received from viewers", eg.nacks),
            (
                "stagecast_viewer_nacked_packets",
                "Packets viewers asked to have retransmitted",
                eg.nacked_packets,
            ),
            (
                "stagecast_viewer_retransmissions",
                "Packets retransmitted to viewers",
                eg.retransmissions,
            ),
            ("stagecast_viewer_rtx_bytes", "Bytes retransmitted to viewers", eg.rtx_bytes),
            (
                "stagecast_viewer_fec_packets",
                "ULPFEC parity packets sent to viewers (red + ulpfec negotiated, lossy links)",
                eg.fec_packets,
            ),
            ("stagecast_viewer_fec_bytes", "ULPFEC parity bytes sent to viewers", eg.fec_bytes),
            (
                "stagecast_viewer_rtx_late",
                "NACKed packets not resent: too late to be played",
                eg.rtx_late,
            ),
            (
                "stagecast_viewer_rtx_over_budget",
                "NACKed packets not resent: the viewer's retransmission budget was spent",
                eg.rtx_over_budget,
            ),
            (
                "stagecast_viewer_feedback_unasked",
                "Media packets viewers' transport-cc feedback reported lost that no NACK asked for",
                eg.feedback_unasked,
            ),
            (
                "stagecast_viewer_feedback_repairs",
                "Of them, packets resent without a NACK (media.viewer_feedback_repair)",
                eg.feedback_repairs,
            ),
            (
                "stagecast_viewer_keyframe_requests",
                "Keyframe requests (PLI/FIR) received from viewers",
                eg.keyframe_requests,
            ),
            (
                "stagecast_viewer_keyframe_requests_suppressed",
                "Viewers' keyframe requests held back by their backoff",
                eg.keyframe_requests_suppressed,
            ),
        )
        counters += (
            (
                "stagecast_viewer_transport_feedbacks",
                "Transport-cc feedback packets taken from viewers",
                eg.transport_feedbacks,
            ),
            ("stagecast_viewer_rembs", "REMB packets taken from viewers", eg.rembs),
            (
                "stagecast_viewer_feedback_malformed",
                "Viewers' congestion feedback packets that did not parse",
                eg.feedback_malformed,
            ),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        yield from self._estimates()
        switches = CounterMetricFamily(
            "stagecast_viewer_layer_switches",
            "Viewers moved to another layer (rendition) by their layer selector or a pin",
            labels=["direction"],
        )
        switches.add_metric(["up"], self._viewers.switches_up)
        switches.add_metric(["down"], self._viewers.switches_down)
        yield switches
        yield self._fec_levels()
        yield GaugeMetricFamily(
            "stagecast_event_loop_lag_seconds", "Last event-loop lag", self._lag.last_lag
        )
        yield GaugeMetricFamily(
            "stagecast_event_loop_lag_max_seconds", "Largest event-loop lag", self._lag.max_lag
        )
        if self._gc is not None:
            pauses = CounterMetricFamily(
                "stagecast_gc_pause_seconds",
                "Time the garbage collector stopped the process, by generation",
                labels=["generation"],
            )
            longest = GaugeMetricFamily(
                "stagecast_gc_pause_max_seconds",
                "Longest garbage-collector pause, by generation",
                labels=["generation"],
            )
            for g in range(3):
                pauses.add_metric([str(g)], self._gc.seconds[g])
                longest.add_metric([str(g)], self._gc.longest[g])
            yield pauses
            yield longest

    def _estimates(self) -> Iterator[Metric]:
        """The live viewers' bandwidth estimates: how many by source, and their spread."""
        estimates = [s.estimate for s in self._viewers.sessions.values()]
        by_source = GaugeMetricFamily(
            "stagecast_viewer_estimate_source",
            "Live viewers by the source of their bandwidth estimate",
            labels=["source"],
        )
        for source in SOURCES:
            by_source.add_metric([source], sum(1 for e in estimates if e.source == source))
        yield by_source
        yield histogram(
            "stagecast_viewer_estimate_bps",
            "Live viewers' bandwidth estimates (bits/s)",
            [float(e.target_bps) for e in estimates if e.target_bps is not None],
            ESTIMATE_BUCKETS,
        )
        yield histogram(
            "stagecast_viewer_loss_fraction",
            "Live viewers' packet loss (transport-cc over the last second, else receiver reports)",
            [e.loss_fraction for e in estimates if e.source != "none"],
            LOSS_BUCKETS,
        )
        yield histogram(
            "stagecast_viewer_rtt_seconds",
            "Live viewers' round trip from receiver reports",
            [e.rtt for e in estimates if e.rtt is not None],
            RTT_BUCKETS,
        )


def build_registry(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
