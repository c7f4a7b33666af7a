"""Congestion-control feedback on the wire, sans I/O: transport-wide CC feedback and REMB.

Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01,
RTCP PT=205 FMT=15) reports, for a range of transport-wide sequence numbers, which packets
arrived and when (deltas of 250 us from a 64 ms reference time). REMB (PT=206 FMT=15, "REMB")
is the receiver's own estimate. Everything here takes bytes a viewer sent us and raises
``FeedbackError`` on anything malformed (the caller counts it and carries on); no input makes
it loop or allocate beyond ``MAX_STATUS_COUNT`` packets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

RTCP_RTPFB = 205
RTCP_PSFB = 206
FMT_TRANSPORT_CC = 15
FMT_APP = 15  # PSFB application layer feedback: REMB

TRANSPORT_CC_URIS = (
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "urn:ietf:params:rtp-hdrext:transport-wide-cc-extensions-01",
)
"""The header extension's URI as Chromium and Firefox offer it, and the URN spelling some
clients use."""

MAX_STATUS_COUNT = 1024
"""Packets one feedback may report: as many as the estimator remembers (~4 s of a 2.5 Mbps
stream; libwebrtc reports every 50-100 ms). A run-length chunk of 8191 "not received" costs the
sender two bytes and the parser a loop each, so more than this is refused unread."""
DELTA_UNIT = 250e-6  # seconds per receive-delta tick
REFERENCE_UNIT = 0.064  # seconds per reference-time tick

_FB_HEAD = struct.Struct("!HH")
_I = struct.Struct("!I")
_H = struct.Struct("!H")
_h = struct.Struct("!h")


class FeedbackError(ValueError):
    """A feedback packet that does not parse: counted and ignored by the caller."""


@dataclass(frozen=True, slots=True)
class TransportFeedback:
    """One transport-cc feedback: ``arrivals[i]`` is the arrival time (seconds on the receiver's
    clock) of packet ``(base_sequence + i) & 0xFFFF``, or None when it was reported missing."""

    base_sequence: int
    feedback_count: int
    arrivals: tuple[float | None, ...]


def parse_transport_feedback(fci: bytes | memoryview) -> TransportFeedback:
    """The feedback control information: everything after the two SSRCs."""
    if len(fci) < 8:
        raise FeedbackError("transport-cc feedback shorter than its header")
    base, count = _FB_HEAD.unpack_from(fci, 0)
    word = _I.unpack_from(fci, 4)[0]
    reference = word >> 8
    if reference & 0x800000:  # 24-bit signed
        reference -= 1 << 24
    fb_count = word & 0xFF
    if count == 0:
        raise FeedbackError("transport-cc feedback reports no packet")
    if count > MAX_STATUS_COUNT:
        raise FeedbackError(f"transport-cc feedback reports {count} packets")
    symbols: list[int] = []
    pos = 8
    end = len(fci)
    while len(symbols) < count:
        if pos + 2 > end:
            raise FeedbackError("transport-cc status chunks truncated")
        chunk = _H.unpack_from(fci, pos)[0]
        pos += 2
        if chunk & 0x8000:  # status vector
            if chunk & 0x4000:  # seven 2-bit symbols
                symbols.extend((chunk >> shift) & 0x3 for shift in range(12, -1, -2))
            else:  # fourteen 1-bit symbols
                symbols.extend((chunk >> shift) & 0x1 for shift in range(13, -1, -1))
        else:  # run length
            run = chunk & 0x1FFF
            if run == 0:
                raise FeedbackError("transport-cc run-length chunk of length 0")
            symbols.extend([(chunk >> 13) & 0x3] * min(run, count - len(symbols)))
    del symbols[count:]  # a last vector chunk may describe more than the count
    time = reference * REFERENCE_UNIT
    arrivals: list[float | None] = []
    for symbol in symbols:
        if symbol == 0:
            arrivals.append(None)
            continue
        if symbol == 1:
            if pos + 1 > end:
                raise FeedbackError("transport-cc receive deltas truncated")
            time += fci[pos] * DELTA_UNIT
            pos += 1
        elif symbol == 2:
            if pos + 2 > end:
                raise FeedbackError("transport-cc receive deltas truncated")
            time += _h.unpack_from(fci, pos)[0] * DELTA_UNIT
            pos += 2
        else:
            raise FeedbackError("transport-cc reserved status symbol")
        arrivals.append(time)
    if end - pos > 3:  # at most padding to 32 bits may follow
        raise FeedbackError("transport-cc feedback longer than its packets")
    return TransportFeedback(base, fb_count, tuple(arrivals))


def build_transport_feedback(
    base_sequence: int,
    arrivals: list[float | None] | tuple[float | None, ...],
    *,
    feedback_count: int = 0,
    sender_ssrc: int = 1,
    media_ssrc: int = 0,
) -> bytes:
    """A whole RTCP transport-cc packet (header and SSRCs included) reporting ``arrivals``
    (seconds, None = missing) from ``base_sequence`` on, in 2-bit status vectors. For tests and
    synthetic traces; arrival times must not go backwards by more than 8 s."""
    if not arrivals or len(arrivals) > MAX_STATUS_COUNT:
        raise ValueError("1..MAX_STATUS_COUNT arrivals")
    first = next((a for a in arrivals if a is not None), 0.0)
    reference = int(first // REFERENCE_UNIT)
    time_ticks = round(reference * REFERENCE_UNIT / DELTA_UNIT)
    symbols: list[int] = []
    deltas = bytearray()
    for arrival in arrivals:
        if arrival is None:
            symbols.append(0)
            continue
        ticks = round(arrival / DELTA_UNIT)
        delta = ticks - time_ticks
        time_ticks = ticks
        if 0 <= delta <= 255:
            symbols.append(1)
            deltas.append(delta)
        else:
            symbols.append(2)
            deltas += _h.pack(max(-32768, min(32767, delta)))
    chunks = bytearray()
    for i in range(0, len(symbols), 7):
        group = symbols[i : i + 7] + [0] * (7 - len(symbols[i : i + 7]))
        chunk = 0xC000
        for j, s in enumerate(group):
            chunk |= s << (12 - 2 * j)
        chunks += _H.pack(chunk)
    fci = (
        _FB_HEAD.pack(base_sequence & 0xFFFF, len(arrivals))
        + _I.pack(((reference & 0xFFFFFF) << 8) | (feedback_count & 0xFF))
        + bytes(chunks)
        + bytes(deltas)
    )
    fci += bytes(-len(fci) % 4)
    body = struct.pack("!II", sender_ssrc, media_ssrc) + fci
    return struct.pack("!BBH", 0x80 | FMT_TRANSPORT_CC, RTCP_RTPFB, len(body) // 4) + body


def parse_remb(fci: bytes | memoryview) -> tuple[int, tuple[int, ...]]:
    """(bitrate in bps, SSRCs it applies to) of a REMB's FCI (after the two SSRCs)."""
    if len(fci) < 8 or bytes(fci[0:4]) != b"REMB":
        raise FeedbackError("not a REMB")
    count = fci[4]
    exponent = fci[5] >> 2
    mantissa = ((fci[5] & 0x3) << 16) | _H.unpack_from(fci, 6)[0]
    if len(fci) < 8 + 4 * count:
        raise FeedbackError("REMB SSRC list truncated")
    ssrcs = tuple(_I.unpack_from(fci, 8 + 4 * i)[0] for i in range(count))
    return mantissa << exponent, ssrcs


