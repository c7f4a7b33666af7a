"""Feeds a hub from a WebRTC receiver without decoding: tap -> FrameAssembler -> FanoutHub.

A simulcast publisher's video (``SimulcastIngest``) is demultiplexed here by RTP stream id /
SSRC (``relay.media.simulcast``), one FrameAssembler per layer, into ``LayerOutputs``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from relay.media.frames import EncodedFrame, MediaKind
from relay.media.nack_tracker import NackPolicy
from relay.media.reassembly import FrameAssembler, Unwrapper, native_reorder
from relay.media.repair_wait import RepairWait, RepairWaitPolicy
from relay.media.simulcast import LayerOutputs, RidDemux
from relay.rtc.adapter import (
    install_ingest_tap,
    install_simulcast_receive,
    packet_data,
    send_pli,
)
from relay.rtc.nack_requests import NackRequests

log = logging.getLogger(__name__)


class FrameSink(Protocol):
    """Where a track's frames go: a FanoutHub, or every output of a simulcast publisher."""

    def publish(self, frame: EncodedFrame) -> None: ...

    def request_keyframe(self) -> None: ...


class TrackIngest:
    """One received track (audio or video) of a source, published into ``hub``.
    ``nacks``: a video track asks for lost packets as relay/rtc/nack_requests.py does (again
    until they arrive), not once per gap as aiortc does; None: aiortc's. ``repair`` (with
    ``nacks``): a hole holds the video as long as this leg's repairs take (relay/media/
    repair_wait.py) within its floor and cap, instead of ``max_wait``."""

    def __init__(
        self,
        kind: MediaKind,
        receiver: RTCRtpReceiver,
        hub: FrameSink,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_wait: float = 0.1,
        trusted_sei: bool = False,
        nacks: NackPolicy | None = None,
        repair: RepairWaitPolicy | None = None,
    ) -> None:
        """``trusted_sei``: the sender is a node of ours (keep its SEI timed metadata)."""
        self.kind = kind
        self._trusted_sei = trusted_sei
        self._receiver = receiver
        self._hub = hub
        self._clock = clock
        self._max_wait = max_wait
        self._assembler: FrameAssembler | None = None
        self._codec: RTCRtpCodecParameters | None = None  # the codec _assembler was checked for
        self.ssrc: int | None = None
        self.packets = 0
        self.laned = 0  # of those, packets a C lane of the receive path took (counted per call)
        self.bytes = 0
        self.last_packet_at: float | None = None
        self._seq = Unwrapper(16)
        self._lowest = self._highest = 0
        self.errors = 0
        install_ingest_tap(receiver, self._on_packet, self._lane)
        self.nacks: NackRequests | None = None
        self.repair: RepairWait | None = None
        if nacks is not None and kind == "video":
            if repair is not None:
                self.repair = RepairWait(repair)
            self.nacks = NackRequests(receiver, nacks, clock=clock, repair=self.repair)

    def _on_packet(self, packet: Any, codec: RTCRtpCodecParameters) -> None:
        """Runs inside aiortc's receive path: an exception escaping here would stop the anchor's
        whole transport, so a failing packet is logged and dropped instead."""
        try:
            self._ingest(packet, codec)
        except Exception:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.exception("ingest of a %s packet failed (%d so far)", self.kind, self.errors)

    def _ingest(self, packet: Any, codec: RTCRtpCodecParameters) -> None:
        now = self._clock()
        self.packets += 1
        self.bytes += len(packet.payload)
        self.last_packet_at = now
        self.ssrc = packet.ssrc
        seq = self._seq.unwrap(packet.sequence_number)
        if self.packets == 1:
            self._lowest = self._highest = seq
        else:
            self._lowest = min(self._lowest, seq)
            self._highest = max(self._highest, seq)
        asm = self._assembler
        if asm is None or codec is not self._codec:  # (.name splits the MIME type: not per packet)
            self._codec = codec
            if asm is None or asm.codec != codec.name:
                asm = self._assembler = FrameAssembler(
                    self.kind, codec.name, max_wait=self._max_wait, trusted_sei=self._trusted_sei
                )
        if self.repair is not None:
            asm.max_wait = self.repair.wait
        result = asm.push(
            packet.sequence_number,
            packet.timestamp,
            bool(packet.marker),
            packet.payload,
            packet_data(packet),
            now,
        )
        if self.nacks is not None:
            self.nacks.played(packet.ssrc, asm.next_sequence)
        for frame in result.frames:
            self._hub.publish(frame)
        if result.need_keyframe:
            self._hub.request_keyframe()

    def _lane(
        self, ssrc: int, codec: RTCRtpCodecParameters
    ) -> tuple[Callable[..., Any], Callable[[Any, int, int, int, float], None]] | None:
        """Where a C lane of the receive path (relay/rtc/_rtp_reader.c) feeds ``ssrc``'s plain
        in-order packets: this track's reorder core, in C, for the codec already assembled,
        with its output and the counts to ``_lane_frames`` (None: every packet comes here).
        Per such packet ``_ingest`` would only count it and push it (the repair wait changes
        only with a repaired packet, which no lane takes; nothing is missing to play)."""
        asm = self._assembler
        if (
            type(self) is not TrackIngest  # (simulcast demultiplexes every packet)
            or self._clock is not time.monotonic  # (the lane's clock)
            or asm is None
            or codec is not self._codec
            or ssrc != self.ssrc
            or not native_reorder(asm.core)
        ):
            return None
        return asm.core.push, self._lane_frames

    def _lane_frames(self, out: Any, packets: int, size: int, last_seq: int, now: float) -> None:
        """A lane's packets since its last call (in order: ``last_seq`` the highest), and what
        the reorder core returned for the last of them (None: nothing)."""
        try:
            self.packets += packets
            self.laned += packets
            self.bytes += size
            self.last_packet_at = now
            seq = self._seq.unwrap(last_seq)
            self._lowest = min(self._lowest, seq)
            self._highest = max(self._highest, seq)
            asm = self._assembler
            if out is None or asm is None:
                return
            result = asm.finish(out)
            for frame in result.frames:
                self._hub.publish(frame)
            if result.need_keyframe:
                self._hub.request_keyframe()
        except Exception:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.exception("ingest of %s frames failed (%d so far)", self.kind, self.errors)

    def request_keyframe(self) -> None:
        """Send a PLI for the media SSRC seen last (nothing to ask before the first packet)."""
        if self.ssrc is not None:
            send_pli(self._receiver, self.ssrc)

    @property
    def packets_lost(self) -> int:
        """Sequence numbers never seen (before NACK recovery is counted back in)."""
        return max(0, self._highest - self._lowest + 1 - self.packets) if self.packets else 0

    @property
    def frames_skipped(self) -> int:
        return self._assembler.frames_skipped if self._assembler else 0

    @property
    def filler_bytes(self) -> int:
        """H.264 filler data dropped before fan-out."""
        return self._assembler.filler_bytes if self._assembler else 0


