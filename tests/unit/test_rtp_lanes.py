"""The C lanes of relay/rtc/_rtp_reader.c against the Python path they stand in for: the same
SRTP traces (loss, reordering and duplicates across the sequence wrap, padding, header
extensions, garbage, RTX retransmissions, a sender restart, IDR frames, filler) through a reader
with a lane and through one without, each packet the reader returns taken the way aiortc's
receive path and the ingest take it (``Path.slow`` mirrors ``adapter._tapped_rtp_handler`` and
``TrackIngest._ingest``); the same frames, NACKs, keyframe requests, receiver statistics, NACK
tracker state and ingest counts out of both."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unwrap_rtx, wrap_rtx
from pylibsrtp import Session

from relay.media.nack_tracker import NackPolicy, NackTracker
from relay.media.reassembly import FrameAssembler, Unwrapper
from relay.rtc import rtp_reader
from relay.rtc.rtp_reader import depayloader, new_rtp_reader, new_stream_statistics
from tests.unit.test_rtp_reader import _Clock, rtp, sessions

pytestmark = pytest.mark.skipif(not rtp_reader.NATIVE, reason="the C reader is not built")

SSRC, PT = 0x1234ABCD, 96
RTX_SSRC, RTX_PT = 0x5EED0001, 97
H264 = depayloader("H264")
POLICY = NackPolicy(budget=0.1)
STATS_FIELDS = ("base_seq", "max_seq", "cycles", "packets_received", "jitter", "packets_lost")


class Path:
    """One receive path: a C reader, with lanes or without, and for each packet it returns what
    aiortc's tapped receiver and the ingest do with it."""

    def __init__(self, session: Session, *, lanes: bool) -> None:
        self.reader = new_rtp_reader(session, HeaderExtensionsMap())
        self.lanes = lanes
        self.streams: dict[int, Any] = {}
        self.trackers: dict[int, NackTracker] = {}
        # (the lanes read the real clock: no wait may run out, so a hole is skipped when 64
        # packets wait behind it, the same for both paths whatever the machine's load)
        self.asm = FrameAssembler("video", "H264", max_wait=1e6, max_packets=64)
        self.frames: list[tuple[int, tuple[bytes, ...], bytes, bool]] = []
        self.nacked: list[list[int]] = []
        self.keyframes = 0
        self.packets = self.bytes = 0
        self._seq = Unwrapper(16)
        self.lowest = self.highest = 0
        self.flushes = 0

    def datagram(self, data: bytes) -> None:
        packet = self.reader.receive(data) if self.lanes else self.reader.read(data)
        if packet is None:
            return
        self.slow(packet)
        ours = packet.ssrc == SSRC and packet.payload_type == PT and SSRC in self.trackers
        if self.lanes and ours and SSRC not in self.reader.lanes:
            tracker, stats, push = self.trackers[SSRC], self.streams[SSRC], self.asm.core.push
            assert self.reader.lane_add(SSRC, PT, 1, stats, push, self.trackers, tracker, self.lane)

    def slow(self, packet: RtpPacket) -> None:
        """``_tapped_rtp_handler``'s handle, then ``TrackIngest._ingest``."""
        if packet.payload_type not in (PT, RTX_PT):
            return  # no codec
        stream = self.streams.get(packet.ssrc)
        if stream is None:
            stream = self.streams[packet.ssrc] = new_stream_statistics(90000)
        stream.add(packet)
        if packet.payload_type == RTX_PT:
            if packet.ssrc != RTX_SSRC or len(packet.payload) < 2:
                return
            packet = unwrap_rtx(packet, payload_type=PT, ssrc=SSRC)
        tracker = self.trackers.get(packet.ssrc)
        if tracker is None:
            tracker = self.trackers[packet.ssrc] = NackTracker(POLICY)
        lost = tracker.packet(packet.sequence_number, time.time())
        if lost:
            self.nacked.append(lost)
        try:
            data = H264(packet.payload) if packet.payload else b""
        except ValueError:
            return
        now = time.monotonic()
        self.count(1, len(packet.payload), packet.sequence_number)
        result = self.asm.push(
            packet.sequence_number, packet.timestamp, bool(packet.marker), packet.payload, data, now
        )
        tracker.played(self.asm.next_sequence or 0)
        self.publish(result.frames, result.need_keyframe)

    def timer(self, now: float) -> None:
        """NackRequests' timer: repeats, and what it gives up."""
        for tracker in self.trackers.values():
            again = tracker.due(now)
            if again:
                self.nacked.append(again)

    def lane(self, out: Any, packets: int, size: int, last_seq: int, now: float, *_: int) -> None:
        """What ``adapter``'s lane handler and ``TrackIngest._lane_frames`` do."""
        self.flushes += 1
        self.count(packets, size, last_seq)
        if out is not None:
            result = self.asm.finish(out)
            self.publish(result.frames, result.need_keyframe)

    def count(self, packets: int, size: int, last_seq: int) -> None:
        first = self.packets == 0
        self.packets += packets
        self.bytes += size
        seq = self._seq.unwrap(last_seq)
        self.lowest = seq if first else min(self.lowest, seq)
        self.highest = seq if first else max(self.highest, seq)

    def publish(self, frames: list[Any], need_keyframe: bool) -> None:
        self.frames.extend((f.timestamp, f.payloads, f.data, f.keyframe) for f in frames)
        self.keyframes += need_keyframe

    def outcome(self) -> Any:
        self.reader.flush()
        trackers = {
            ssrc: (t._highest, sorted(t._missing), sorted(t._given_up), t.stats)
            for ssrc, t in self.trackers.items()
        }
        streams = {
            ssrc: tuple(getattr(s, f) for f in STATS_FIELDS) for ssrc, s in self.streams.items()
        }
        counts = (self.packets, self.bytes, self.lowest, self.highest)
        skipped = self.asm.frames_skipped, self.asm.filler_bytes, self.asm.pending
        return self.frames, self.nacked, self.keyframes, trackers, streams, counts, skipped


