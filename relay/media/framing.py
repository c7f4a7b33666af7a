"""RFC 4571 framing (sans-I/O): datagrams over a byte stream, each behind a 2-byte length.

ICE-TCP (RFC 6544) carries STUN, DTLS and SRTP this way. The decoder never holds more than one
unfinished frame (at most 2 + ``max_frame`` bytes): a peer announcing more than it may send is
refused at once, not after it has sent it.
"""

from __future__ import annotations

MAX_FRAME = 0xFFFF  # what a 2-byte length can say
HEADER = 2


class FramingError(ValueError):
    """The stream announced a frame larger than this decoder takes."""


def encode_frame(data: bytes | bytearray | memoryview) -> bytes:
    n = len(data)
    if n > MAX_FRAME:
        raise FramingError(f"a {n}-byte datagram does not fit an RFC 4571 frame")
    return n.to_bytes(2, "big") + bytes(data)


class FrameDecoder:
    """Feed it the stream's bytes as they come; it returns the complete frames in them."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The frames ``data`` completes, in order; ``FramingError`` for a length above
        ``max_frame`` (the stream is then unusable: nothing after it can be trusted)."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        at = 0
        end = len(buf)
        while end - at >= HEADER:
            n = (buf[at] << 8) | buf[at + 1]
            if n > self.max_frame:
                buf.clear()
                raise FramingError(f"frame of {n} bytes announced (at most {self.max_frame})")
            if end - at - HEADER < n:
                break
            frames.append(bytes(buf[at + HEADER : at + HEADER + n]))
            at += HEADER + n
        if at:
            del buf[:at]
        return frames
