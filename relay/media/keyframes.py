"""Keyframe detection on depayloaded bitstreams: viewers may only start on one."""

from __future__ import annotations

H264_IDR = 5
H264_SPS = 7


def h264_nal_types(data: bytes) -> list[int]:
    """NAL unit types of an Annex-B access unit (start codes of 3 or 4 bytes)."""
    types: list[int] = []
    i = data.find(b"\x00\x00\x01")
    while i != -1 and i + 3 < len(data):
        types.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return types


def is_keyframe(codec: str, data: bytes) -> bool:
    """True when a decoder can start at this frame."""
    name = codec.upper()
    if not data:
        return False
    if name == "H264":
        return H264_IDR in h264_nal_types(data)
    if name == "VP8":
        # RFC 6386 section 9.1: bit 0 of the frame tag is 0 for a key frame.
        return data[0] & 0x01 == 0
    return True  # audio: every frame is decodable on its own
