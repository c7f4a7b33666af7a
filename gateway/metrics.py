"""Prometheus metrics: read from the gateway's own state at scrape time (no double bookkeeping),
plus the event-loop lag measured by a small task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.ops.gc_pauses import GcPauses
from relay.ops.loop_lag import LoopLagMonitor
from relay.rtc.viewers import ViewerService

from .anchors import AnchorService
from .stage.room import RoomService
from .stage.table import StageTable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ExtraCounters(Protocol):
    """Other subsystems (bridges, webhooks) expose their counters through this."""

    def counters(self) -> dict[str, tuple[str, float]]: ...


class GatewayCollector(Collector):
    def __init__(
        self,
        stages: StageTable,
        rooms: RoomService,
        anchors: AnchorService,
        viewers: ViewerService,
        lag: LoopLagMonitor,
        extras: list[ExtraCounters],
        *,
        gc_pauses: GcPauses | None = None,
        room_labels: bool = True,
    ) -> None:
        """``room_labels``: per-room series; False: node totals, no room named."""
        self._stages, self._anchors, self._viewers = stages, anchors, viewers
        self._rooms = rooms
        self._room_labels = room_labels
        self._lag = lag
        self._gc = gc_pauses
        self._extras = extras

    def collect(self) -> Iterator[Metric]:
        live = [s for s in self._stages if s.hub is not None]
        yield GaugeMetricFamily("stagecast_rooms", "Rooms known to this node", len(self._stages))
        yield GaugeMetricFamily("stagecast_live_streams", "Rooms with a live program", len(live))
        yield GaugeMetricFamily(
            "stagecast_anchors", "Live anchor sessions", len(self._anchors.sessions)
        )
        per_room = self._room_labels
        labels = ["room"] if per_room else []
        viewers = GaugeMetricFamily("stagecast_viewers", "Viewer sessions", labels=labels)
        fanout = CounterMetricFamily(
            "stagecast_fanout_cpu_seconds",
            "CPU spent sending the room's program to this node's viewers",
            labels=labels,
        )
        running = GaugeMetricFamily(
            "stagecast_mixer_running", "1 while the room's mixer thread runs", labels=labels
        )
        restarts = CounterMetricFamily(
            "stagecast_mixer_restarts",
            "Mixer threads restarted after dying (the room's current program)",
            labels=labels,
        )
        mixed = [(r, d) for r, d in list(self._rooms.directors.items()) if d.mode == "mixed"]
        rows: list[tuple[GaugeMetricFamily | CounterMetricFamily, list[tuple[str, float]]]] = [
            (viewers, [(s.room, float(self._viewers.count(s.room))) for s in self._stages]),
            (fanout, [(s.room, s.hub.stats.fanout_cpu_seconds) for s in live if s.hub is not None]),
            (running, [(r, 1.0 if d.mixer_state == "running" else 0.0) for r, d in mixed]),
            (restarts, [(r, float(d.restarts)) for r, d in mixed]),
        ]
        for family, values in rows:
            if per_room:
                for room, value in values:
                    family.add_metric([room], value)
            else:  # summed over rooms: running = mixers running, restarts = all restarts
                family.add_metric([], sum(v for _, v in values))
            yield family
        eg = self._viewers.egress()
        ing = self._anchors.ingress()
        counters: tuple[tuple[str, str, float], ...] = (
            (
                "stagecast_viewer_sessions",
                "Viewer sessions ended or live",
                eg.sessions + len(self._viewers.sessions),
            ),
            (
                "stagecast_anchor_sessions",
                "Anchor sessions ended or live",
                ing.sessions + len(self._anchors.sessions),
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
                "stagecast_viewer_keyframe_requests",
                "Keyframe requests (PLI/FIR) received from viewers",
                eg.keyframe_requests,
            ),
            (
                "stagecast_viewer_keyframe_requests_suppressed",
                "Viewers' keyframe requests held back by their backoff",
                eg.keyframe_requests_suppressed,
            ),
            ("stagecast_ingress_bytes", "RTP payload bytes received from anchors", ing.bytes),
            ("stagecast_ingress_frames", "Frames received from anchors", ing.frames),
            (
                "stagecast_keyframe_requests",
                "Keyframe requests sent to anchors",
                ing.keyframe_requests,
            ),
            (
                "stagecast_keyframe_requests_coalesced",
                "Keyframe requests coalesced",
                ing.keyframe_requests_coalesced,
            ),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        for extra in self._extras:
            for name, (doc, value) in extra.counters().items():
                yield CounterMetricFamily(name, doc, value=value)
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


def build_registry(collector: GatewayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
