"""relay/rtc/_rtp_reader.c against its Python reference (pylibsrtp's unprotect + aiortc's
RtpPacket.parse): the same packets out of the same SRTP traces (loss, reorder, duplicates,
padding, CSRCs, one- and two-byte header extensions, forged and garbage datagrams), and the same
verdict on malformed clear-text packets."""

from __future__ import annotations

import os
import random
import struct
from typing import Any

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from relay.rtc import rtp_reader
from relay.rtc.rtp_reader import PyRtpReader, RtpReader, new_rtp_reader

pytestmark = pytest.mark.skipif(not rtp_reader.NATIVE, reason="the C reader is not built")

URIS = {
    1: "urn:ietf:params:rtp-hdrext:sdes:mid",
    2: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    3: "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    4: "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    5: "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    6: "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    7: "urn:ietf:params:rtp-hdrext:toffset",
}


def extensions_map(ids: dict[int, str] = URIS) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in ids.items()]
        )
    )
    return m


def summary(packet: RtpPacket | None) -> Any:
    if packet is None:
        return None
    return (type(packet), vars(packet) | {"extensions": vars(packet.extensions)})


def one_byte(items: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in items)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def two_byte(items: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes([i, len(v)]) + v for i, v in items)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", 0x1000, len(body) // 4) + body


def rtp(
    seq: int,
    *,
    ext: bytes = b"",
    csrc: tuple[int, ...] = (),
    pad: int = 0,
    payload: bytes = b"\x7c\x85abc",
    marker: bool = False,
    pt: int = 96,
    ssrc: int = 0x1234ABCD,
    ts: int = 90000,
) -> bytes:
    first = 0x80 | (0x20 if pad else 0) | (0x10 if ext else 0) | len(csrc)
    head = struct.pack("!BBHLL", first, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts, ssrc)
    head += b"".join(struct.pack("!L", c) for c in csrc)
    tail = (b"\x00" * (pad - 1) + bytes([pad])) if pad else b""
    return head + ext + payload + tail


def extensions_of(rng: random.Random, seq: int) -> bytes:
    items = [
        (1, b"0"),
        (2, rng.randbytes(3)),
        (3, struct.pack("!H", seq & 0xFFFF)),
        (4, rng.choice([b"h", b"q", b"lo"])),
        (6, bytes([rng.randrange(256)])),
        (7, rng.randbytes(3)),
        (9, b"unknown"),
    ]
    chosen = rng.sample(items, rng.randrange(len(items) + 1))
    if rng.random() < 0.3:
        chosen.append((5, b"h"))
    return (two_byte if rng.random() < 0.2 else one_byte)(chosen) if chosen else b""


def sessions() -> tuple[Session, Session, Session]:
    key = os.urandom(30)

    def rx() -> Session:
        policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        return Session(policy)

    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)), rx(), rx()


def readers(rx_c: Session, rx_py: Session, m: HeaderExtensionsMap) -> tuple[RtpReader, RtpReader]:
    native = new_rtp_reader(rx_c, m)
    assert not isinstance(native, PyRtpReader)
    python = new_rtp_reader(rx_py, m, native=False)
    assert isinstance(python, PyRtpReader)
    return native, python


@pytest.mark.parametrize("seed", range(4))
def test_the_same_packets_out_of_an_impaired_srtp_trace(seed: int) -> None:
    rng = random.Random(seed)
    tx, rx_c, rx_py = sessions()
    native, python = readers(rx_c, rx_py, extensions_map())
    sent: list[bytes] = []
    for seq in range(65530, 65530 + 600):  # across the wrap
        if rng.random() < 0.05:
            continue  # lost
        packet = rtp(
            seq,
            ext=extensions_of(rng, seq),
            csrc=tuple(rng.randrange(1 << 32) for _ in range(rng.choice([0, 0, 0, 1, 3]))),
            pad=rng.choice([0, 0, 0, 1, 4, 200]),
            payload=rng.randbytes(rng.choice([0, 1, 2, 100, 1100])),
            marker=rng.random() < 0.2,
            pt=rng.choice([96, 97, 111]),
            ts=rng.randrange(1 << 32),
        )
        sent.append(tx.protect(packet))
    trace: list[bytes] = []
    for i, datagram in enumerate(sent):
        trace.append(datagram)
        roll = rng.random()
        if roll < 0.05:
            trace.append(datagram)  # duplicate: a replay, refused
        elif roll < 0.1 and i > 3:
            trace.append(sent[i - rng.randrange(1, 4)])  # late (already seen: replay)
        elif roll < 0.13:
            forged = bytearray(datagram)
            forged[rng.randrange(12, len(forged))] ^= 0x01
            trace.append(bytes(forged))  # tampered: fails authentication
        elif roll < 0.15:
            trace.append(rng.randbytes(rng.randrange(0, 1600)))  # garbage
    # reorder in small windows
    for i in range(0, len(trace) - 3, 7):
        if rng.random() < 0.3:
            trace[i], trace[i + 2] = trace[i + 2], trace[i]
    out_c = [summary(native.read(d)) for d in trace]
    out_py = [summary(python.read(d)) for d in trace]
    assert out_c == out_py
    delivered = [p for p in out_c if p is not None]
    assert len(delivered) >= 500  # the trace was mostly authentic
    assert any(p[1]["padding_size"] for p in delivered)
    assert any(p[1]["csrc"] for p in delivered)
    assert any(p[1]["extensions"]["rtp_stream_id"] for p in delivered)
    assert len(delivered) < len(trace)  # and duplicates, forgeries and garbage were refused


