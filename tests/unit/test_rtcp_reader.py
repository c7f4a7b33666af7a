"""The shared port's shortcut for a viewer's feedback datagram (relay/rtc/rtcp_reader.py): the C
reader against its Python reference (pylibsrtp's unprotect_rtcp + split_feedback) on the same
SRTCP traces, and the shortcut (split, the FCIs to the estimator, the rest through
``take_rtcp``) against the general path (``take_rtcp`` on the whole datagram): the same
estimator state and the same bytes for aiortc, on good, malformed, truncated and lying feedback."""

from __future__ import annotations

import os
import random
import struct
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from relay.media import estimator as estimator_module
from relay.media.cc_feedback import build_remb, build_transport_feedback, split_feedback
from relay.media.estimator import BandwidthEstimator, take_rtcp
from relay.rtc import rtcp_reader
from relay.rtc.rtcp_reader import PyRtcpReader, RtcpReader, new_rtcp_reader
from tests.unit.test_twcc_native import state

pytestmark = pytest.mark.skipif(not rtcp_reader.NATIVE, reason="the C reader is not built")
_native: Any = pytest.importorskip("relay.rtc._rtcp_reader")


def rr(ssrc: int = 0x11, blocks: int = 1) -> bytes:
    body = struct.pack("!I", ssrc) + bytes(range(24)) * blocks
    return struct.pack("!BBH", 0x80 | blocks, 201, len(body) // 4) + body


def sdes() -> bytes:
    body = struct.pack("!I", 0x11) + b"\x01\x04abcd\x00\x00"
    return struct.pack("!BBH", 0x81, 202, len(body) // 4) + body


def nack() -> bytes:
    body = struct.pack("!IIHH", 0x11, 0x22, 100, 0b101)
    return struct.pack("!BBH", 0x81, 205, len(body) // 4) + body


def pli() -> bytes:
    return struct.pack("!BBHII", 0x81, 206, 2, 0x11, 0x22)


def padded(packet: bytes, pad: int) -> bytes:
    """``packet`` with ``pad`` bytes of RTCP padding (a multiple of 4)."""
    body = packet[4:] + b"\x00" * (pad - 1) + bytes([pad])
    return bytes([packet[0] | 0x20, packet[1]]) + struct.pack("!H", len(body) // 4) + body


def twcc(rng: random.Random, base: int | None = None) -> bytes:
    n = rng.randrange(1, 120)
    arrivals = [None if rng.random() < 0.1 else 0.05 + i * 0.002 for i in range(n)]
    start = rng.randrange(65536) if base is None else base
    return build_transport_feedback(start, arrivals)


def lying_twcc(rng: random.Random) -> bytes:
    """Well-formed headers around FCIs that lie: absurd deltas, a status count far beyond what
    follows, wrap-arounds, a run-length chunk of 8191 lost packets."""
    head = struct.pack("!II", 0x11, 0x22)
    kind = rng.randrange(4)
    if kind == 0:  # large deltas of +-8 s
        fci = struct.pack("!HHI", 65530, 7, 0x7FFFFF01) + struct.pack("!H", 0xC000 | 0x2AAA)
        fci += struct.pack("!h", 32767) * 7
    elif kind == 1:  # 65535 statuses announced, one chunk given
        fci = struct.pack("!HHI", rng.randrange(65536), 0xFFFF, 0) + b"\x20\x05\x01" + b"\x00"
    elif kind == 2:  # a run of 8191 "not received"
        fci = struct.pack("!HHI", 65000, 8191, 5) + struct.pack("!H", 0x1FFF)
    else:  # random bytes behind the header
        fci = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 40)))
    fci += b"\x00" * (-len(fci) % 4)
    body = head + fci
    return struct.pack("!BBH", 0x8F, 205, len(body) // 4) + body


def compounds(rng: random.Random, count: int) -> list[bytes]:
    """Lone feedback (Chromium's), compounds of every kind, padding good and bad, truncations,
    mutations and garbage."""
    out = []
    for _ in range(count):
        r = rng.random()
        if r < 0.35:
            out.append(twcc(rng))
            continue
        parts = [
            rng.choice(
                (
                    rr,
                    sdes,
                    nack,
                    pli,
                    lambda: build_remb(rng.randrange(1 << 24), (0x22,)),
                    lambda: twcc(rng),
                    lambda: padded(twcc(rng), 4 * rng.randrange(1, 4)),
                    lambda: lying_twcc(rng),
                )
            )()
            for _ in range(rng.randrange(1, 5))
        ]
        data = bytearray(b"".join(parts))
        if r > 0.8:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        if r > 0.9:
            data = data[: rng.randrange(len(data) + 1)]
        out.append(bytes(data))
    out += [b"", b"\x8f\xcd\x00", bytes(os.urandom(50)), padded(twcc(rng), 4)[:-1] + b"\x00"]
    return out


def test_the_c_split_matches_split_feedback() -> None:
    rng = random.Random(17)
    datagrams = compounds(rng, 5000)
    taken = 0
    for data in datagrams:
        assert _native.split(data) == split_feedback(data), data.hex()
        taken += bool(split_feedback(data)[0])
    assert 2000 < taken < len(datagrams)  # both outcomes well represented


def test_the_shortcut_leaves_the_estimator_and_aiortc_as_the_general_path_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(estimator_module, "FEEDBACK_RATE", 1e9)  # replayed faster than real time
    rng = random.Random(23)
    general = BandwidthEstimator()
    shortcut_c, shortcut_py = BandwidthEstimator(), BandwidthEstimator(native=False)
    now = 0.0
    seq = 0
    for i, data in enumerate(compounds(rng, 3000)):
        now += 0.02
        if i % 3 == 0:  # sends the feedback may be about
            sizes = [rng.choice((120, 1200, 300)) for _ in range(rng.randrange(1, 30))]
            for est in (general, shortcut_c, shortcut_py):
                assert est.record(sizes, now) == seq
            seq = (seq + len(sizes)) & 0xFFFF
        if i % 1000 == 999:
            now += 6.0  # past the history's age
        to_aiortc = take_rtcp(general, data, now, transport_cc=True)
        for est, split in ((shortcut_c, _native.split), (shortcut_py, split_feedback)):
            fcis, rest = split(data)
            for fci in fcis:
                est.on_transport_feedback(fci, now)
            assert (take_rtcp(est, rest, now, transport_cc=True) if rest else b"") == to_aiortc
    assert general.feedbacks > 500 and general.malformed > 50 and general.rembs > 50
    assert state(shortcut_c, now) == state(general, now)
    # the Python estimator (no C scan) ends in the same state too
    assert state(shortcut_py, now) == state(general, now)


def sessions() -> tuple[Session, Session, Session]:
    key = bytes(range(30))
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    a = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    b = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    return tx, a, b


@pytest.mark.parametrize("seed", range(4))
def test_the_same_verdict_and_split_out_of_an_impaired_srtcp_trace(seed: int) -> None:
    rng = random.Random(seed)
    tx, a, b = sessions()
    native: RtcpReader = new_rtcp_reader(a)
    python: RtcpReader = new_rtcp_reader(b, native=False)
    assert isinstance(python, PyRtcpReader) and not isinstance(native, PyRtcpReader)
    sent = [tx.protect_rtcp(d) for d in compounds(rng, 600) if len(d) >= 8]
    trace: list[bytes] = []
    for data in sent:
        r = rng.random()
        if r < 0.05:
            continue  # lost
        trace.append(data)
        if r > 0.95:  # a replay of something seen
            trace.append(rng.choice(sent))
        elif r > 0.9:  # forged: a byte of the ciphertext or the tag changed
            forged = bytearray(data)
            forged[rng.randrange(8, len(forged))] ^= 1 << rng.randrange(8)
            trace.append(bytes(forged))
        elif r > 0.88:
            trace.append(os.urandom(rng.randrange(1, 200)))
    rng.shuffle(trace[: len(trace) // 2])  # reordered within the replay window
    results = [(native.read(d), python.read(d)) for d in trace]
    assert all(x == y for x, y in results)
    assert sum(x is None for x, _ in results) > 20
    assert sum(x is not None and bool(x[0]) for x, _ in results) > 200


def test_a_datagram_longer_than_the_session_buffer_is_dropped_by_both() -> None:
    _, a, b = sessions()
    long = b"\x8f\xcd" + bytes(1600)
    assert new_rtcp_reader(a).read(long) is None
    assert new_rtcp_reader(b, native=False).read(long) is None
    with pytest.raises(TypeError):
        new_rtcp_reader(a).read(bytearray(20))  # type: ignore[arg-type]