def frame_payloads(rng: random.Random, index: int) -> list[bytes]:
    """One H264 access unit's RTP payloads: an IDR every 30 frames, FU-A or single NAL units,
    sometimes a filler NAL unit."""
    nal = 5 if index % 30 == 0 else 1
    head = 0x60 | nal
    out: list[bytes] = []
    if rng.random() < 0.3:
        out.append(bytes([head]) + rng.randbytes(rng.randint(20, 200)))
    else:
        parts = rng.randint(2, 8)
        for i in range(parts):
            fu = (0x80 if i == 0 else 0) | (0x40 if i == parts - 1 else 0) | nal
            out.append(bytes([0x7C, fu]) + rng.randbytes(rng.randint(50, 1000)))
    if rng.random() < 0.1:
        out.append(b"\x0c" + b"\xff" * rng.randint(10, 100))
    return out


def trace(rng: random.Random, tx: Session, frames: int, *, hostile: bool) -> list[bytes]:
    """The SRTP datagrams of ``frames`` frames, impaired (not ``hostile``: one packet in 300
    lost, and retransmitted over RTX most times)."""
    seq = rng.randint(65536 - 300, 65535)  # the wrap comes early
    rtx_seq = rng.randint(0, 65535)
    clear: list[bytes] = []
    for index in range(frames):
        if index == frames // 2 and rng.random() < 0.5:
            seq += 10_000  # the sender starts over (a jump past the tracker's max_jump)
        payloads = frame_payloads(rng, index)
        ts = (3000 * index + 12345) & 0xFFFFFFFF
        for i, payload in enumerate(payloads):
            marker = i == len(payloads) - 1
            roll = rng.random() if hostile else 0.5
            if roll < 0.02:
                data = rtp(seq, pad=rng.randint(1, 40), payload=payload, marker=marker, ts=ts)
            elif roll < 0.04:  # an extension no one negotiated (skipped by the parser)
                ext = b"\xbe\xde\x00\x01\x90\x01\x00\x00"
                data = rtp(seq, ext=ext, payload=payload, marker=marker, ts=ts)
            else:
                data = rtp(seq, payload=payload, marker=marker, ts=ts)
            clear.append(data)
            seq = (seq + 1) & 0xFFFF
    out: list[bytes] = []
    late: list[tuple[int, bytes]] = []  # (when, datagram)
    for i, data in enumerate(clear):
        while late and late[0][0] <= i:
            out.append(late.pop(0)[1])
        roll = rng.random() if hostile else (0.0 if i % 300 == 150 else 0.5)
        if roll < 0.05:  # lost; retransmitted over RTX a little later, most times
            if rng.random() < 0.7:
                packet = RtpPacket.parse(data)
                rtx = wrap_rtx(packet, payload_type=RTX_PT, sequence_number=rtx_seq, ssrc=RTX_SSRC)
                rtx_seq = (rtx_seq + 1) & 0xFFFF
                late.append((i + rng.randint(1, 12), tx.protect(rtx.serialize())))
                late.sort(key=lambda item: item[0])
            continue
        protected = tx.protect(data)
        if roll < 0.09 and out:  # reordered: after the next one
            late.append((i + 2, protected))
            late.sort(key=lambda item: item[0])
            continue
        out.append(protected)
        if roll < 0.12:
            out.append(protected)  # duplicated (a replay: the SRTP window drops it)
        if roll > 0.98:
            out.append(rng.randbytes(rng.randint(1, 300)))  # garbage
    out.extend(d for _, d in late)
    return out


