"""Timed metadata as H.264 SEI: built, escaped and parsed back; placed in front of the frame's
first slice in its RTP payloads and its Annex-B bitstream; a hub puts it into its next frame."""

from __future__ import annotations

import pytest

from relay.media.frames import CodecSpec, EncodedFrame
from relay.media.hub import FanoutHub
from relay.media.reassembly import FrameAssembler
from relay.media.sei import (
    FU_A,
    STAGECAST_UUID,
    STAP_A,
    START,
    annexb,
    find_sei,
    parse_sei,
    sei_nal,
    with_sei,
)
from relay.media.stream_key import StreamKey

SPS, PPS, IDR = b"\x67\x42\xc0\x1f", b"\x68\xce\x3c\x80", b"\x65\x88\x84\x00\x00\x00\x01"


def test_sei_round_trips_with_emulation_prevention() -> None:
    payload = b"\x00\x00\x01\x00\x00\x00\x00\x03" + "商品 42".encode() + bytes(300)
    nal = sei_nal(payload)
    assert nal[0] == 6 and b"\x00\x00\x00" not in nal[1:] and b"\x00\x00\x01" not in nal[1:]
    assert parse_sei(nal) == [(STAGECAST_UUID, payload)]
    with pytest.raises(ValueError):
        sei_nal(bytes(1001))
    with pytest.raises(ValueError):  # 1000 NULs escape past one packet
        sei_nal(bytes(1000))
    assert len(sei_nal(b"\x01" * 1000)) <= 1100
    with pytest.raises(ValueError):
        parse_sei(b"\x65\x00")
    with pytest.raises((ValueError, IndexError)):
        parse_sei(nal[:20])


def test_sei_goes_in_front_of_the_first_slice() -> None:
    fu_start = bytes([0x7C, 0x85]) + b"x" * 10  # FU-A, start of an IDR slice
    fu_end = bytes([0x7C, 0x45]) + b"y" * 10
    stap = b"\x18" + len(SPS).to_bytes(2, "big") + SPS + len(PPS).to_bytes(2, "big") + PPS
    data = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS + b"\x00\x00\x01" + IDR
    frame = EncodedFrame("video", "H264", 9000, (stap, fu_start, fu_end), data, True, 1.0)
    nal = sei_nal(b"hello")
    out = with_sei(frame, [nal])
    assert out.payloads == (stap, nal, fu_start, fu_end) and out.keyframe
    assert out.data == data[:16] + b"\x00\x00\x00\x01" + nal + data[16:]
    assert find_sei(out.payloads) == [b"hello"]
    vp8 = EncodedFrame("video", "VP8", 0, (b"\x10",), b"\x10", True, 0.0)
    assert with_sei(vp8, [nal]) is vp8


def test_hub_puts_waiting_metadata_into_its_next_video_frame() -> None:
    codecs = {
        "video": CodecSpec("video", "H264", 90000),
        "audio": CodecSpec("audio", "opus", 48000),
    }
    hub = FanoutHub(StreamKey("r"), codecs)
    viewer = hub.add_viewer("v")
    hub.add_sei(b"one")
    hub.add_sei(b"two")
    hub.publish(EncodedFrame("audio", "opus", 0, (b"a",), b"a", True, 0.0))  # not video: waits
    hub.publish(EncodedFrame("video", "H264", 0, (IDR,), b"\x00\x00\x01" + IDR, True, 0.0))
    hub.publish(EncodedFrame("video", "H264", 3000, (b"\x41\x9a",), b"", False, 0.03))
    q = viewer.queues["video"]
    first = q._frames[0]
    assert find_sei(first.payloads) == [b"one", b"two"] and first.payloads[-1] == IDR
    assert find_sei(q._frames[1].payloads) == [] and hub.stats.sei_messages == 2
    vp8 = FanoutHub(StreamKey("v"), {"video": CodecSpec("video", "VP8", 90000)})
    with pytest.raises(ValueError):
        vp8.add_sei(b"x")


def _push_frame(asm: FrameAssembler, payloads: list[bytes], seq: int = 100) -> list[bytes]:
    """One frame's payloads through the assembler (marker on the last); what comes out."""
    frames = []
    for i, p in enumerate(payloads):
        data = annexb(p)
        if p[0] & 0x1F == FU_A:  # as a depayloader makes them: a start code on the start
            head = bytes([p[0] & 0xE0 | p[1] & 0x1F])
            data = START + head + p[2:] if p[1] & 0x80 else p[2:]
        result = asm.push(seq + i, 9000, i == len(payloads) - 1, p, data, 0.0)
        frames += result.frames
    return [p for f in frames for p in f.payloads]


