"""Transport-wide congestion control feedback from the receiving side (the anchor's leg).

A publisher that negotiated the transport-wide sequence number header extension numbers every
RTP packet it sends on the transport (audio, video, RTX and padding probes alike). The receiver
reports, for each number, whether the packet arrived and when (RTCP RTPFB FMT=15,
draft-holmer-rmcat-transport-wide-cc-extensions-01); the sender's own congestion controller
(libwebrtc's GoogCC) turns those reports into its send rate. That is what lets a browser reach
its configured bitrate within a second or two instead of the tens of seconds that receive-side
REMB gives it.

``TransportFeedbackGenerator`` is the receive-side bookkeeping of libwebrtc's
``TransportSequenceNumberFeedbackGenerator``, sans I/O: ``record`` each arrival, ``build`` the
feedback packets when ``next_deadline`` passes (every ``interval``, or at once after
``max_pending`` new packets). A packet that arrives after its number was reported (reordered)
moves the window back, so the next feedback reports it, as libwebrtc does; duplicates keep their
first arrival; packets older than ``history`` behind the newest are forgotten.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from relay.media.reassembly import Unwrapper

TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
TRANSPORT_CC_FEEDBACK = "transport-cc"

RTPFB = 205
FMT_TRANSPORT_CC = 15
DELTA_TICK_US = 250
REFERENCE_TICK_US = 64_000

NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2
_HEADER_BYTES = 20  # RTCP header, 2 SSRCs, base seq, status count, reference time, fb count
_MAX_RUN = 0x1FFF  # 13-bit run length
_MAX_STATUSES = 0xFFFF
_MAX_SPAN = 1 << 15  # sequence numbers kept at most (libwebrtc's kMaxNumberOfPackets)
MAX_JUMP = 2048
"""Numbers beyond the newest seen that count as a restart: ~1 s of a 2.5 Mbps stream lost
outright is still reported packet by packet; more is not worth a step per number."""


def _round_ticks(us: int) -> int:
    """Microseconds to 250 us ticks, rounding half away from zero (as libwebrtc does)."""
    half = DELTA_TICK_US // 2
    return (us + half) // DELTA_TICK_US if us >= 0 else -((-us + half) // DELTA_TICK_US)


class _Chunks:
    """Packet status chunks, encoded as libwebrtc's ``LastChunk`` does: run-length chunks for
    runs, one-bit vectors of 14 when no delta is large, two-bit vectors of 7 otherwise."""

    def __init__(self) -> None:
        self.encoded: list[int] = []
        self._buf: list[int] = []  # pending symbols (all equal beyond 14)
        self._size = 0
        self._all_same = True
        self._has_large = False

    @property
    def count(self) -> int:
        """Chunks the statuses added so far take."""
        return len(self.encoded) + (1 if self._size else 0)

    def add(self, symbol: int) -> None:
        if not self._can_add(symbol):
            self.encoded.append(self._emit())
        if self._size < 14:
            self._buf.append(symbol)
        self._all_same = self._all_same and (self._size == 0 or symbol == self._buf[0])
        self._has_large = self._has_large or symbol == LARGE_DELTA
        self._size += 1

    def add_run(self, symbol: int, n: int) -> None:
        for _ in range(n):  # cheap: beyond 14 equal symbols add() only counts
            self.add(symbol)

    def finish(self) -> list[int]:
        if self._size:
            self.encoded.append(self._encode_last())
            self._clear()
        return self.encoded

    def _can_add(self, symbol: int) -> bool:
        if self._size < 7:
            return True
        if self._size < 14 and not self._has_large and symbol != LARGE_DELTA:
            return True
        return self._size < _MAX_RUN and self._all_same and symbol == self._buf[0]

    def _clear(self) -> None:
        self._buf = []
        self._size = 0
        self._all_same = True
        self._has_large = False

    def _emit(self) -> int:
        if self._all_same:
            chunk = self._run_length()
            self._clear()
            return chunk
        if self._size == 14:
            chunk = self._vector(self._buf, one_bit=True)
            self._clear()
            return chunk
        chunk = self._vector(self._buf[:7], one_bit=False)
        rest = self._buf[7:]
        self._clear()
        for symbol in rest:
            self._buf.append(symbol)
            self._all_same = self._all_same and symbol == self._buf[0]
            self._has_large = self._has_large or symbol == LARGE_DELTA
            self._size += 1
        return chunk

    def _encode_last(self) -> int:
        if self._all_same:
            return self._run_length()
        return self._vector(self._buf, one_bit=self._size > 7)

    def _run_length(self) -> int:
        return (self._buf[0] << 13) | self._size

    @staticmethod
    def _vector(symbols: list[int], *, one_bit: bool) -> int:
        chunk = 0x8000
        if one_bit:
            for i, s in enumerate(symbols):
                chunk |= (s & 1) << (13 - i)
        else:
            chunk |= 0x4000
            for i, s in enumerate(symbols):
                chunk |= s << (12 - 2 * i)
        return chunk


@dataclass(frozen=True, slots=True)
class FeedbackStats:
    """What a generator has seen and sent, for the operator's view of the anchor's leg."""

    packets: int
    duplicates: int
    too_old: int
    feedback_packets: int
    feedback_bytes: int


class TransportFeedbackGenerator:
    """Arrivals of transport-wide sequence numbers in, RTCP transport-cc feedback packets out.

    Times are seconds (a monotonic clock); ``sender_ssrc`` is ours (the receiver's RTCP SSRC);
    the media SSRC of each feedback is that of the newest packet recorded."""

    def __init__(
        self,
        sender_ssrc: int = 0,
        *,
        interval: float = 0.05,
        max_pending: int = 100,
        history: float = 0.5,
        max_bytes: int = 1200,
    ) -> None:
        if interval <= 0 or max_pending < 1 or history <= 0 or max_bytes < 64:
            raise ValueError("interval, max_pending, history and max_bytes must be positive")
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = 0
        self.interval = interval
        self.max_pending = max_pending
        self._history_us = int(history * 1e6)
        self._max_bytes = max_bytes & ~3
        self._unwrap = Unwrapper(16)
        self._arrivals: dict[int, int] = {}  # unwrapped sequence number -> arrival (us)
        self._begin = 0  # lowest sequence number still kept
        self._floor: int | None = None  # below this, arrivals were forgotten: too old to report
        self._end = 0  # newest received + 1
        self._start: int | None = None  # first sequence number the next feedback reports
        self._newest_us = 0
        self._pending = 0
        self._last_sent: float | None = None
        self._fb_count = 0
        self._packets = self._duplicates = self._too_old = 0
        self.jumps = 0  # sequence numbers that jumped MAX_JUMP ahead: reporting starts over
        self._sent_packets = self._sent_bytes = 0

    @property
    def stats(self) -> FeedbackStats:
        return FeedbackStats(
            self._packets, self._duplicates, self._too_old, self._sent_packets, self._sent_bytes
        )

    @property
    def pending(self) -> int:
        """Packets recorded since the last feedback was built."""
        return self._pending

    def record(self, seq: int, arrival: float, media_ssrc: int | None = None) -> bool:
        """One packet with transport-wide sequence number ``seq`` (16 bits) arrived at
        ``arrival``; True when enough are waiting that feedback should go out now."""
        s = self._unwrap.unwrap(seq & 0xFFFF)
        at = round(arrival * 1e6)
        if media_ssrc is not None:
            self.media_ssrc = media_ssrc
        if self._start is not None and s >= self._end + MAX_JUMP:
            # far ahead of anything seen: a restart, not a loss to report number by number (a
            # hostile sender jumping ahead would cost us a step per skipped number)
            self.jumps += 1
            self._arrivals.clear()
            self._start = None
            self._floor = s
        if self._start is None:
            self._begin = self._start = s
            self._end = s
        else:
            self._newest_us = max(self._newest_us, at)
            self._forget()
        if s < self._begin:
            if (self._floor is not None and s < self._floor) or s < self._end - _MAX_SPAN:
                self._too_old += 1
                return False
            self._begin = s  # before the first one recorded: reordered at the start
        if s in self._arrivals:
            self._duplicates += 1
            return False
        self._packets += 1
        self._arrivals[s] = at
        self._end = max(self._end, s + 1)
        self._newest_us = max(self._newest_us, at)
        self._start = min(self._start, s)
        self._pending += 1
        return self._pending >= self.max_pending

    def next_deadline(self) -> float | None:
        """When feedback is due: None while nothing new has arrived."""
        if not self._pending:
            return None
        if self._last_sent is None:
            return 0.0
        return self._last_sent + self.interval

    def build(self, now: float) -> list[bytes]:
        """The feedback packets (each a complete RTCP packet) for everything recorded since the
        last call; empty when nothing is new."""
        start = self._start
        if not self._pending or start is None or start >= self._end:
            self._pending = 0
            return []
        out: list[bytes] = []
        while start < self._end:
            packet, start = self._one(start)
            out.append(packet)
        self._start = start
        self._pending = 0
        self._last_sent = now
        self._sent_packets += len(out)
        self._sent_bytes += sum(len(p) for p in out)
        return out

    def _forget(self) -> None:
        """Drop reported arrivals older than the history window, and keep the window within
        2^15 numbers (a sender that jumped ahead: what lies behind is not reported)."""
        assert self._start is not None
        if self._end - self._start > _MAX_SPAN:
            self._start = self._end - _MAX_SPAN
        if self._end - self._begin > _MAX_SPAN:
            floor = self._end - _MAX_SPAN
            for s in [s for s in self._arrivals if s < floor]:
                del self._arrivals[s]
            self._begin = self._floor = floor
        limit = self._newest_us - self._history_us
        arrivals = self._arrivals
        while self._begin < self._start:
            at = arrivals.get(self._begin)
            if at is not None:
                if at >= limit:
                    break
                del arrivals[self._begin]
            self._begin += 1
            self._floor = self._begin

    def _one(self, begin: int) -> tuple[bytes, int]:
        """One feedback packet reporting from ``begin`` on, and the number the next starts at."""
        arrivals = self._arrivals
        first = begin
        while first not in arrivals:  # the first received one gives the reference time
            first += 1
        reference = arrivals[first] // REFERENCE_TICK_US
        last_us = reference * REFERENCE_TICK_US
        chunks = _Chunks()
        deltas = bytearray()
        statuses = 0
        s = begin
        end = self._end
        while s < end:
            at = arrivals.get(s)
            if at is None:  # a run of numbers not received, up to the next received one
                run_end = s + 1
                while run_end < end and run_end not in arrivals:
                    run_end += 1
                gap = run_end - s
                nxt = arrivals[run_end]
            else:
                gap, nxt = 0, at
            ticks = _round_ticks(nxt - last_us)
            symbol = SMALL_DELTA if 0 <= ticks <= 255 else LARGE_DELTA
            size = _HEADER_BYTES + 2 * (chunks.count + math.ceil(gap / _MAX_RUN) + 2)
            size += len(deltas) + symbol
            if statuses and (
                not -32768 <= ticks <= 32767
                or size > self._max_bytes
                or statuses + gap + 1 > _MAX_STATUSES
            ):
                break  # the next packet starts with this run (its own reference time)
            chunks.add_run(NOT_RECEIVED, gap)
            chunks.add(symbol)
            deltas += struct.pack("!B" if symbol == SMALL_DELTA else "!h", ticks)
            last_us += ticks * DELTA_TICK_US
            statuses += gap + 1
            s += gap + 1
        encoded = chunks.finish()
        body = struct.pack(
            "!IIHHI",
            self.sender_ssrc & 0xFFFFFFFF,
            self.media_ssrc & 0xFFFFFFFF,
            begin & 0xFFFF,
            statuses,
            ((reference & 0xFFFFFF) << 8) | self._fb_count,
        )
        body += struct.pack(f"!{len(encoded)}H", *encoded) + bytes(deltas)
        self._fb_count = (self._fb_count + 1) & 0xFF
        padding = -len(body) % 4
        first_byte = 0x80 | FMT_TRANSPORT_CC
        if padding:  # RFC 3550: the last padding octet counts the padding octets
            body += bytes(padding - 1) + bytes([padding])
            first_byte |= 0x20
        length = (len(body) + 4) // 4 - 1
        return struct.pack("!BBH", first_byte, RTPFB, length) + body, s


def transport_sequence_number(data: bytes, ext_id: int) -> int | None:
    """The transport-wide sequence number (header extension ``ext_id``, RFC 8285 one- or
    two-byte form) of an RTP packet as it came off the wire: SRTP leaves the header and its
    extensions in the clear. None for RTCP, other packets, or when it is absent."""
    if len(data) < 16 or data[0] >> 6 != 2 or not data[0] & 0x10 or 64 <= data[1] & 0x7F <= 95:
        return None
    pos = 12 + 4 * (data[0] & 0x0F)
    if pos + 4 > len(data):
        return None
    profile, words = struct.unpack_from("!HH", data, pos)
    pos += 4
    end = pos + 4 * words
    if end > len(data):
        return None
    if profile == 0xBEDE:
        while pos < end:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            xid, size = byte >> 4, (byte & 0x0F) + 1
            if xid == 15:
                return None
            if xid == ext_id and size == 2 and pos + 3 <= end:
                return (data[pos + 1] << 8) | data[pos + 2]
            pos += 1 + size
    elif profile & 0xFFF0 == 0x1000:
        while pos + 1 < end:
            xid = data[pos]
            if xid == 0:
                pos += 1
                continue
            size = data[pos + 1]
            if xid == ext_id and size == 2 and pos + 4 <= end:
                return (data[pos + 2] << 8) | data[pos + 3]
            pos += 2 + size
    return None