MALFORMED = [
    b"",
    b"\x80" * 11,
    b"\x40" + b"\x00" * 15,  # version 1
    rtp(1, csrc=(1, 2))[:16],  # truncated CSRC list
    rtp(1)[:12],  # header only: an empty payload (well-formed)
    bytes([0x90]) + rtp(1)[1:12] + b"\xbe\xde",  # truncated extension header
    bytes([0x90]) + rtp(1)[1:12] + b"\xbe\xde\x00\x04\x10",  # extension longer than the packet
    rtp(1, ext=one_byte([(1, b"\xff\xfe")])),  # mid not UTF-8
    rtp(1, ext=one_byte([(4, b"\xe9")])),  # rid not ASCII
    rtp(1, ext=one_byte([(2, b"\x01\x02")])),  # abs-send-time of 2 bytes
    rtp(1, ext=one_byte([(3, b"\x01\x02\x03")])),  # transport-cc of 3 bytes
    rtp(1, ext=one_byte([(6, b"\x01\x02")])),  # audio level of 2 bytes
    rtp(1, ext=one_byte([(7, b"\x01")])),  # toffset of 1 byte
    rtp(1, ext=struct.pack("!HH", 0xBEDE, 1) + b"\x2f\x00\x00\x00"),  # value runs past the end
    rtp(1, ext=struct.pack("!HH", 0x1000, 1) + b"\x00\x00\x00\x03"),  # two-byte: truncated
    rtp(1, ext=struct.pack("!HH", 0x1000, 1) + b"\x01\x09\x00\x00"),  # two-byte: value too long
    rtp(1, ext=struct.pack("!HH", 0xABCD, 1) + b"\x12\x34\x56\x78"),  # unknown profile: ignored
    rtp(1, ext=struct.pack("!HH", 0xBEDE, 1) + b"\x05abc"),  # id 0 with a value: ignored
    rtp(1, ext=one_byte([(7, b"\xff\xff\xfe")])),  # a negative toffset
    bytes([0xA0]) + rtp(1)[1:12] + b"\x00",  # padding length 0
    bytes([0xA0]) + rtp(1)[1:12] + b"ab\x09",  # padding longer than the payload
    bytes([0xA0]) + rtp(1)[1:12] + b"ab\x03",  # padding that is the whole payload
]


@pytest.mark.parametrize("data", MALFORMED)
def test_the_same_verdict_on_clear_text_packets(data: bytes) -> None:
    _, rx_c, rx_py = sessions()
    native, python = readers(rx_c, rx_py, extensions_map())
    assert summary(native.parse(data)) == summary(python.parse(data))


def test_extension_ids_are_read_when_the_packet_is() -> None:
    """aiortc configures the map when receivers register, after the reader exists."""
    tx, rx_c, rx_py = sessions()
    m = extensions_map({})
    native, _ = readers(rx_c, rx_py, m)
    first = native.read(tx.protect(rtp(7, ext=one_byte([(3, b"\x00\x2a")]))))
    assert first is not None and first.extensions.transport_sequence_number is None
    m.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(3, URIS[3])]))
    later = native.read(tx.protect(rtp(8, ext=one_byte([(3, b"\x00\x2a")]))))
    assert later is not None and later.extensions.transport_sequence_number == 42


def test_a_packet_longer_than_the_session_buffer_is_dropped_by_both() -> None:
    tx, rx_c, rx_py = sessions()
    native, python = readers(rx_c, rx_py, extensions_map())
    datagram = tx.protect(rtp(1, payload=b"x" * 1300)) + b"y" * 200
    assert len(datagram) > 1500
    assert native.read(datagram) is None
    assert python.read(datagram) is None


def depayloaded(unpack: Any, payload: bytes) -> Any:
    try:
        return unpack(payload)
    except ValueError as exc:
        return ("error", str(exc))


