"""RTP-level forwarding, sans I/O: shared header templates and per-viewer rewriting.

A frame is serialised into RTP packets once per *send profile* (payload type, MID and negotiated
header extensions, which every browser viewer shares), with zero sequence number, timestamp and
SSRC. Each viewer then patches its own 10 bytes into a copy. That keeps the per-viewer, per-packet
cost to a copy, a ``struct.pack_into`` and the SRTP encryption, instead of aiortc's per-packet
``RtpPacket`` object, header-extension serialisation and awaits (BENCHMARKS.md, "Code figures").
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtpPacket,
    pack_header_extensions,
    unpack_header_extensions,
)

from relay.media.cc_feedback import TRANSPORT_CC_URIS
from relay.media.frames import EncodedFrame
from relay.media.playout_delay import PLAYOUT_DELAY_URI

HISTORY_FRAMES = 128  # frames kept per viewer and kind for NACKs: ~4 s of video, 2.5 s of audio
SEQ_TS_SSRC = Struct("!HII")
_U16 = Struct("!H")


@dataclass(frozen=True, slots=True)
class SendProfile:
    """What a viewer's sender negotiated that shapes the bytes of its packets."""

    payload_type: int
    mid: str | None
    extensions: tuple[tuple[str, int], ...]  # (uri, id)
    rtx_payload_type: int | None = None  # RED's own RTX when RED is used
    red_payload_type: int | None = None  # media in RED (RFC 2198) for ULPFEC (relay/media/ulpfec)
    ulpfec_payload_type: int | None = None

    @property
    def template_key(self) -> tuple[int, str | None, tuple[tuple[str, int], ...], int | None]:
        return self.payload_type, self.mid, self.extensions, self.red_payload_type

    @property
    def transport_cc_id(self) -> int | None:
        """The id of the negotiated transport-wide sequence number extension, if any."""
        return next((i for uri, i in self.extensions if uri in TRANSPORT_CC_URIS), None)

    @property
    def playout_delay_id(self) -> int | None:
        """The id of the negotiated playout-delay extension, if any."""
        return next((i for uri, i in self.extensions if uri == PLAYOUT_DELAY_URI), None)


Extra = tuple[tuple[int, bytes], ...]
"""Header extensions aiortc does not write, (id, value) each, appended to a template's."""


def abs_send_time(ntp: int) -> int:
    """The 24-bit 6.18 fixed-point abs-send-time from a 64-bit NTP timestamp."""
    return (ntp >> 14) & 0x00FFFFFF


def header_length(packet: bytes | bytearray) -> int:
    """Bytes before the payload: fixed header, CSRCs and the extension block."""
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        length += 4 + 4 * _U16.unpack_from(packet, length + 2)[0]
    return length


def extension_offset(packet: bytes | bytearray, ext_id: int) -> int | None:
    """Where the value of header extension ``ext_id`` starts in ``packet`` (RFC 8285, one- or
    two-byte headers), or None when it has none."""
    if not packet[0] & 0x10:
        return None
    pos = 12 + 4 * (packet[0] & 0x0F)
    profile = _U16.unpack_from(packet, pos)[0]
    end = pos + 4 + 4 * _U16.unpack_from(packet, pos + 2)[0]
    pos += 4
    one_byte = profile == 0xBEDE
    if not one_byte and profile & 0xFFF0 != 0x1000:
        return None
    while pos < end:
        if packet[pos] == 0:  # padding
            pos += 1
            continue
        if one_byte:
            xid, length, value = packet[pos] >> 4, (packet[pos] & 0x0F) + 1, pos + 1
            if xid == 15:
                return None
        else:
            xid, length, value = packet[pos], packet[pos + 1], pos + 2
        if xid == ext_id:
            return value
        pos = value + length
    return None


