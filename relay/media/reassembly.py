"""Rebuilds encoded frames from RTP packets and releases each one on its marker bit.

aiortc's own JitterBuffer only releases a video frame when the first packet of the *next* frame
arrives, which costs a whole frame interval (33 ms at 30 fps) per hop. Here a frame leaves as soon
as its marker packet arrives and every packet before it (back to the previous frame's end) is in.
A gap (a missing sequence number with later packets already in) that NACK does not fill within
``max_wait`` is skipped with the frame it broke, and reported so the caller can ask the sender for
a keyframe. A frame whose packets merely arrive slowly (a paced keyframe, a busy loop) has no gap
and is never cut. ``max_wait`` may change between packets (``relay.media.repair_wait``: the wait
follows the publisher's repair times). After a skip, or at the start, a frame is only released
from its first packet: the tail of a broken frame never reaches viewers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from relay.media.frames import EncodedFrame, MediaKind
from relay.media.keyframes import is_keyframe
from relay.media.sei import annexb, hides_claimed_sei, strip_claimed_sei


class Unwrapper:
    """Turns a wrapping counter (RTP sequence numbers, timestamps) into a monotonic-ish int."""

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def unwrap(self, value: int) -> int:
        if self._last is None:
            self._last = value
            return value
        delta = (value - self._last) % self._mod
        if delta >= self._half:
            delta -= self._mod
        self._last += delta
        return self._last


@dataclass(slots=True)
class _Packet:
    timestamp: int
    marker: bool
    payload: bytes
    data: bytes
    arrival: float


@dataclass(frozen=True, slots=True)
class AssemblyResult:
    frames: list[EncodedFrame]
    need_keyframe: bool = False


H264_FILLER = 12  # filler data NAL unit (H.264 7.4.2.7): HRD padding, no picture data
H264_FU_A = 28


def is_h264_filler(payload: bytes) -> bool:
    """An RTP payload (RFC 6184) that carries filler data: a single NAL unit or an FU-A
    fragment of one."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal == H264_FU_A:
        return len(payload) > 1 and payload[1] & 0x1F == H264_FILLER
    return nal == H264_FILLER


def starts_frame(codec: str, packet: _Packet) -> bool:
    """Whether a packet is the first of a frame, from its payload format."""
    name = codec.upper()
    if name == "H264":  # the depayloader puts a start code before every NAL unit it begins
        return packet.data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
    if name == "VP8":  # RFC 7741: S bit set, partition index 0
        return bool(packet.payload) and packet.payload[0] & 0x17 == 0x10
    return True


