"""Timed metadata as H.264 SEI: built, escaped and parsed back; placed in front of the frame's
first slice in its RTP payloads and its Annex-B bitstream; a hub puts it into its next frame."""

from __future__ import annotations

import pytest

from relay.media.frames import CodecSpec, EncodedFrame
from relay.media.hub import FanoutHub
from relay.media.sei import STAGECAST_UUID, find_sei, parse_sei, sei_nal, with_sei
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