def with_extensions(head: bytes, extra: Extra) -> bytes:
    """The RTP header ``head`` (no payload) with ``extra`` appended to its extension block:
    the elements already there keep their offsets (a transport-wide sequence number's is
    found once per sender) unless the block has to change from one-byte to two-byte form."""
    if not extra:
        return head
    base = 12 + 4 * (head[0] & 0x0F)
    elements: list[tuple[int, bytes]] = []
    end = base
    if head[0] & 0x10:
        profile, words = _U16.unpack_from(head, base)[0], _U16.unpack_from(head, base + 2)[0]
        end = base + 4 + 4 * words
        elements = unpack_header_extensions(profile, head[base + 4 : end])
    profile, value = pack_header_extensions([*elements, *extra])
    value += bytes(-len(value) % 4)
    block = _U16.pack(profile) + _U16.pack(len(value) // 4) + value
    return bytes((head[0] | 0x10,)) + head[1:base] + block + head[end:]


def build_templates(
    payloads: tuple[bytes, ...],
    profile: SendProfile,
    send_time: int,
    ext_map: HeaderExtensionsMap,
    extra: Extra = (),
) -> tuple[bytes, ...]:
    """The frame's packets with sequence number, timestamp and SSRC left at zero. Every packet of
    a frame has the same header but for the marker bit (the last's): it is serialised once and
    each payload appended (aiortc's per-packet ``RtpPacket.serialize`` costs several times that,
    paid per stream and send profile however few viewers watch: BENCHMARKS.md)."""
    if not payloads:
        return ()
    red = profile.red_payload_type
    if red is not None:  # one primary RED block each: the media payload type, then the payload
        block = bytes((profile.payload_type & 0x7F,))
        payloads = tuple(block + p for p in payloads)
    packet = RtpPacket(payload_type=profile.payload_type if red is None else red)
    packet.extensions.abs_send_time = send_time
    packet.extensions.mid = profile.mid
    packet.extensions.transport_sequence_number = 0  # written per viewer when negotiated
    head = with_extensions(packet.serialize(ext_map), extra)  # the header alone
    marked = bytes((head[0], head[1] | 0x80)) + head[2:]
    out = [head + payload for payload in payloads[:-1]]
    out.append(marked + payloads[-1])
    return tuple(out)


GSO_PAD_BUDGET = 0.05
"""Share of a GSO run's bytes that RTP padding may add to make it one send. An encoder with
sliced threads (x264 zerolatency) sends an SEI and 2-3 slices per frame, each fragmented to its
own packet size: padding the odd packets up turns 3.4 sends per 720p 1.5 Mbps frame into 2.4 for
1.5 % more bytes, and on loopback a send costs ~8 us where a datagram inside a GSO send costs
~3 us (``bench.udp_cost``)."""
MAX_RTP_PADDING = 255  # the padding count is one byte (RFC 3550 5.1)


def gso_plan(
    sizes: tuple[int, ...],
    *,
    pad_budget: float = GSO_PAD_BUDGET,
    max_segments: int = 64,
    max_bytes: int = 60_000,
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Split a frame's packets into runs one UDP GSO send can carry, and the RTP padding that
    makes them fit: every packet of a run but the last must have the run's segment size (the
    last may be shorter: Linux ``UDP_SEGMENT`` rules). A run grows while padding its shorter
    packets up costs at most ``pad_budget`` of its bytes (and at most 255 bytes a packet).
    Returns ``(start, end)`` pairs covering every packet in order, and each packet's padding."""
    runs: list[tuple[int, int]] = []
    pads = [0] * len(sizes)
    start = 0
    n = len(sizes)
    while start < n:
        seg = smallest = total = sizes[start]
        body = 0  # bytes of the run's packets before its last
        end = start + 1
        while end < n and end - start < max_segments:
            size = sizes[end]
            new_seg = max(seg, size)
            new_body = body + sizes[end - 1]
            new_smallest = min(smallest, sizes[end - 1])
            count = end - start  # packets that would be padded to new_seg
            padding = count * new_seg - new_body
            if (
                new_seg - new_smallest > MAX_RTP_PADDING
                or padding > pad_budget * (total + size)
                or count * new_seg + size > max_bytes
            ):
                break
            seg, body, smallest, total = new_seg, new_body, new_smallest, total + size
            end += 1
        for i in range(start, end - 1):
            pads[i] = seg - sizes[i]
        runs.append((start, end))
        start = end
    return tuple(runs), tuple(pads)


def gso_runs(sizes: tuple[int, ...], **limits: int) -> tuple[tuple[int, int], ...]:
    """Runs needing no padding: equal sizes but a shorter last."""
    return gso_plan(sizes, pad_budget=0.0, **limits)[0]


def padded(template: bytes, padding: int) -> bytes:
    """The packet with ``padding`` bytes of RTP padding (P bit set, count in the last byte)."""
    if not padding:
        return template
    return bytes([template[0] | 0x20]) + template[1:] + bytes(padding - 1) + bytes([padding])


@dataclass(frozen=True, slots=True)
class FramePackets:
    """A frame's packet templates for one send profile, and how they batch for GSO."""

    templates: tuple[bytes, ...]
    runs: tuple[tuple[int, int], ...]
    sizes: tuple[int, ...] = ()  # each packet's length (transport-cc send records)


def extensions_map(profile: SendProfile) -> HeaderExtensionsMap:
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in profile.extensions
            ]
        )
    )
    return ext_map