class FrameAssembler:
    """Marker-bit frame assembly for one video SSRC; every audio packet is a frame of its own."""

    def __init__(
        self,
        kind: MediaKind,
        codec: str,
        *,
        max_wait: float = 0.1,
        max_packets: int = 1024,
        trusted_sei: bool = False,
    ) -> None:
        """``trusted_sei``: keep SEI messages in stagecast's name (a pull from another node of
        ours); from anchors they are removed (``sei.strip_claimed_sei``)."""
        self.kind = kind
        self.codec = codec
        self.max_wait = max_wait
        """Seconds a gap may hold the frames behind it (settable between packets)."""
        self._max_packets = max_packets
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._packets: dict[int, _Packet] = {}
        self._next: int | None = None  # sequence number the next frame starts at
        self._gap_since: float | None = None
        self._resync = True  # the next frame must begin with a frame's first packet
        self._lost = False
        self.frames_out = 0
        self.frames_skipped = 0
        self.filler_bytes = 0
        self.sei_removed = 0  # RTP payloads dropped or rewritten for a forged SEI message
        self._h264 = codec.upper() == "H264"
        self._strip_sei = self._h264 and not trusted_sei

    def push(
        self,
        sequence_number: int,
        timestamp: int,
        marker: bool,
        payload: bytes,
        data: bytes,
        now: float,
    ) -> AssemblyResult:
        seq = self._seq.unwrap(sequence_number)
        ts = self._ts.unwrap(timestamp)
        if self._next is None:
            self._next = seq
        if seq < self._next or seq in self._packets:
            return AssemblyResult([])  # late or duplicate
        if self.kind == "audio":
            self._next = seq + 1
            return AssemblyResult([self._frame([_Packet(ts, marker, payload, data, now)])])
        packets = self._packets
        packets[seq] = _Packet(ts, marker, payload, data, now)
        if (
            not marker
            and self._gap_since is None  # what waited ran from _next without a hole
            and (seq - 1 in packets or (len(packets) == 1 and seq == self._next))
            and len(packets) <= self._max_packets
        ):
            # it extends that run and ends no frame (most packets of a frame): nothing to drain,
            # still no hole; skipping the drain keeps a frame's assembly linear in its packets
            return AssemblyResult([])
        frames = self._drain()
        self._track_gap(now)
        if self._packets and self._stalled(now):
            self._skip_gap()
            frames.extend(self._drain())
            self._track_gap(now)
        need_keyframe, self._lost = self._lost, False
        return AssemblyResult(frames, need_keyframe)

    @property
    def next_sequence(self) -> int | None:
        """The 16-bit sequence number the next frame must start at (None: restarting); a
        packet before it is late and dropped."""
        return None if self._next is None else self._next % 65536

    def _track_gap(self, now: float) -> None:
        """Start the clock at the first missing sequence number, stop it once none is."""
        if not self._has_gap():
            self._gap_since = None
        elif self._gap_since is None:
            self._gap_since = now

    def _has_gap(self) -> bool:
        if not self._packets:
            return False
        seq = self._next
        if seq is None:
            return False
        while seq in self._packets:
            seq += 1
        return seq <= max(self._packets)

    def _stalled(self, now: float) -> bool:
        if len(self._packets) > self._max_packets:
            return True
        since = self._gap_since
        if since is None or now - since <= self.max_wait:
            return False
        # The clock started at the first hole seen; if that one was filled since, the hole
        # now first is a later one: its own age decides (from the packet that revealed it).
        since = self._gap_since = self._hole_seen(since)
        return now - since > self.max_wait

    def _hole_seen(self, since: float) -> float:
        """When the first hole was seen: the arrival of the first packet after it."""
        seq, packets = self._next, self._packets
        if seq is None or not packets:
            return since
        end = max(packets)
        while seq in packets:
            seq += 1
        while seq <= end and seq not in packets:
            seq += 1
        return max(since, packets[seq].arrival) if seq in packets else since

    def _drain(self) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        if self._next is None:  # everything was dropped: restart at the next packet
            return out
        while True:
            seq = self._next
            run: list[_Packet] = []
            while seq in self._packets:
                run.append(self._packets[seq])
                if self._packets[seq].marker:
                    break
                seq += 1
            if not run or not run[-1].marker:
                return out
            for s in range(self._next, seq + 1):
                del self._packets[s]
            self._next = seq + 1
            # After a skipped gap the run can begin with the tail of a broken frame: keep the
            # packets of the marker's timestamp only, and only from a frame's first packet.
            last_ts = run[-1].timestamp
            packets = [p for p in run if p.timestamp == last_ts]
            if self._resync and not starts_frame(self.codec, packets[0]):
                self.frames_skipped += 1
                self._lost = True
                continue
            self._resync = False
            if self._strip_sei:
                packets = self._without_forged_sei(packets)
                if not packets:  # nothing but a forged SEI message
                    continue
            out.append(self._frame(packets))

    def _skip_gap(self) -> None:
        """Drop everything up to the first marker after the gap (the frame the gap broke)."""
        markers = sorted(s for s, p in self._packets.items() if p.marker)
        if not markers:
            self._packets.clear()
            self._next = None
        else:
            cut = markers[0]
            for s in [s for s in self._packets if s <= cut]:
                del self._packets[s]
            self._next = cut + 1
        self._gap_since = None
        self._resync = True
        self._lost = True
        self.frames_skipped += 1

    def _without_forged_sei(self, packets: list[_Packet]) -> list[_Packet]:
        changes = strip_claimed_sei([p.payload for p in packets])
        if changes:
            self.sei_removed += len(changes)
            out: list[_Packet | None] = list(packets)
            for i, new in changes:
                out[i] = None if new is None else replace(packets[i], payload=new, data=annexb(new))
            packets = [p for p in out if p is not None]
        if hides_claimed_sei([p.payload for p in packets], b"".join(p.data for p in packets)):
            self.sei_removed += len(packets)
            return []  # a forged message hidden inside another NAL unit: the frame goes
        return packets

    def _frame(self, packets: list[_Packet]) -> EncodedFrame:
        if self._h264:
            # CBR encoders (x264 with nal-hrd=cbr, as OBS sets it) pad with filler NAL units,
            # up to half of the bitrate: no decoder needs them, so no viewer is sent them.
            kept = [p for p in packets if not is_h264_filler(p.payload)]
            if kept and len(kept) < len(packets):
                self.filler_bytes += sum(len(p.payload) for p in packets) - sum(
                    len(p.payload) for p in kept
                )
                packets = kept
        data = b"".join(p.data for p in packets)
        self.frames_out += 1
        return EncodedFrame(
            kind=self.kind,
            codec=self.codec,
            timestamp=packets[-1].timestamp,
            payloads=tuple(p.payload for p in packets),
            data=data,
            keyframe=is_keyframe(self.codec, data),
            received_at=packets[-1].arrival,
        )
