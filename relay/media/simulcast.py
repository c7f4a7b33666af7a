"""Simulcast layers of one publisher's video, sans I/O: which layer a packet belongs to (by its
RTP stream id, then by its SSRC), each layer's liveness and rates, the layers' order by
resolution, and which layer feeds each output hub (one output per layer, highest first).

A layer is live while its packets keep coming (``stale_after``) and it has sent a keyframe
since it (re)started. An output whose layer is not live takes the nearest live layer below it
(else above it) and goes back when its own returns: a browser that drops its top layer under
CPU or bandwidth limits moves that layer's viewers down within ``stale_after`` plus a keyframe,
without renegotiation (``FanoutHub.attach_source`` rebases and waits for the keyframe).

``SimulcastLayers.snapshot(now)`` (``LayerState`` per layer, highest first) is what a per-viewer
layer selector reads: which layers are live now, their bitrates and sizes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relay.media.bitstream import picture_size
from relay.media.frames import EncodedFrame
from relay.media.hub import FanoutHub
from relay.media.limiter import IntervalLimiter
from relay.media.meter import RateMeter


@dataclass(frozen=True, slots=True)
class LayerState:
    """One layer now. ``rank``: 0 is the highest resolution; ``feeds``: the output ranks this
    layer is sending to (its own, and those of stopped layers it stands in for)."""

    rid: str
    rank: int
    live: bool
    width: int | None
    height: int | None
    fps: float
    bitrate_bps: float
    ssrc: int | None
    feeds: tuple[int, ...]


class RidDemux:
    """Layer of an RTP packet: its RtpStreamId header extension (RFC 8852) names it, and the SSRC
    it came on is learned, since browsers stop sending the extension once a receiver report has
    acknowledged the SSRC. Packets of other rids or unknown SSRCs belong to no layer."""

    def __init__(self, rids: Sequence[str]) -> None:
        self.rids = tuple(rids)
        self._rids = frozenset(rids)
        self._rid_of: dict[int, str] = {}
        self._ssrc_of: dict[str, int] = {}
        self.unrouted = 0

    def layer(self, ssrc: int, rid: str | None) -> str | None:
        if rid is not None:
            if rid not in self._rids:
                self.unrouted += 1
                return None
            if self._rid_of.get(ssrc) != rid:
                old = self._ssrc_of.get(rid)
                if old is not None:
                    self._rid_of.pop(old, None)
                self._rid_of.pop(ssrc, None)
                self._rid_of[ssrc] = rid
                self._ssrc_of[rid] = ssrc
            return rid
        found = self._rid_of.get(ssrc)
        if found is None:
            self.unrouted += 1
        return found

    def ssrc(self, rid: str) -> int | None:
        """The media SSRC of a layer (for its PLIs, and to unwrap its RTX by repaired rid)."""
        return self._ssrc_of.get(rid)


@dataclass(slots=True)
class _Layer:
    rid: str
    index: int  # in the offer
    meter: RateMeter = field(default_factory=RateMeter)
    last_packet_at: float | None = None
    size: tuple[int, int] | None = None
    peak: int = 0  # the most pixels a keyframe of this layer had: its rank's key
    keyed: bool = False  # a keyframe since the layer (re)started


class SimulcastLayers:
    def __init__(self, rids: Sequence[str], *, stale_after: float = 0.5) -> None:
        self.stale_after = stale_after
        self._layers = {rid: _Layer(rid, i) for i, rid in enumerate(rids)}
        self.ssrc: Callable[[str], int | None] = lambda rid: None
        self.feeds: tuple[str | None, ...] = (None,) * len(self._layers)

    @property
    def rids(self) -> tuple[str, ...]:
        return tuple(self._layers)

    def packet(self, rid: str, now: float) -> bool:
        """A packet of layer ``rid`` arrived; True while the layer waits for a keyframe."""
        layer = self._layers[rid]
        last = layer.last_packet_at
        if last is None or now - last > self.stale_after:
            layer.keyed = False  # (re)started: live again from its next keyframe
        layer.last_packet_at = now
        return not layer.keyed

    def frame(self, rid: str, frame: EncodedFrame) -> None:
        layer = self._layers[rid]
        layer.meter.add(frame.received_at, frame.size)
        if frame.keyframe:
            layer.keyed = True
            layer.size = picture_size(frame.codec, frame.data) or layer.size
            if layer.size is not None:
                layer.peak = max(layer.peak, layer.size[0] * layer.size[1])

    def live(self, rid: str, now: float) -> bool:
        layer = self._layers[rid]
        last = layer.last_packet_at
        return layer.keyed and last is not None and now - last <= self.stale_after

    def ranked(self) -> list[str]:
        """Highest resolution first, by the largest picture each layer has sent (a browser
        short of CPU scales its layers down for a while; that must not reorder them); layers
        whose size is not known yet after the others."""

        def key(layer: _Layer) -> tuple[int, int]:
            return -layer.peak if layer.peak else 1, layer.index

        return [layer.rid for layer in sorted(self._layers.values(), key=key)]

    def assign(self, now: float) -> tuple[str | None, ...]:
        """The layer each output (by rank) should carry now: its own when live, else the
        nearest live one below, else above; None when no layer is live."""
        ranked = self.ranked()
        live = [self.live(rid, now) for rid in ranked]
        out: list[str | None] = []
        for r in range(len(ranked)):
            order = [*range(r, len(ranked)), *range(r - 1, -1, -1)]
            out.append(next((ranked[i] for i in order if live[i]), None))
        return tuple(out)

    def snapshot(self, now: float) -> tuple[LayerState, ...]:
        """Every layer, highest first, as it is now (see ``LayerState``)."""
        states = []
        for rank, rid in enumerate(self.ranked()):
            layer = self._layers[rid]
            fps, bps = layer.meter.rates(now)
            size = layer.size
            states.append(
                LayerState(
                    rid=rid,
                    rank=rank,
                    live=self.live(rid, now),
                    width=size[0] if size else None,
                    height=size[1] if size else None,
                    fps=round(fps, 2),
                    bitrate_bps=round(bps),
                    ssrc=self.ssrc(rid),
                    feeds=tuple(i for i, src in enumerate(self.feeds) if src == rid),
                )
            )
        return tuple(states)


class LayerOutputs:
    """The output hubs of a simulcast publisher (one per layer, highest first) fed from its
    layers as ``SimulcastLayers.assign`` says; audio goes to every output. ``requester`` asks
    the publisher for a keyframe of one layer (a PLI naming that layer's SSRC; the ingest sets
    it)."""

    def __init__(
        self,
        layers: SimulcastLayers,
        hubs: Sequence[FanoutHub],
        *,
        check_every: float = 0.1,
        keyframe_interval: float = 0.25,
    ) -> None:
        if len(hubs) != len(layers.rids):
            raise ValueError("one output hub per layer")
        self.layers = layers
        self.hubs = tuple(hubs)
        self.requester: Callable[[str], None] = lambda rid: None
        self._check_every = check_every
        self._checked: float | None = None
        self.sources: list[str | None] = [None] * len(hubs)
        self.switches = 0
        self._limiters = {rid: IntervalLimiter(keyframe_interval) for rid in layers.rids}

    def packet(self, rid: str, now: float) -> None:
        """A packet of layer ``rid``: a layer that sends again after a gap (or starts) is asked
        for the keyframe that makes it live (a browser may not send one by itself)."""
        if self.layers.packet(rid, now):
            self.request_layer(rid, now)

    def publish(self, rid: str, frame: EncodedFrame) -> None:
        """A video frame of layer ``rid``."""
        self.layers.frame(rid, frame)
        now = frame.received_at
        if frame.keyframe or self._checked is None or now - self._checked >= self._check_every:
            self.refresh(now)
        for hub, source in zip(self.hubs, self.sources, strict=True):
            if source == rid:
                hub.publish(frame)

    def publish_audio(self, frame: EncodedFrame) -> None:
        for hub in self.hubs:
            hub.publish(frame)

    def refresh(self, now: float) -> None:
        """Re-point outputs whose layer stopped or came back. An output keeps its last source
        while no layer is live (its viewers freeze, as with any silent source)."""
        self._checked = now
        for i, wanted in enumerate(self.layers.assign(now)):
            if wanted is None or wanted == self.sources[i]:
                continue
            self.switches += self.sources[i] is not None
            self.sources[i] = wanted
            self.hubs[i].attach_source(functools.partial(self.request_output, i))
        self.layers.feeds = tuple(self.sources)

    def request_output(self, rank: int) -> None:
        """A keyframe of the layer output ``rank`` carries now (the hub's requester)."""
        source = self.sources[rank]
        if source is not None:
            self.request_layer(source, None)

    def request_layer(self, rid: str, now: float | None) -> None:
        """At most one PLI per layer per interval; the hubs coalesce their viewers' already.
        ``now`` None: the hubs' own request, coalesced there (always passed on)."""
        if now is None or self._limiters[rid].try_acquire(now):
            self.requester(rid)

    def request_keyframe(self) -> None:
        """A keyframe of every layer that feeds an output."""
        for rid in dict.fromkeys(s for s in self.sources if s is not None):
            self.requester(rid)
