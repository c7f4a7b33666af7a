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

Which packets leave, and when, is a ``Reorder`` core: in C when built (``_reassembly.c``, one
call per packet that returns None for most of them), ``PyReorder`` otherwise and as the
reference the tests hold the C one to. ``FrameAssembler`` finishes each frame a core releases
(filler and forged SEI removed, keyframe detected): Python work per frame, not per packet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relay.media.frames import EncodedFrame, MediaKind
from relay.media.keyframes import is_keyframe
from relay.media.sei import annexb, hides_claimed_sei, strip_claimed_sei

try:
    from . import _reassembly as _native
except ImportError:  # built without a C compiler: PyReorder
    _native = None  # type: ignore[assignment]


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


Run = tuple[int, list[bytes], list[bytes], list[float]]
"""A completed frame's packets as a reorder core hands them over: (timestamp, payloads, data,
arrivals); ``data`` is each packet's depayloaded bytes."""


class Reorder(Protocol):
    """What decides which packets leave as a frame: ``PyReorder``, or the C one
    (``_reassembly.c``) the tests hold to it."""

    def push(
        self,
        sequence_number: int,
        timestamp: int,
        marker: bool,
        payload: bytes,
        data: bytes,
        now: float,
        /,
    ) -> tuple[list[Run], bool] | None:
        """Completed frames and whether a keyframe is needed (a frame was skipped); None: no
        frame and no skip (most packets)."""
        ...

    max_wait: float
    """Seconds a gap may hold the frames behind it (settable between packets)."""

    @property
    def next_sequence(self) -> int | None: ...

    @property
    def frames_skipped(self) -> int: ...

    @property
    def pending(self) -> int:
        """Packets held."""
        ...


class PyReorder:
    """Marker-bit release for one video SSRC (every audio packet is a frame of its own): the
    reference for the C core."""

    def __init__(self, video: bool, codec: str, max_wait: float, max_packets: int) -> None:
        self._video = video
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
        self.frames_skipped = 0

    @property
    def pending(self) -> int:
        return len(self._packets)

    def push(
        self,
        sequence_number: int,
        timestamp: int,
        marker: bool,
        payload: bytes,
        data: bytes,
        now: float,
    ) -> tuple[list[Run], bool] | None:
        seq = self._seq.unwrap(sequence_number)
        ts = self._ts.unwrap(timestamp)
        if self._next is None:
            self._next = seq
        if seq < self._next or seq in self._packets:
            return None  # late or duplicate
        if not self._video:
            self._next = seq + 1
            return [(ts, [payload], [data], [now])], False
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
            return None
        frames = self._drain()
        self._track_gap(now)
        if self._packets and self._stalled(now):
            self._skip_gap()
            frames.extend(self._drain())
            self._track_gap(now)
        need_keyframe, self._lost = self._lost, False
        if not frames and not need_keyframe:
            return None
        return frames, need_keyframe

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

    def _drain(self) -> list[Run]:
        out: list[Run] = []
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
            out.append(
                (
                    last_ts,
                    [p.payload for p in packets],
                    [p.data for p in packets],
                    [p.arrival for p in packets],
                )
            )

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


def new_reorder(
    video: bool, codec: str, max_wait: float, max_packets: int, *, native: bool = True
) -> Reorder:
    """The C core when built and ``native``, else ``PyReorder``."""
    if native and _native is not None:
        core: Reorder = _native.Reorder(video, codec, max_wait, max_packets)
        return core
    return PyReorder(video, codec, max_wait, max_packets)


def native_reorder(core: Reorder) -> bool:
    """Whether ``core`` is the C one (a C caller may push to it)."""
    return _native is not None and isinstance(core, _native.Reorder)


_NOTHING = AssemblyResult([])