class AudioFan:
    """A simulcast publisher's audio goes to every output (each layer's viewers hear it)."""

    def __init__(self, outputs: LayerOutputs) -> None:
        self._outputs = outputs

    def publish(self, frame: EncodedFrame) -> None:
        self._outputs.publish_audio(frame)

    def request_keyframe(self) -> None:
        pass


class SimulcastIngest(TrackIngest):
    """A simulcast video track: packets demultiplexed by RTP stream id (then by the SSRC learned
    with it), each layer reassembled on its own and published through ``outputs``; a PLI names
    the SSRC of the one layer it is for."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        outputs: LayerOutputs,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_wait: float = 0.1,
        nacks: NackPolicy | None = None,
        repair: RepairWaitPolicy | None = None,
    ) -> None:
        self.outputs = outputs
        self.demux = RidDemux(outputs.layers.rids)
        outputs.layers.ssrc = self.demux.ssrc
        outputs.requester = self.request_layer
        self._layers: dict[str, FrameAssembler] = {}
        self._layer_codecs: dict[str, RTCRtpCodecParameters] = {}
        self._layer_seq: dict[str, tuple[Unwrapper, list[int]]] = {}  # [packets, low, high]
        super().__init__("video", receiver, AudioFan(outputs), clock=clock, max_wait=max_wait)
        install_simulcast_receive(receiver, self.demux.ssrc)
        if nacks is not None:  # per SSRC, in place of the per-SSRC generators just installed
            self.repair = RepairWait(repair) if repair is not None else None
            self.nacks = NackRequests(receiver, nacks, clock=clock, repair=self.repair)

    def _ingest(self, packet: Any, codec: RTCRtpCodecParameters) -> None:
        now = self._clock()
        self.packets += 1
        self.bytes += len(packet.payload)
        self.last_packet_at = now
        rid = self.demux.layer(packet.ssrc, packet.extensions.rtp_stream_id)
        if rid is None:
            return
        unwrap, counts = self._layer_seq.setdefault(rid, (Unwrapper(16), [0, 0, 0]))
        seq = unwrap.unwrap(packet.sequence_number)
        counts[0] += 1
        counts[1] = seq if counts[0] == 1 else min(counts[1], seq)
        counts[2] = seq if counts[0] == 1 else max(counts[2], seq)
        outputs = self.outputs
        outputs.packet(rid, now)
        asm = self._layers.get(rid)
        if asm is None or codec is not self._layer_codecs.get(rid):
            self._layer_codecs[rid] = codec
            if asm is None or asm.codec != codec.name:
                asm = self._layers[rid] = FrameAssembler(
                    "video", codec.name, max_wait=self._max_wait
                )
        if self.repair is not None:
            asm.max_wait = self.repair.wait
        result = asm.push(
            packet.sequence_number,
            packet.timestamp,
            bool(packet.marker),
            packet.payload,
            packet_data(packet),
            now,
        )
        if self.nacks is not None:
            self.nacks.played(packet.ssrc, asm.next_sequence)
        for frame in result.frames:
            outputs.publish(rid, frame)
        if result.need_keyframe:
            outputs.request_layer(rid, now)

    def request_layer(self, rid: str) -> None:
        """PLI for one layer's SSRC (nothing to ask before its first packet)."""
        ssrc = self.demux.ssrc(rid)
        if ssrc is not None:
            send_pli(self._receiver, ssrc)

    def request_keyframe(self) -> None:
        self.outputs.request_keyframe()

    @property
    def packets_lost(self) -> int:
        return sum(max(0, hi - lo + 1 - n) for _, (n, lo, hi) in self._layer_seq.values())

    @property
    def frames_skipped(self) -> int:
        return sum(a.frames_skipped for a in self._layers.values())

    @property
    def filler_bytes(self) -> int:
        return sum(a.filler_bytes for a in self._layers.values())


class IngestSet(dict[MediaKind, TrackIngest]):
    """The tracks of one source (an anchor, or an edge's upstream pull), by kind."""

    def request_keyframe(self) -> None:
        video = self.get("video")
        if video is not None:
            video.request_keyframe()

    @property
    def last_media_at(self) -> float | None:
        times = [i.last_packet_at for i in self.values() if i.last_packet_at is not None]
        return max(times) if times else None

    @property
    def packets(self) -> int:
        return sum(i.packets for i in self.values())

    @property
    def laned(self) -> int:
        return sum(i.laned for i in self.values())

    @property
    def packets_lost(self) -> int:
        return sum(i.packets_lost for i in self.values())

    @property
    def frames_skipped(self) -> int:
        return sum(i.frames_skipped for i in self.values())

    @property
    def filler_bytes(self) -> int:
        return sum(i.filler_bytes for i in self.values())