class TemplateCache:
    """Templates of the frame being fanned out, per profile.

    ``FanoutHub.publish`` hands one frame object to every viewer in turn, so keeping only the
    current frame (by identity) makes every viewer after the first a cache hit.
    """

    def __init__(self, ntp_clock: Callable[[], int]) -> None:
        self._ntp_clock = ntp_clock
        self._frame: EncodedFrame | None = None
        self._templates: dict[int, FramePackets] = {}
        self._ids: dict[tuple[object, ...], int] = {}
        self._maps: dict[int, HeaderExtensionsMap] = {}
        self._extra: dict[int, Extra] = {}
        self.ntp = 0
        self.builds = 0

    def template_id(self, profile: SendProfile, extra: Extra = ()) -> int:
        """A small int naming the profile's packet shape (with ``extra`` header extensions,
        e.g. one playout delay: viewers given the same value share it): the per-frame lookup
        key."""
        key = (profile.template_key, extra)
        tid = self._ids.get(key)
        if tid is None:
            tid = self._ids[key] = len(self._ids)
            self._maps[tid] = extensions_map(profile)
            self._extra[tid] = extra
        return tid

    def templates(self, frame: EncodedFrame, profile: SendProfile) -> tuple[bytes, ...]:
        return self.packets(frame, profile).templates

    def packets(
        self, frame: EncodedFrame, profile: SendProfile, tid: int | None = None
    ) -> FramePackets:
        if frame is not self._frame:
            self._frame = frame
            self._templates.clear()
            self.ntp = self._ntp_clock()
        if tid is None:
            tid = self.template_id(profile)
        found = self._templates.get(tid)
        if found is None:
            ext_map = self._maps[tid]
            templates = build_templates(
                frame.payloads, profile, abs_send_time(self.ntp), ext_map, self._extra[tid]
            )
            runs, pads = gso_plan(tuple(map(len, templates)))
            if any(pads):
                templates = tuple(map(padded, templates, pads))
            found = FramePackets(templates, runs, tuple(map(len, templates)))
            self._templates[tid] = found
            self.builds += 1
        return found


