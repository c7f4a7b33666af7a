"""Prometheus metrics of the origin: its rooms, anchors and mixers, read from its own state at
scrape time (no double bookkeeping), on top of what every node has (``relay.server.metrics``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.ops.gc_pauses import GcPauses
from relay.ops.loop_lag import LoopLagMonitor
from relay.rtc.viewers import ViewerService
from relay.server.metrics import NodeCollector

from .anchors import AnchorService
from .stage.room import RoomService
from .stage.table import StageTable


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
        self._node = NodeCollector(viewers, lag, gc_pauses=gc_pauses)
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
        ing = self._anchors.ingress()
        counters: tuple[tuple[str, str, float], ...] = (
            (
                "stagecast_anchor_sessions",
                "Anchor sessions ended or live",
                ing.sessions + len(self._anchors.sessions),
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
        yield from self._node.collect()