@pytest.mark.parametrize("hostile", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_a_lane_gives_what_the_python_path_gives(
    seed: int, hostile: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    tx, rx_lane, rx_python = sessions()
    datagrams = trace(rng, tx, 300, hostile=hostile)
    clock = _Clock()
    monkeypatch.setattr(time, "time", clock.time)  # what the statistics read
    paths = Path(rx_lane, lanes=True), Path(rx_python, lanes=False)
    for i, data in enumerate(datagrams):
        clock.now += rng.random() * 0.01
        for path in paths:
            path.datagram(data)
            if i % 7 == 0:
                path.timer(clock.now)
    laned, python = (path.outcome() for path in paths)
    assert laned == python
    assert paths[1].reader.fast == 0
    assert python[0] and python[1]  # frames and NACKs
    if hostile:
        assert python[2]  # frames skipped: the trace was hostile
        assert paths[0].reader.fast > 200
    else:
        assert paths[0].reader.fast > len(datagrams) * 0.8  # most packets took the lane


def test_a_lane_hands_its_counts_over_on_removal_and_flush() -> None:
    tx, rx, _ = sessions()
    path = Path(rx, lanes=True)
    for seq in range(5):
        path.datagram(tx.protect(rtp(seq, payload=b"\x7c\x81" + bytes(30))))
    assert path.reader.lanes == [SSRC] and path.reader.fast == 4
    assert path.packets == 1  # the first went the Python way; four wait in the lane
    path.reader.flush()
    assert path.packets == 5 and path.flushes == 1
    path.datagram(tx.protect(rtp(5, payload=b"\x7c\x81" + bytes(30))))
    assert path.reader.lane_remove(SSRC) and path.packets == 6
    assert path.reader.lanes == [] and not path.reader.lane_remove(SSRC)


def test_a_replaced_tracker_takes_the_python_path() -> None:
    """NackRequests drops an SSRC's tracker for a new one when it keeps too many: the lane
    stands back for packets until it is registered with the new one."""
    tx, rx, _ = sessions()
    path = Path(rx, lanes=True)
    for seq in range(3):
        path.datagram(tx.protect(rtp(seq, payload=b"\x7c\x81" + bytes(30))))
    fast = path.reader.fast
    path.trackers[SSRC] = NackTracker(NackPolicy())
    assert path.reader.receive(tx.protect(rtp(3, payload=b"\x7c\x81" + bytes(30)))) is not None
    assert path.reader.fast == fast


def test_the_reader_is_collected_with_its_lanes() -> None:
    """A lane's handler refers back to what owns the reader (the transport): a cycle the
    garbage collector must see through."""
    import gc
    import weakref

    tx, rx, _ = sessions()
    path = Path(rx, lanes=True)
    for seq in range(3):
        path.datagram(tx.protect(rtp(seq, payload=b"\x7c\x81" + bytes(30))))
    assert path.reader.lanes
    path.owner = path  # type: ignore[attr-defined]
    gone = weakref.ref(path)
    del path
    gc.collect()
    assert gone() is None