H264_PAYLOADS = [
    b"",
    b"\x65",
    b"\x65\x88\x84",  # a single NAL unit
    b"\x7c\x85" + bytes(range(50)),  # FU-A start (IDR)
    b"\x7c\x05xyz",  # FU-A middle
    b"\x7c\x45",  # FU-A end, empty
    b"\x5c\x81z",  # FU-A start with other NRI bits
    b"\x18\x00\x02\x67\x42\x00\x03\x68\xce\x3c",  # STAP-A: SPS + PPS
    b"\x18\x00\x00",  # STAP-A with an empty NAL unit
    b"\x18\x00",  # STAP-A: truncated length
    b"\x18\x00\x05ab",  # STAP-A: truncated data
    b"\x18",  # STAP-A: nothing
    b"\x00\x01",  # type 0
    b"\x19\x00\x01",  # STAP-B
    b"\x1d\x80\x01",  # FU-B
    b"\x1f\x00",  # type 31
]
VP8_PAYLOADS = [
    b"",
    b"\x10",
    b"\x10\x9d\x01\x2a",
    b"\x90",  # X without its byte
    b"\x90\x80",  # I without the picture id
    b"\x90\x80\x81",  # long picture id truncated
    b"\x90\x80\x81\x02abc",
    b"\x90\x80\x05abc",
    b"\x90\x40",  # L truncated
    b"\x90\x40\x07abc",
    b"\x90\x20",  # T truncated
    b"\x90\x10\x01abc",
    b"\x90\xf0\x81\x02\x03\x04abc",
    b"\x90\xf0\x81\x02\x03",  # T/K truncated
    b"\x80\x00abc",
]


@pytest.mark.parametrize("codec", ["H264", "VP8", "opus"])
def test_the_same_bitstream_out_of_each_payload(codec: str) -> None:
    native = rtp_reader.depayloader(codec)
    python = rtp_reader.depayloader(codec, native=False)
    if codec == "opus":
        assert native is None and python is None
        return
    assert native is not None and python is not None and native is not python
    rng = random.Random(codec)
    crafted = H264_PAYLOADS if codec == "H264" else VP8_PAYLOADS
    payloads = crafted + [rng.randbytes(rng.randrange(0, 40)) for _ in range(3000)]
    out_c = [depayloaded(native, p) for p in payloads]
    out_py = [depayloaded(python, p) for p in payloads]
    assert out_c == out_py
    assert any(isinstance(o, bytes) and o for o in out_c)
    assert any(isinstance(o, tuple) for o in out_c)


class _Clock:
    """Stands in for the ``time`` module aiortc's receiver statistics read ``time.time()``
    from, so that both implementations see the same arrival times."""

    def __init__(self) -> None:
        self.now = 1_765_000_000.0

    def time(self) -> float:
        return self.now


STATS_FIELDS = ("base_seq", "max_seq", "cycles", "packets_received", "jitter")


@pytest.mark.parametrize("seed", range(4))
def test_the_same_receiver_statistics(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc's StreamStatistics and the C one on the same packets and arrival times: loss,
    reordering and duplicates across the sequence wrap, timestamp jumps and wraps, restarts,
    jittery arrivals; every field after each packet, and the RR's fraction lost (which starts
    a new interval when read) every few packets."""
    from aiortc import rtcrtpreceiver
    from aiortc.rtcrtpreceiver import StreamStatistics

    clock = _Clock()
    monkeypatch.setattr(rtcrtpreceiver, "time", clock)
    rng = random.Random(seed)
    for clockrate in (90000, 48000):
        ours = rtp_reader.new_stream_statistics(clockrate)
        reference = StreamStatistics(clockrate)
        assert type(ours) is not StreamStatistics
        assert ours.base_seq is None and ours.max_seq is None
        seq, ts = rng.choice([65500, rng.randrange(65536)]), rng.randrange(2**32)
        for _ in range(3000):
            step = rng.random()
            if step < 0.05:
                seq += rng.randint(2, 40)  # a burst lost
            elif step < 0.1:
                seq -= rng.randint(1, 10)  # late, or a duplicate
            elif step < 0.11:
                seq = rng.randrange(65536)  # a restart
            else:
                seq += 1
            if rng.random() < 0.3:
                ts += rng.choice([3000, 960, -3000, 2**31])
            clock.now += rng.choice([0.0, 0.001, 0.0333, 0.2])
            packet = RtpPacket(sequence_number=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF)
            reference.add(packet)
            ours.add(packet, clock.now)
            assert [getattr(ours, f) for f in STATS_FIELDS] == [
                getattr(reference, f) for f in STATS_FIELDS
            ]
            assert (ours.packets_expected, ours.packets_lost) == (
                reference.packets_expected,
                reference.packets_lost,
            )
            if rng.random() < 0.05:
                assert ours.fraction_lost == reference.fraction_lost


def test_receiver_statistics_read_the_wall_clock() -> None:
    """Without ``now``: time.time(), as aiortc's (the jitter is in RTP clock units of it)."""
    import time

    from aiortc.rtcrtpreceiver import StreamStatistics

    ours = rtp_reader.new_stream_statistics(90000)
    reference = StreamStatistics(90000)
    for i in range(3):
        packet = RtpPacket(sequence_number=i, timestamp=i * 90000)  # one second apart
        ours.add(packet)
        reference.add(packet)
        if i < 2:
            time.sleep(0.05)
    # arrivals ~0.05 s apart against timestamps 1 s apart: thousands of 90 kHz units; the two
    # read the clock microseconds apart (more if the thread is preempted in between)
    assert ours.jitter > 0
    assert abs(ours.jitter - reference.jitter) < 0.02 * 90000