class FrameAssembler:
    """Marker-bit frame assembly for one video SSRC; every audio packet is a frame of its own.
    The packet ordering is a ``Reorder`` core (in C when built); this finishes each frame it
    releases (filler and forged SEI removed, keyframe detected)."""

    def __init__(
        self,
        kind: MediaKind,
        codec: str,
        *,
        max_wait: float = 0.1,
        max_packets: int = 1024,
        trusted_sei: bool = False,
        native: bool = True,
    ) -> None:
        """``trusted_sei``: keep SEI messages in stagecast's name (a pull from another node of
        ours); from anchors they are removed (``sei.strip_claimed_sei``). ``native`` False:
        the Python core (tests compare the two)."""
        self.kind = kind
        self.codec = codec
        self._core = new_reorder(kind == "video", codec, max_wait, max_packets, native=native)
        self.frames_out = 0
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
        """The frames this packet completes (none for most packets: the shared empty result,
        never to be changed)."""
        out = self._core.push(sequence_number, timestamp, marker, payload, data, now)
        return _NOTHING if out is None else self.finish(out)

    @property
    def core(self) -> Reorder:
        """The reorder core: a caller that pushes to it directly (the receive path's C lanes,
        relay/rtc/_rtp_reader.c) hands what it returns to ``finish``."""
        return self._core

    def finish(self, out: tuple[list[Run], bool] | None) -> AssemblyResult:
        """The frames of what the core's ``push`` returned."""
        if out is None:
            return _NOTHING
        runs, need_keyframe = out
        frames = []
        for run in runs:
            frame = self._finish(*run)
            if frame is not None:
                frames.append(frame)
        return AssemblyResult(frames, need_keyframe)

    @property
    def next_sequence(self) -> int | None:
        """The 16-bit sequence number the next frame must start at (None: restarting); a
        packet before it is late and dropped."""
        return self._core.next_sequence

    @property
    def max_wait(self) -> float:
        """Seconds a gap may hold the frames behind it; may change between packets."""
        return self._core.max_wait

    @max_wait.setter
    def max_wait(self, seconds: float) -> None:
        self._core.max_wait = seconds

    @property
    def frames_skipped(self) -> int:
        return self._core.frames_skipped

    @property
    def pending(self) -> int:
        """Packets held for frames not complete yet."""
        return self._core.pending

    def _finish(
        self, timestamp: int, payloads: list[bytes], data: list[bytes], arrivals: list[float]
    ) -> EncodedFrame | None:
        if self._strip_sei:
            kept = self._without_forged_sei(payloads, data, arrivals)
            if kept is None:  # nothing but a forged SEI message
                return None
            payloads, data, arrivals = kept
        return self._frame(timestamp, payloads, data, arrivals)

    def _without_forged_sei(
        self, payloads: list[bytes], data: list[bytes], arrivals: list[float]
    ) -> tuple[list[bytes], list[bytes], list[float]] | None:
        changes = strip_claimed_sei(payloads)
        if changes:
            self.sei_removed += len(changes)
            rows: list[tuple[bytes, bytes, float] | None] = list(
                zip(payloads, data, arrivals, strict=True)
            )
            for i, new in changes:
                rows[i] = None if new is None else (new, annexb(new), arrivals[i])
            kept = [r for r in rows if r is not None]
            if not kept:
                return None
            payloads = [r[0] for r in kept]
            data = [r[1] for r in kept]
            arrivals = [r[2] for r in kept]
        if hides_claimed_sei(payloads, b"".join(data)):
            self.sei_removed += len(payloads)
            return None  # a forged message hidden inside another NAL unit: the frame goes
        return payloads, data, arrivals

    def _frame(
        self, timestamp: int, payloads: list[bytes], data: list[bytes], arrivals: list[float]
    ) -> EncodedFrame:
        if self._h264:
            # CBR encoders (x264 with nal-hrd=cbr, as OBS sets it) pad with filler NAL units,
            # up to half of the bitrate: no decoder needs them, so no viewer is sent them.
            # is_h264_filler, inline: a call per payload was most of a frame's finishing
            keep = [
                i
                for i, p in enumerate(payloads)
                if not p
                or (
                    p[0] & 0x1F != H264_FILLER
                    and (p[0] & 0x1F != H264_FU_A or len(p) < 2 or p[1] & 0x1F != H264_FILLER)
                )
            ]
            if keep and len(keep) < len(payloads):
                self.filler_bytes += sum(len(payloads[i]) for i in range(len(payloads))) - sum(
                    len(payloads[i]) for i in keep
                )
                payloads = [payloads[i] for i in keep]
                data = [data[i] for i in keep]
                arrivals = [arrivals[i] for i in keep]
        joined = b"".join(data)
        self.frames_out += 1
        return EncodedFrame(
            kind=self.kind,
            codec=self.codec,
            timestamp=timestamp,
            payloads=tuple(payloads),
            data=joined,
            keyframe=is_keyframe(self.codec, joined),
            received_at=arrivals[-1],
        )