class RtpRewriter:
    """One viewer's RTP numbering for one kind: its SSRC, sequence numbers, timestamp origin and
    the history that answers its NACKs (with RTX when negotiated)."""

    def __init__(
        self,
        ssrc: int,
        profile: SendProfile,
        *,
        rtx_ssrc: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.profile = profile
        self.sequence = rng.randrange(0, 1 << 16)
        self.rtx_sequence = rng.randrange(0, 1 << 16)
        self.timestamp_origin = rng.randrange(0, 1 << 32)
        self.last_timestamp = 0
        self.packets = 0
        self.retransmissions = 0
        # the frames sent, as a ring of (first sequence number, templates, timestamp) in three
        # preallocated lists: a tuple per frame and viewer would be a tracked object living ~4 s,
        # which the cyclic collector scans at every young-generation pass (pauses of the event
        # loop that grow with the audience: BENCHMARKS.md, "Code figures")
        self._first = [0] * HISTORY_FRAMES
        self._frames: list[tuple[bytes, ...]] = [()] * HISTORY_FRAMES
        self._ts = [0] * HISTORY_FRAMES
        self._key = [False] * HISTORY_FRAMES
        self._at = [-1.0] * HISTORY_FRAMES  # when each frame was sent (-1: not told)
        self.keyframe_at = -1.0  # when the last keyframe was sent (-1: none, or not told)
        self._slot = 0
        self._continue_after: int | None = None
        # the first sequence number of the current timeline (None: the only one so far) and
        # how many frames of the history may still be older than it
        self._floor: int | None = None
        self._floor_frames = 0

    def continue_timeline(self, advance: int) -> None:
        """The next frame comes from another timeline (another hub): place it ``advance`` ticks
        after the last one sent so the viewer's timestamps stay monotonic. Packets sent before
        it are never sent again: the viewer decodes the new layer from its keyframe on, and
        resending a layer left behind (often one that overran the link) only delays that
        keyframe's packets on a link that is full already."""
        self._continue_after = advance

    def assign(
        self,
        templates: tuple[bytes, ...],
        timestamp: int,
        keyframe: bool = False,
        now: float | None = None,
    ) -> tuple[int, int]:
        """Number the frame's packets for this viewer: (first sequence number, timestamp); the
        i-th packet gets ``(first + i) & 0xFFFF``. Records them for NACKs (``now``: the
        send time, for ``lookup_sent``)."""
        first = self.sequence
        if self._continue_after is not None:
            base = self.last_timestamp + self._continue_after
            self.timestamp_origin = (base - timestamp) & 0xFFFFFFFF
            self._continue_after = None
            self._floor, self._floor_frames = first, HISTORY_FRAMES
        elif self._floor is not None:
            self._floor_frames -= 1
            if self._floor_frames <= 0:  # every frame in the history is past it
                self._floor = None
        ts = (self.timestamp_origin + timestamp) & 0xFFFFFFFF
        n = len(templates)
        slot = self._slot
        self._first[slot] = first
        self._frames[slot] = templates
        self._ts[slot] = ts
        self._key[slot] = keyframe
        self._at[slot] = -1.0 if now is None else now
        if keyframe and now is not None:
            self.keyframe_at = now
        self._slot = (slot + 1) % HISTORY_FRAMES
        self.packets += n
        self.sequence = (first + n) & 0xFFFF
        self.last_timestamp = ts
        return first, ts

    def filler(self) -> tuple[int, bytes]:
        """Take the next sequence number for a padding-only packet (the last frame's timestamp,
        one padding octet): sent after the next frame's packets, it makes a hole the receiver
        sees and fills it (``relay.media.nack_solicit``). Padding, not an empty payload:
        receivers count a padding-only packet for sequence continuity without depayloading it
        (libwebrtc's packet buffer ``InsertPadding``; aiortc strips it to an empty payload),
        where an empty H264 payload is a depayloader error that leaves the hole open.
        Returns (number, packet)."""
        seq = self.sequence
        self.sequence = (seq + 1) & 0xFFFF
        self.packets += 1
        head = bytes((0xA0, self.profile.payload_type & 0x7F))  # V=2, P=1
        return seq, head + SEQ_TS_SSRC.pack(seq, self.last_timestamp, self.ssrc) + b"\x01"

    def extend_last(self, extra: tuple[bytes, ...]) -> None:
        """Packets sent right after the last frame's, numbered on from them (its parity packets:
        ``relay.media.ulpfec``), kept with it for NACKs."""
        slot = (self._slot - 1) % HISTORY_FRAMES
        self._frames[slot] = self._frames[slot] + extra
        self.packets += len(extra)
        self.sequence = (self.sequence + len(extra)) & 0xFFFF

    def packets_for(self, templates: tuple[bytes, ...], timestamp: int) -> list[bytes]:
        """The frame's packets as this viewer must receive them (plaintext RTP)."""
        first, ts = self.assign(templates, timestamp)
        out = []
        for i, template in enumerate(templates):
            buf = bytearray(template)
            SEQ_TS_SSRC.pack_into(buf, 2, (first + i) & 0xFFFF, ts, self.ssrc)
            out.append(bytes(buf))
        return out

    def _slot_of(self, sequence: int) -> tuple[int, int] | None:
        """(history slot, index in its frame) of a packet still in the history, newest first;
        None for one sent before the timeline changed (``continue_timeline``)."""
        floor = self._floor
        if floor is not None and (sequence - floor) & 0xFFFF >= 0x8000:
            return None
        for back in range(1, HISTORY_FRAMES + 1):
            slot = (self._slot - back) % HISTORY_FRAMES
            offset = (sequence - self._first[slot]) & 0xFFFF
            if offset < len(self._frames[slot]):
                return slot, offset
        return None

    def _find(self, sequence: int) -> tuple[bytes, int] | None:
        """(template, timestamp) of a packet still in the history."""
        found = self._slot_of(sequence)
        if found is None:
            return None
        slot, offset = found
        return self._frames[slot][offset], self._ts[slot]

    def lookup(self, sequence: int) -> tuple[int, int] | None:
        """(size, age in timestamp ticks behind the newest frame sent) of a packet still in the
        history, or None. The age is a serial-number difference (RFC 1982): a frame that is
        "ahead" of the newest (a timestamp jump) counts as age 0, never as a wrap-around."""
        found = self.lookup_packet(sequence)
        return None if found is None else found[:2]

    def lookup_packet(self, sequence: int) -> tuple[int, int, bool] | None:
        """``lookup`` and whether the packet belongs to a keyframe."""
        found = self._slot_of(sequence)
        if found is None:
            return None
        slot, offset = found
        age = (self.last_timestamp - self._ts[slot]) & 0xFFFFFFFF
        return len(self._frames[slot][offset]), 0 if age >= 1 << 31 else age, self._key[slot]

    def recent(self, limit: int) -> list[tuple[int, int]]:
        """(sequence number, size) of up to ``limit`` packets of the newest frames in the
        history, newest first (what a probe's padding resends); none sent before the timeline
        changed (``retransmission`` would refuse them after they were numbered: read as loss)."""
        out: list[tuple[int, int]] = []
        floor = self._floor
        for back in range(1, HISTORY_FRAMES + 1):
            slot = (self._slot - back) % HISTORY_FRAMES
            frame = self._frames[slot]
            first = self._first[slot]
            for i in range(len(frame) - 1, -1, -1):
                seq = (first + i) & 0xFFFF
                if floor is not None and (seq - floor) & 0xFFFF >= 0x8000:
                    return out  # older still: all before the floor
                out.append((seq, len(frame[i])))
                if len(out) >= limit:
                    return out
        return out

    def lookup_sent(self, sequence: int, now: float) -> tuple[int, float | None, bool] | None:
        """(size, seconds since it was sent or None when ``assign`` was not told, keyframe?)
        of a packet still in the history. A retransmission's deadline runs from the send, not
        from media time (``lookup``): a source that skipped frames (a mixer late on a busy
        machine jumps its timestamps ahead) makes media time outrun the clock, and a packet
        sent 90 ms before was refused as 300 ms late (netbed trace, 2 % loss)."""
        found = self._slot_of(sequence)
        if found is None:
            return None
        slot, offset = found
        at = self._at[slot]
        return (
            len(self._frames[slot][offset]),
            None if at < 0 else max(0.0, now - at),
            self._key[slot],
        )

    def superseded(self, age: float | None, now: float) -> bool:
        """A keyframe went out after the packet sent ``age`` seconds before ``now`` (from
        ``lookup_sent``): the viewer decodes from that keyframe on and no longer waits for it.
        (1 us: ``now - age`` is the send time give or take rounding; keyframes are frames
        apart.)"""
        return age is not None and self.keyframe_at > now - age + 1e-6

    def retransmission(
        self, sequence: int, transport_seq: int | None = None, transport_offset: int = 0
    ) -> bytes | None:
        """The packet a NACK asks for again: RTX-wrapped (RFC 4588) when negotiated; with a
        transport-wide sequence number written at ``transport_offset`` when given."""
        found = self._find(sequence)
        if found is None:
            return None
        template, ts = found
        self.retransmissions += 1
        rtx_pt = self.profile.rtx_payload_type
        if rtx_pt is None:
            buf = bytearray(template)
            SEQ_TS_SSRC.pack_into(buf, 2, sequence, ts, self.ssrc)
        else:
            head = header_length(template)
            buf = bytearray(template[:head])
            buf[1] = (buf[1] & 0x80) | rtx_pt
            SEQ_TS_SSRC.pack_into(buf, 2, self.rtx_sequence, ts, self.rtx_ssrc)
            self.rtx_sequence = (self.rtx_sequence + 1) & 0xFFFF
            buf += _U16.pack(sequence)
            buf += template[head:]
        if transport_seq is not None and 0 < transport_offset <= len(buf) - 2:
            _U16.pack_into(buf, transport_offset, transport_seq)
        return bytes(buf)