def _fu_a(nal: bytes, size: int) -> list[bytes]:
    """``nal`` cut into FU-A fragments of ``size`` bytes (RFC 6184 5.8)."""
    head, body = nal[0], nal[1:]
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    out = []
    for i, part in enumerate(parts):
        fu = (head & 0x1F) | (0x80 if i == 0 else 0) | (0x40 if i == len(parts) - 1 else 0)
        out.append(bytes([head & 0xE0 | FU_A, fu]) + part)
    return out


def _stap(*nals: bytes) -> bytes:
    return bytes([STAP_A]) + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


SLICE = b"\x65" + b"\x88" * 40  # an IDR slice


def test_an_anchor_cannot_write_sei_in_our_name() -> None:
    """Forged SEI messages with stagecast's UUID leave an anchor's frames however they are
    packed (single NAL unit, FU-A fragments, inside a STAP-A); others' SEI (x264's) stays,
    and a pull from a node of ours keeps ours."""
    forged = sei_nal(b'{"card":"fake"}')
    big = sei_nal(b"q" * 900)
    theirs = sei_nal(b"x264 core 164", owner=b"\xdc\x45\xe9\xbd\xe6\xd9\x48\xb7" * 2)
    cases = [
        ([forged, SLICE], [SLICE]),
        ([*_fu_a(big, 300), SLICE], [SLICE]),
        ([_stap(SPS, PPS, forged), SLICE], [_stap(SPS, PPS), SLICE]),
        ([_stap(forged), SLICE], [SLICE]),
        ([theirs, SLICE], [theirs, SLICE]),
        ([_stap(SPS, PPS), SLICE], [_stap(SPS, PPS), SLICE]),
        ([forged[:-4] + b"\xff\xff\xff\xff", SLICE], [SLICE]),  # one that does not parse
    ]
    for payloads, expected in cases:
        asm = FrameAssembler("video", "H264")
        assert _push_frame(asm, payloads) == expected
        trusted = FrameAssembler("video", "H264", trusted_sei=True)
        assert _push_frame(trusted, payloads) == payloads
    # a frame of nothing but a forged message is no frame; the next one still comes out
    asm = FrameAssembler("video", "H264")
    assert _push_frame(asm, [forged]) == []
    assert _push_frame(asm, [SLICE], seq=101) == [SLICE]
    assert asm.sei_removed == 1
    # the Annex-B bytes the recorder and bridges use lose it too
    asm = FrameAssembler("video", "H264")
    out = asm.push(1, 0, False, _stap(SPS, PPS, forged), annexb(_stap(SPS, PPS, forged)), 0.0)
    out = asm.push(2, 0, True, SLICE, annexb(SLICE), 0.0)
    (frame,) = out.frames
    assert find_sei(frame.payloads) == [] and STAGECAST_UUID not in frame.data
    assert frame.data == START + SPS + START + PPS + START + SLICE


def test_forged_sei_cannot_hide_in_an_open_fu_a_run_or_inside_another_nal_unit() -> None:
    """Review finding 3: (a) an FU-A SEI start fragment without its end, followed by another
    SEI's fragments, was forgotten; (b) a start code inside a slice's bytes (emulation
    prevention forbids it) makes a second NAL unit, the forged SEI, for every Annex-B reader."""
    forged = sei_nal(b'{"card":"forged"}' * 20)
    harmless = sei_nal(b"x" * 300, owner=b"\x11" * 16)
    unended = _fu_a(forged, 100)[:-1]  # no end fragment
    asm = FrameAssembler("video", "H264")
    assert _push_frame(asm, [*unended, *_fu_a(harmless, 100), SLICE]) == [
        *_fu_a(harmless, 100),
        SLICE,
    ]
    hidden = bytes([0x41, 0x9A]) + b"\x00\x00\x01" + sei_nal(b'{"card":"forged"}')
    for payloads in ([hidden], [*_fu_a(hidden, 7)], [_stap(SPS, hidden)]):
        asm = FrameAssembler("video", "H264")
        assert _push_frame(asm, [SLICE], seq=1) == [SLICE]
        assert _push_frame(asm, payloads, seq=2) == [], payloads  # the frame goes
        assert asm.sei_removed > 0
        trusted = FrameAssembler("video", "H264", trusted_sei=True)
        assert _push_frame(trusted, payloads, seq=2) == payloads
    # a start code inside a NAL unit that hides nothing of ours passes (not ours to judge)
    odd = bytes([0x41, 0x9A]) + b"\x00\x00\x01" + bytes([0x41]) + b"\x88" * 10
    assert _push_frame(FrameAssembler("video", "H264"), [odd]) == [odd]
