from __future__ import annotations

import random
import tracemalloc

import pytest

from relay.media import reassembly
from relay.media.reassembly import FrameAssembler, PyReorder, Run, Unwrapper, _Packet, new_reorder


@pytest.fixture(autouse=True, params=["c", "python"])
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the C reorder core and with the Python one."""
    if request.param == "python":
        monkeypatch.setattr(reassembly, "_native", None)
    return str(request.param)


IDR = b"\x00\x00\x00\x01\x65" + b"\x11" * 10
P = b"\x00\x00\x00\x01\x41" + b"\x22" * 10


def push(asm: FrameAssembler, seq: int, ts: int, marker: bool, data: bytes = P, now: float = 0.0):
    return asm.push(seq & 0xFFFF, ts & 0xFFFFFFFF, marker, b"pl" + data, data, now)


def test_frame_released_on_marker_not_on_next_frame() -> None:
    asm = FrameAssembler("video", "H264")
    assert push(asm, 10, 1000, False, IDR).frames == []
    out = push(asm, 11, 1000, True, IDR)
    assert len(out.frames) == 1
    frame = out.frames[0]
    assert frame.keyframe and frame.timestamp == 1000
    assert frame.payloads == (b"pl" + IDR, b"pl" + IDR)
    assert frame.data == IDR + IDR


def test_reordered_packets_complete_the_frame() -> None:
    asm = FrameAssembler("video", "H264")
    push(asm, 1, 0, True)
    assert push(asm, 4, 3000, True).frames == []
    assert push(asm, 2, 3000, False).frames == []
    out = push(asm, 3, 3000, False)
    assert [f.timestamp for f in out.frames] == [3000]
    assert len(out.frames[0].payloads) == 3


def test_lost_packet_is_skipped_after_max_wait_and_asks_for_keyframe() -> None:
    asm = FrameAssembler("video", "H264", max_wait=0.05)
    push(asm, 1, 0, True)
    push(asm, 3, 3000, True, now=0.0)  # packet 2 lost: frame 3000 incomplete
    assert push(asm, 4, 6000, False, now=0.01).frames == []
    out = push(asm, 5, 6000, True, now=0.2)
    assert out.need_keyframe
    assert [f.timestamp for f in out.frames] == [6000]
    assert asm.frames_skipped == 1


def test_sequence_wraparound() -> None:
    asm = FrameAssembler("video", "VP8")
    assert len(push(asm, 65534, 0, True, b"\x00abc").frames) == 1
    push(asm, 65535, 3000, False, b"\x01x")
    out = push(asm, 0, 3000, True, b"\x01y")
    assert len(out.frames) == 1 and not out.frames[0].keyframe


def test_duplicates_and_late_packets_dropped() -> None:
    asm = FrameAssembler("video", "H264")
    push(asm, 5, 0, True)
    assert push(asm, 5, 0, True).frames == []
    assert push(asm, 4, 0, True).frames == []


def test_audio_packets_are_frames() -> None:
    asm = FrameAssembler("audio", "opus")
    out = push(asm, 100, 960, False, b"opus")
    assert len(out.frames) == 1 and out.frames[0].keyframe


def test_unwrapper_both_directions() -> None:
    u = Unwrapper(16)
    assert [u.unwrap(v) for v in (65530, 65535, 2, 65533)] == [65530, 65535, 65538, 65533]


TAIL = b"\x33" * 10  # an FU-A continuation: the depayloader puts no start code before it


def test_slow_frame_without_a_gap_is_never_cut() -> None:
    """A paced keyframe (or a stalled loop) spreads one frame over more than max_wait."""
    asm = FrameAssembler("video", "H264", max_wait=0.05)
    push(asm, 1, 0, True, IDR, now=0.0)
    assert push(asm, 2, 3000, False, IDR, now=0.0).frames == []
    assert push(asm, 3, 3000, False, TAIL, now=0.2).frames == []
    out = push(asm, 4, 3000, True, TAIL, now=0.4)
    assert not out.need_keyframe
    assert [len(f.payloads) for f in out.frames] == [3]
    assert asm.frames_skipped == 0


def test_tail_of_a_broken_frame_never_reaches_viewers() -> None:
    asm = FrameAssembler("video", "H264", max_wait=0.05)
    push(asm, 1, 0, True, IDR)
    push(asm, 3, 3000, False, TAIL, now=0.0)  # 2, the frame's head, is lost
    push(asm, 4, 3000, True, TAIL, now=0.01)
    push(asm, 5, 6000, False, P, now=0.02)
    out = push(asm, 6, 6000, True, TAIL, now=0.2)
    assert out.need_keyframe
    assert [f.timestamp for f in out.frames] == [6000]
    assert out.frames[0].payloads[0] == b"pl" + P


def test_restart_mid_frame_waits_for_a_frame_start() -> None:
    """The first packets seen (a new source, or after everything was dropped) may be a tail."""
    asm = FrameAssembler("video", "H264")
    out = push(asm, 10, 0, True, TAIL)
    assert out.frames == [] and out.need_keyframe
    push(asm, 11, 3000, False, IDR)
    out = push(asm, 12, 3000, True, TAIL)
    assert [f.timestamp for f in out.frames] == [3000] and not out.need_keyframe


def test_vp8_frame_start_from_payload_descriptor() -> None:
    asm = FrameAssembler("video", "VP8")
    assert push_vp8(asm, 1, 0, True, start=False).frames == []
    push_vp8(asm, 2, 3000, False, start=True)
    assert len(push_vp8(asm, 3, 3000, True, start=False).frames) == 1


def push_vp8(asm: FrameAssembler, seq: int, ts: int, marker: bool, *, start: bool):
    descriptor = b"\x10" if start else b"\x00"
    return asm.push(seq, ts, marker, descriptor + b"\x00abc", b"\x00abc", 0.0)


def test_h264_filler_data_is_not_forwarded() -> None:
    """x264 CBR (as OBS runs it) pads frames with filler NAL units (type 12): they are dropped,
    as a single NAL unit or as FU-A fragments, and counted; the frame keeps everything else."""
    asm = FrameAssembler("video", "H264")
    sei = b"\x06\x05\x01\x80"
    slice_a, slice_b = b"\x7c\x81" + b"\x33" * 50, b"\x7c\x41" + b"\x33" * 40  # FU-A of an IDR
    filler_a, filler_b = b"\x7c\x8c" + b"\xff" * 60, b"\x7c\x4c" + b"\xff" * 59 + b"\x80"
    single_filler = b"\x0c" + b"\xff" * 20 + b"\x80"
    packets = [
        (sei, b"\x00\x00\x00\x01" + sei),
        (slice_a, b"\x00\x00\x00\x01\x65" + slice_a[2:]),
        (slice_b, slice_b[2:]),
        (single_filler, b"\x00\x00\x00\x01" + single_filler),
        (filler_a, b"\x00\x00\x00\x01\x0c" + filler_a[2:]),
        (filler_b, filler_b[2:]),
    ]
    out = []
    for i, (payload, data) in enumerate(packets):
        out += asm.push(100 + i, 9000, i == len(packets) - 1, payload, data, 0.0).frames
    assert len(out) == 1
    frame = out[0]
    assert frame.payloads == (sei, slice_a, slice_b)
    assert frame.data == b"\x00\x00\x00\x01" + sei + b"\x00\x00\x00\x01\x65" + b"\x33" * 90
    assert frame.keyframe
    assert asm.filler_bytes == len(single_filler) + len(filler_a) + len(filler_b)
    # a VP8 payload that happens to start like one is left alone
    vp8 = FrameAssembler("video", "VP8")
    assert vp8.push(1, 0, False, b"\x10\x00", b"\x10\x00", 0.0).frames == []
    frames = vp8.push(2, 0, True, b"\x0c\xff", b"\x0c\xff", 0.0).frames
    assert frames[0].payloads == (b"\x10\x00", b"\x0c\xff") and vp8.filler_bytes == 0


class _DrainEveryPacket(PyReorder):
    """The reorder core as it was before in-order packets skipped the drain: every packet
    drains, tracks the gap and checks for a stall."""

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
            return None
        self._packets[seq] = _Packet(ts, marker, payload, data, now)
        frames = self._drain()
        self._track_gap(now)
        if self._packets and self._stalled(now):
            self._skip_gap()
            frames.extend(self._drain())
            self._track_gap(now)
        need_keyframe, self._lost = self._lost, False
        return (frames, need_keyframe) if frames or need_keyframe else None


def _random_stream(rng: random.Random) -> list[tuple[int, int, bool, bytes, bytes]]:
    """Frames of 1-8 packets, ~8 % lost, some swapped up to 4 apart, sometimes a duplicate."""
    packets = []
    seq, ts = rng.randrange(65536), rng.randrange(2**32)
    for f in range(rng.randint(1, 12)):
        n = rng.randint(1, 8)
        for i in range(n):
            data = (b"\x00\x00\x00\x01\x65" if i == 0 else b"\x11") + bytes([f, i])
            packets.append(
                (seq & 0xFFFF, ts & 0xFFFFFFFF, i == n - 1, b"\x65" + bytes([f, i]), data)
            )
            seq += 1
        ts += 3000
    packets = [p for p in packets if rng.random() > 0.08]
    for _ in range(rng.randint(0, 4)):
        if len(packets) > 2:
            a = rng.randrange(len(packets))
            b = min(len(packets) - 1, a + rng.randint(1, 4))
            packets[a], packets[b] = packets[b], packets[a]
    if packets and rng.random() < 0.3:
        packets.insert(rng.randrange(len(packets)), packets[rng.randrange(len(packets))])
    return packets


def test_skipping_the_drain_changes_nothing() -> None:
    """Loss, reordering, duplicates, stalls by count and by time: the same frames, keyframe
    requests and counters as draining at every packet."""
    rng = random.Random(20)
    for _ in range(5000):
        max_packets = rng.choice([4, 1024])
        ours = new_reorder(True, "H264", 0.1, max_packets)
        reference = _DrainEveryPacket(True, "H264", 0.1, max_packets)
        now = 0.0
        for packet in _random_stream(rng):
            now += rng.choice([0.001, 0.03, 0.2])
            assert ours.push(*packet, now) == reference.push(*packet, now)
        assert ours.frames_skipped == reference.frames_skipped
        assert ours.next_sequence == reference.next_sequence


def _hostile_stream(rng: random.Random, codec: str) -> list[tuple[int, int, bool, bytes, bytes]]:
    """A _random_stream across the sequence and timestamp wrap, with garbage mixed in: numbers
    anywhere in the space, long jumps ahead, repeated packets, markers on odd packets."""
    start = rng.choice([65530, 65535, 0, rng.randrange(65536)])
    ts0 = rng.choice([2**32 - 4000, rng.randrange(2**32)])
    packets = [
        ((seq + start) & 0xFFFF, (ts + ts0) & 0xFFFFFFFF, m, p, d)
        for seq, ts, m, p, d in _random_stream(rng)
    ]
    for _ in range(rng.randint(0, 6)):
        kind = rng.random()
        if kind < 0.4:
            seq = rng.randrange(65536)
        elif kind < 0.7 and packets:
            seq = (packets[-1][0] + rng.choice([1500, 3000, 32767, 32768, 40000])) & 0xFFFF
        else:
            seq = (packets[-1][0] + 1) & 0xFFFF if packets else 0
        start_bit = rng.random() < 0.5
        payload = (b"\x10" if start_bit else b"\x00") + bytes([rng.randrange(256)])
        data = b"\x00\x00\x01\x41" if start_bit else b"\x22"
        item = (seq, rng.randrange(2**32), rng.random() < 0.5, payload, data)
        packets.insert(rng.randrange(len(packets) + 1), item)
    if codec == "VP8":  # the S bit of the payload descriptor marks a frame's first packet
        packets = [
            (s, t, m, (b"\x10" if d.startswith(b"\x00\x00") else b"\x00") + p[1:], d)
            for s, t, m, p, d in packets
        ]
    return packets


@pytest.mark.parametrize("kind,codec", [("video", "H264"), ("video", "VP8"), ("audio", "opus")])
def test_c_core_matches_the_python_one(core: str, kind: str, codec: str) -> None:
    """The C reorder core against PyReorder on the same traces: loss, reordering across the
    wrap, duplicates, garbage, stalls by count and by time, a wait changed between packets;
    same frames (timestamps, payloads, data, arrivals), keyframe requests, counters and next
    sequence after every packet."""
    if core == "python" or reassembly._native is None:
        pytest.skip("compares the C core with the Python one")
    rng = random.Random(f"{kind}{codec}")
    for _ in range(3000):
        max_packets = rng.choice([3, 16, 1024])
        max_wait = rng.choice([0.0, 0.05, 0.1])
        ours = new_reorder(kind == "video", codec, max_wait, max_packets)
        reference = PyReorder(kind == "video", codec, max_wait, max_packets)
        now = 0.0
        for packet in _hostile_stream(rng, codec):
            now += rng.choice([0.0, 0.001, 0.03, 0.2])
            if rng.random() < 0.05:  # the repair wait moves between packets
                ours.max_wait = reference.max_wait = rng.choice([0.0, 0.05, 0.1, 0.3])
            assert ours.push(*packet, now) == reference.push(*packet, now)
            assert ours.next_sequence == reference.next_sequence
            assert ours.pending == reference.pending <= max_packets + 1
            assert ours.frames_skipped == reference.frames_skipped


def test_native_core_is_built(core: str) -> None:
    """bootstrap builds it (a machine without a C compiler runs the Python core)."""
    if core == "python":
        pytest.skip("the C core only")
    assert reassembly._native is not None


def test_c_core_table_grows_with_what_it_holds(core: str) -> None:
    """The C core's table starts small and doubles as packets wait (keyframes of hundreds of
    packets, held behind a lost first one, across the wrap, stalls by count); the same output as
    the Python core throughout. Its first allocation is a few KiB, not the 192 KiB that a table
    sized for ``max_packets`` = 1024 took from the start."""
    if core == "python" or reassembly._native is None:
        pytest.skip("the C core only")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = new_reorder(True, "H264", 0.1, 1024)
        assert tracemalloc.get_traced_memory()[0] - before < 8 * 1024
    finally:
        tracemalloc.stop()
    assert held.pending == 0
    rng = random.Random("grow")
    for _ in range(40):
        max_packets = rng.choice([300, 1024])
        ours = new_reorder(True, "H264", 0.1, max_packets)
        reference = PyReorder(True, "H264", 0.1, max_packets)
        seq, ts, now = rng.choice([65000, rng.randrange(65536)]), rng.randrange(2**32), 0.0
        for f in range(rng.randint(2, 5)):
            n = rng.randint(50, 900)
            frame = [
                (
                    (seq + i) & 0xFFFF,
                    ts & 0xFFFFFFFF,
                    i == n - 1,
                    b"\x65" + bytes([f, i & 0xFF]),
                    (b"\x00\x00\x00\x01\x65" if i == 0 else b"\x11") + bytes([f, i & 0xFF]),
                )
                for i in range(n)
            ]
            frame = frame[1:] + frame[:1] if rng.random() < 0.7 else frame  # first one late
            if rng.random() < 0.3:
                rng.shuffle(frame)
            frame = [p for p in frame if rng.random() > 0.01]
            for packet in frame:
                now += rng.choice([0.0, 0.0005])
                assert ours.push(*packet, now) == reference.push(*packet, now)
                assert ours.pending == reference.pending
            seq, ts = seq + n, ts + 3000
        assert ours.frames_skipped == reference.frames_skipped
        assert ours.next_sequence == reference.next_sequence
