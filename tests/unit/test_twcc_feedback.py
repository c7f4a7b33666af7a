"""Transport-cc feedback (relay.media.twcc_feedback) read back by an independent parser written
from the draft (draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1), on synthetic
arrival traces: in order, loss, reordering, duplicates, wrap, long gaps, pauses."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import pytest

from relay.media.twcc_feedback import TransportFeedbackGenerator


@dataclass
class Parsed:
    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    fb_count: int
    reference_us: int
    arrivals: dict[int, int | None]  # seq (16 bit) -> arrival in us (None: not received)


def parse(packet: bytes) -> Parsed:
    """A transport-cc feedback packet, strictly: header fields, chunks, deltas, padding."""
    assert len(packet) % 4 == 0
    first, pt, length = struct.unpack_from("!BBH", packet)
    assert first >> 6 == 2 and first & 0x1F == 15 and pt == 205
    assert (length + 1) * 4 == len(packet)
    end = len(packet)
    if first & 0x20:
        pad = packet[-1]
        assert 1 <= pad <= 3 and not any(packet[end - pad : end - 1])
        end -= pad
    sender, media, base, count, ref_fb = struct.unpack_from("!IIHHI", packet, 4)
    reference = ref_fb >> 8
    if reference & 0x800000:
        reference -= 1 << 24
    pos = 20
    symbols: list[int] = []
    while len(symbols) < count:
        (chunk,) = struct.unpack_from("!H", packet, pos)
        pos += 2
        if chunk & 0x8000 == 0:  # run length
            symbol, run = (chunk >> 13) & 3, chunk & 0x1FFF
            assert symbol != 3 and run > 0
            symbols += [symbol] * run
        elif chunk & 0x4000 == 0:  # 14 one-bit symbols
            symbols += [(chunk >> (13 - i)) & 1 for i in range(14)]
        else:  # 7 two-bit symbols
            symbols += [(chunk >> (12 - 2 * i)) & 3 for i in range(7)]
    symbols = symbols[:count]
    assert 3 not in symbols
    now = reference * 64_000
    arrivals: dict[int, int | None] = {}
    for i, symbol in enumerate(symbols):
        seq = (base + i) & 0xFFFF
        if symbol == 0:
            arrivals[seq] = None
            continue
        if symbol == 1:
            delta = packet[pos]
            pos += 1
        else:
            (delta,) = struct.unpack_from("!h", packet, pos)
            pos += 2
        now += delta * 250
        arrivals[seq] = now
    assert pos <= end and end - pos < 4, "only zero padding may follow the deltas"
    assert symbols and symbols[-1] != 0, "a feedback ends with a received packet"
    return Parsed(sender, media, base, ref_fb & 0xFF, reference * 64_000, arrivals)


def feed(
    gen: TransportFeedbackGenerator, trace: list[tuple[int, float]], every: float = 0.05
) -> list[Parsed]:
    """Record ``trace`` ((seq, arrival s), in arrival order), building feedback whenever due."""
    out: list[Parsed] = []
    for seq, at in trace:
        deadline = gen.next_deadline()
        if deadline is not None and at >= deadline:
            out += [parse(p) for p in gen.build(at)]
        if gen.record(seq, at, media_ssrc=0xABCD):
            out += [parse(p) for p in gen.build(at)]
    out += [parse(p) for p in gen.build(trace[-1][1] + every)]
    return out


def merged(parsed: list[Parsed]) -> dict[int, int | None]:
    """Per sequence number: its arrival if any feedback said it arrived, else None."""
    seen: dict[int, int | None] = {}
    for p in parsed:
        for seq, at in p.arrivals.items():
            if at is not None or seq not in seen:
                seen[seq] = at if at is not None else seen.get(seq)
    return seen


def us(t: float) -> int:
    return round(t * 1e6)


def assert_times(seen: dict[int, int | None], trace: list[tuple[int, float]]) -> None:
    for seq, at in trace:
        got = seen.get(seq & 0xFFFF)
        assert got is not None, f"seq {seq} not reported as received"
        assert abs(got - us(at)) <= 125, f"seq {seq}: {got} vs {us(at)}"


def test_in_order_trace_is_reported_once_with_250us_deltas() -> None:
    gen = TransportFeedbackGenerator(sender_ssrc=0x1234)
    trace = [(i, 10.0 + i * 0.0031) for i in range(500)]  # ~320 packets/s, 3.1 ms apart
    parsed = feed(gen, trace)
    assert all(p.sender_ssrc == 0x1234 and p.media_ssrc == 0xABCD for p in parsed)
    assert [p.fb_count for p in parsed] == list(range(len(parsed)))
    reported = [seq for p in parsed for seq in p.arrivals]
    assert reported == list(range(500)), "each number once, in order, nothing lost"
    assert_times(merged(parsed), trace)
    # one feedback per 50 ms of arrivals (or 100 packets): libwebrtc's receiver cadence
    assert 28 <= len(parsed) <= 36
    assert all(p.reference_us <= min(t for t in p.arrivals.values() if t) for p in parsed)


def test_losses_are_reported_as_not_received() -> None:
    rng = random.Random(7)
    trace = [(i, 1.0 + i * 0.002) for i in range(2000) if rng.random() > 0.05]
    lost = set(range(2000)) - {s for s, _ in trace}
    parsed = feed(TransportFeedbackGenerator(), trace)
    seen = merged(parsed)
    assert_times(seen, trace)
    assert {s for s, t in seen.items() if t is None} == lost - {s for s in lost if s > trace[-1][0]}


def test_reordered_packets_are_reported_received_with_their_own_arrival() -> None:
    rng = random.Random(3)
    base = [(i, 5.0 + i * 0.003) for i in range(1200)]
    trace = list(base)
    for i in range(0, len(trace) - 6, 9):  # swap pairs a few packets apart; arrivals stay sorted
        j = i + rng.randint(1, 5)
        (a, ta), (b, tb) = trace[i], trace[j]
        trace[i], trace[j] = (b, ta), (a, tb)
    parsed = feed(TransportFeedbackGenerator(interval=0.01), trace)
    seen = merged(parsed)
    assert_times(seen, trace)
    # a late packet whose number went out as "not received" is reported again, received
    assert any(at is None for p in parsed for at in p.arrivals.values())
    assert all(seen[s] is not None for s in range(1200))


def test_negative_and_large_deltas_use_the_two_byte_form() -> None:
    gen = TransportFeedbackGenerator()
    trace = [(0, 1.0), (2, 1.001), (1, 1.0012), (3, 1.2), (4, 1.2001)]  # 1 after 2; 199 ms gap
    for seq, at in trace:
        gen.record(seq, at)
    packets = gen.build(1.3)
    assert len(packets) == 1
    parsed = parse(packets[0])
    assert_times(parsed.arrivals, trace)


def test_sequence_numbers_wrap() -> None:
    trace = [((65500 + i) & 0xFFFF, 2.0 + i * 0.001) for i in range(100) if i != 50]
    parsed = feed(TransportFeedbackGenerator(), trace)
    seen = merged(parsed)
    assert_times(seen, trace)
    assert seen[(65500 + 50) & 0xFFFF] is None


def test_duplicates_keep_their_first_arrival() -> None:
    gen = TransportFeedbackGenerator()
    for seq, at in [(10, 1.0), (11, 1.001), (11, 1.004), (12, 1.002)]:
        gen.record(seq, at)
    parsed = parse(gen.build(1.1)[0])
    assert parsed.arrivals == {10: us(1.0), 11: us(1.001), 12: us(1.002)}
    assert gen.stats.duplicates == 1


def test_a_long_loss_run_is_one_run_length_chunk() -> None:
    gen = TransportFeedbackGenerator()
    gen.record(0, 1.0)
    gen.record(2000, 1.5)
    packets = gen.build(1.6)
    assert len(packets) == 1 and len(packets[0]) <= 32
    parsed = parse(packets[0])
    assert parsed.arrivals[0] == us(1.0) and parsed.arrivals[2000] == us(1.5)
    assert sum(at is None for at in parsed.arrivals.values()) == 1999


def test_a_jump_far_ahead_starts_reporting_over() -> None:
    """A sender jumping 20000 numbers at a time would cost a step per skipped number: beyond
    MAX_JUMP it is a restart, reported from the new number on."""
    import time

    gen = TransportFeedbackGenerator()
    started = time.process_time()
    for i in range(2000):
        gen.record((i * 20_000) & 0xFFFF, 1.0 + i / 1000)
        if i % 50 == 0:
            gen.build(1.0 + i / 1000)
    assert time.process_time() - started < 1.0 and gen.jumps > 1000
    gen.record(12, 5.0)
    gen.record(13, 5.001)
    packets = gen.build(5.1)
    assert packets and all(len(p) < 100 for p in packets)


def test_a_pause_longer_than_a_two_byte_delta_starts_a_new_feedback() -> None:
    gen = TransportFeedbackGenerator(history=30.0)
    trace = [(0, 1.0), (1, 1.01), (2, 20.0), (3, 20.01)]  # 19 s: beyond +-8.19 s
    for seq, at in trace:
        gen.record(seq, at)
    packets = gen.build(20.1)
    assert len(packets) == 2
    parsed = [parse(p) for p in packets]
    assert [p.base_seq for p in parsed] == [0, 2]
    assert_times(merged(parsed), trace)


def test_a_big_window_is_split_below_the_size_limit() -> None:
    gen = TransportFeedbackGenerator(max_pending=10_000, max_bytes=300)
    rng = random.Random(1)
    trace = [(i, 1.0 + i * 0.0005 + rng.random() * 0.05) for i in range(1500)]
    trace.sort(key=lambda x: x[1])
    for seq, at in trace:
        gen.record(seq, at)
    packets = gen.build(3.0)
    assert len(packets) > 3 and all(len(p) <= 300 for p in packets)
    seen = merged([parse(p) for p in packets])
    assert_times(seen, trace)


def test_packets_older_than_the_history_are_ignored() -> None:
    gen = TransportFeedbackGenerator(history=0.5)
    for i in range(100):
        gen.record(1000 + i, 1.0 + i * 0.01)
    gen.build(2.1)
    assert not gen.record(990, 2.2)  # behind everything kept, long reported: dropped
    assert gen.stats.too_old == 1
    assert gen.build(2.3) == []


def test_feedback_is_due_every_interval_or_after_max_pending() -> None:
    gen = TransportFeedbackGenerator(interval=0.05, max_pending=100)
    assert gen.next_deadline() is None
    gen.record(0, 1.0)
    assert gen.next_deadline() == 0.0  # the first one goes out at once
    gen.build(1.0)
    assert gen.next_deadline() is None
    assert not any(gen.record(i, 1.0 + i * 1e-4) for i in range(1, 100))
    assert gen.next_deadline() == pytest.approx(1.05)
    assert gen.record(100, 1.02)


def test_random_traces_round_trip() -> None:
    """Loss, reordering, duplicates and bursts together, against the parser."""
    for seed in range(20):
        rng = random.Random(seed)
        start = rng.randrange(65536)
        trace: list[tuple[int, float]] = []
        t = rng.uniform(0, 1000)
        for i in range(rng.randrange(50, 800)):
            t += rng.expovariate(400)
            if rng.random() < 0.03:
                continue  # lost
            seq = (start + i + (rng.randint(-3, 3) if rng.random() < 0.05 else 0)) & 0xFFFF
            trace.append((seq, t))
            if rng.random() < 0.01:
                trace.append((seq, t + 0.0001))
        first: dict[int, float] = {}
        for seq, at in trace:
            first.setdefault(seq, at)
        parsed = feed(TransportFeedbackGenerator(), trace)
        assert_times(merged(parsed), list(first.items()))


def rtp(extensions: bytes, profile: int = 0xBEDE, *, pt: int = 96, csrcs: int = 0) -> bytes:
    header = bytes([0x90 | csrcs, pt, 0, 1]) + bytes(8) + bytes(4 * csrcs)
    pad = -len(extensions) % 4
    body = extensions + bytes(pad)
    return header + struct.pack("!HH", profile, len(body) // 4) + body + b"payload"


def test_transport_sequence_number_is_read_from_the_clear_header() -> None:
    from relay.media.twcc_feedback import transport_sequence_number as tsn

    # one-byte form: mid (id 4, "0") then transport-cc (id 3, 0x1234)
    one = rtp(bytes([0x40, ord("0"), 0x31, 0x12, 0x34]))
    assert tsn(one, 3) == 0x1234
    assert tsn(one, 5) is None
    assert tsn(rtp(bytes([0x00, 0x31, 0xAB, 0xCD]), csrcs=2), 3) == 0xABCD  # padding, CSRCs
    two = rtp(bytes([4, 1, ord("0"), 3, 2, 0xFE, 0xDC]), profile=0x1000)
    assert tsn(two, 3) == 0xFEDC
    assert tsn(rtp(bytes([0x31, 0x12, 0x34]), pt=200 - 128), 3) is None  # RTCP (PT 200)
    assert tsn(one[:20], 3) is None  # cut short
    assert tsn(rtp(bytes([0xF0, 0x31, 0x12, 0x34])), 3) is None  # id 15 ends the list