def build_remb(bitrate: int, ssrcs: tuple[int, ...], *, sender_ssrc: int = 1) -> bytes:
    exponent = 0
    while bitrate >= 1 << 18:
        bitrate >>= 1
        exponent += 1
    fci = b"REMB" + bytes(
        (len(ssrcs), (exponent << 2) | (bitrate >> 16), (bitrate >> 8) & 0xFF, bitrate & 0xFF)
    )
    fci += b"".join(_I.pack(s) for s in ssrcs)
    body = struct.pack("!II", sender_ssrc, 0) + fci
    return struct.pack("!BBH", 0x80 | FMT_APP, RTCP_PSFB, len(body) // 4) + body


def without_transport_feedback(data: bytes) -> bytes:
    """The compound RTCP datagram without its transport-cc packets (what aiortc still needs:
    it has no use for them, and parses each as a NACK list); ``data`` itself when it has none,
    ``b""`` when it had nothing else. A malformed datagram is returned whole."""
    view = memoryview(data)
    pos = 0
    n = len(data)
    kept: list[memoryview] = []
    dropped = False
    while pos + 4 <= n:
        first, pt, length = view[pos], view[pos + 1], _H.unpack_from(view, pos + 2)[0]
        end = pos + 4 + 4 * length
        if first >> 6 != 2 or end > n:
            return data
        if pt == RTCP_RTPFB and first & 0x1F == FMT_TRANSPORT_CC:
            dropped = True
        else:
            kept.append(view[pos:end])
        pos = end
    if not dropped or pos != n:
        return data
    return b"".join(kept)


def lone_transport_feedback(data: bytes) -> memoryview | None:
    """The FCI when the datagram is one transport-cc packet and nothing else, without padding
    (what Chromium sends ~20 times a second); None otherwise (``feedback_packets`` and
    ``without_transport_feedback`` take the general case). Per feedback and viewer: one test
    instead of a generator and a second walk."""
    n = len(data)
    if (
        n >= 12
        and data[1] == RTCP_RTPFB
        and data[0] == 0x80 | FMT_TRANSPORT_CC  # version 2, no padding
        and 4 * ((data[2] << 8) | data[3]) + 4 == n
    ):
        return memoryview(data)[12:]
    return None


def feedback_packets(data: bytes) -> Iterator[tuple[int, int, memoryview]]:
    """(packet type, FMT/count, FCI after the two SSRCs) of each congestion-control feedback
    packet (transport-cc, REMB) in a compound RTCP datagram; stops quietly at a malformed
    header (aiortc's own parser reports it)."""
    view = memoryview(data)
    pos = 0
    n = len(data)
    while pos + 4 <= n:
        first, pt, length = view[pos], view[pos + 1], _H.unpack_from(view, pos + 2)[0]
        end = pos + 4 + 4 * length
        if first >> 6 != 2 or end > n:
            return
        fmt = first & 0x1F
        if (
            (pt == RTCP_RTPFB and fmt == FMT_TRANSPORT_CC) or (pt == RTCP_PSFB and fmt == FMT_APP)
        ) and end - pos >= 12:
            stop = end
            if first & 0x20:  # padding: its count in the last byte
                pad = view[end - 1]
                if pad == 0 or pad > end - pos - 12:
                    return
                stop = end - pad
            yield pt, fmt, view[pos + 12 : stop]
        pos = end


def split_feedback(data: bytes) -> tuple[tuple[bytes, ...], bytes]:
    """((FCI of each transport-cc packet, ...), the compound without them) when ``data`` is a
    well-formed compound with transport-cc in it (the FCIs as ``feedback_packets`` gives them,
    the rest as ``without_transport_feedback``: ``b""`` when nothing else was in it); else
    ``((), data)``: nothing taken, the general path (``feedback_packets`` on the whole, and
    aiortc's parser) decides. The shared port's shortcut for a viewer's feedback datagram
    (``relay/rtc/rtcp_reader.py``; ``_rtcp_reader.c`` is held to this)."""
    view = memoryview(data)
    pos = 0
    n = len(data)
    fcis: list[bytes] = []
    kept: list[memoryview] = []
    while pos + 4 <= n:
        first, pt, length = view[pos], view[pos + 1], _H.unpack_from(view, pos + 2)[0]
        end = pos + 4 + 4 * length
        if first >> 6 != 2 or end > n:
            return (), data
        if pt == RTCP_RTPFB and first & 0x1F == FMT_TRANSPORT_CC:
            if end - pos < 12:
                return (), data
            stop = end
            if first & 0x20:  # padding: its count in the last byte
                pad = view[end - 1]
                if pad == 0 or pad > end - pos - 12:
                    return (), data
                stop = end - pad
            fcis.append(bytes(view[pos + 12 : stop]))
        else:
            kept.append(view[pos:end])
        pos = end
    if pos != n or not fcis:
        return (), data
    return tuple(fcis), b"".join(kept)
