"""Audio redundancy for lossy viewers: Opus in RED (RFC 2198), sans I/O.

A lost Opus packet is 20 ms of sound a receiver has to conceal, and a retransmission comes a
round trip too late for an audio jitter buffer of 40-80 ms (Chromium sends no NACK for audio).
With RED each packet carries the previous ``distance`` packets' payloads too, as LiveKit sends
it to subscribers that offer ``red/48000/2`` (fmtp ``111/111``): one packet lost alone, or up to
``distance`` in a row, is rebuilt from the next one that arrives (libwebrtc's NetEq splits RED
into its blocks by timestamp and drops the copies it has). The cost is the bytes: an Opus
stream's payload goes ``1 + distance`` times, plus 4 bytes of block header per copy.

Wire format (RFC 2198 §3): the block headers, then the blocks' data in the same order. A
redundant block's header is 4 bytes, F=1 | block PT (7) | timestamp offset (14) | length (10);
the primary's is one byte, F=0 | PT. Redundant blocks come oldest first, the primary last.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from struct import Struct

MAX_OFFSET = (1 << 14) - 1
"""The largest timestamp offset a block header holds (341 ms at 48 kHz)."""
MAX_LENGTH = (1 << 10) - 1
"""The largest block a header can announce (bytes)."""
MAX_DISTANCE = 3
"""Redundant copies at most: libwebrtc's sender uses 1-2; more only adds bytes on random loss."""
ON_LOSS = 0.01
"""Loss (0..1) from which a viewer's audio carries copies; below ``OFF_LOSS`` they stop."""
OFF_LOSS = 0.005
RED_SHARE = 0.25
"""Share of the viewer's estimate the copies may take at most (retransmissions' rule)."""

_HEADER = Struct("!I")


@dataclass(frozen=True, slots=True)
class RedBlock:
    """One block of a RED payload: its payload type, how many clock ticks before the
    packet's own timestamp it belongs (0 for the primary), and its data."""

    payload_type: int
    offset: int
    data: bytes


def pack(primary_pt: int, primary: bytes, redundant: list[RedBlock]) -> bytes:
    """A RED payload: ``redundant`` (oldest first) then ``primary``. Blocks whose offset or
    length a header cannot hold must not be passed (``RedEncoder`` leaves them out)."""
    heads = bytearray()
    for block in redundant:
        if not 0 < block.offset <= MAX_OFFSET or len(block.data) > MAX_LENGTH:
            raise ValueError(f"RED block out of range: offset {block.offset}, {len(block.data)} B")
        heads += _HEADER.pack(
            0x80000000 | (block.payload_type & 0x7F) << 24 | block.offset << 10 | len(block.data)
        )
    heads.append(primary_pt & 0x7F)
    return bytes(heads) + b"".join(b.data for b in redundant) + primary


def parse(payload: bytes) -> list[RedBlock]:
    """The blocks of a RED payload in order (the primary last, offset 0); ValueError when the
    headers do not fit the payload."""
    headers: list[tuple[int, int, int]] = []
    pos = 0
    while True:
        if pos >= len(payload):
            raise ValueError("RED payload ends inside its block headers")
        if not payload[pos] & 0x80:
            headers.append((payload[pos] & 0x7F, 0, -1))
            pos += 1
            break
        if pos + 4 > len(payload):
            raise ValueError("RED payload ends inside a block header")
        word = _HEADER.unpack_from(payload, pos)[0]
        headers.append(((word >> 24) & 0x7F, (word >> 10) & MAX_OFFSET, word & MAX_LENGTH))
        pos += 4
    blocks = []
    for pt, offset, length in headers:
        end = len(payload) if length < 0 else pos + length
        if end > len(payload):
            raise ValueError("RED block runs past the payload")
        blocks.append(RedBlock(pt, offset, payload[pos:end]))
        pos = end
    return blocks


def copies_for(
    distance: int, *, on: bool, loss: float, allowed_bps: float | None, copy_bps: float
) -> int:
    """Copies per packet for a viewer that loses ``loss`` (0..1): none on a clean link (below
    ``ON_LOSS``; once on, below ``OFF_LOSS``), else ``distance``, or as many copies of
    ``copy_bps`` (the audio's own rate) as fit in ``allowed_bps``, what its estimate leaves
    beside the media (None: no estimate). A link that loses because it is full gets none:
    copies would only add to what overflows it."""
    if loss < (OFF_LOSS if on else ON_LOSS):
        return 0
    if allowed_bps is None:
        return distance
    return max(0, min(distance, int(allowed_bps // max(copy_bps, 1.0))))


class RedEncoder:
    """One viewer's RED: the payloads it was last sent, the last ``copies`` of them (``distance``
    at most, the default) put ahead of each new one.

    ``encode`` takes each frame's payload and timestamp in send order (what this viewer gets:
    a frame its queue dropped is not repeated, the gap is only left wider). An earlier payload
    rides along while it is at most ``MAX_OFFSET`` ticks older and fits a block; a timestamp
    that goes backwards (a new timeline) forgets them."""

    def __init__(self, media_pt: int, distance: int) -> None:
        if not 0 < distance <= MAX_DISTANCE:
            raise ValueError(f"RED distance must be 1..{MAX_DISTANCE}, not {distance}")
        self.media_pt = media_pt
        self.distance = distance
        self.copies_now = distance  # how many of the earlier payloads go (0..distance)
        self._earlier: deque[tuple[int, bytes]] = deque(maxlen=distance)  # (timestamp, payload)
        self.payload_octets = 0  # the primaries' bytes (the audio's own rate)
        self.copies = 0  # redundant blocks sent
        self.octets = 0  # bytes the copies added (their data and 4-byte headers)

    def encode(self, payload: bytes, timestamp: int) -> bytes:
        """The RED payload for this frame (``pack``'s layout, built inline: this runs per
        audio packet and viewer)."""
        earlier = self._earlier
        pt = self.media_pt & 0x7F
        heads: list[bytes] = []
        datas: list[bytes] = []
        if self.copies_now and earlier:
            skip = len(earlier) - self.copies_now
            for ts, data in earlier:
                if skip > 0:
                    skip -= 1
                    continue
                offset = timestamp - ts
                if 0 < offset <= MAX_OFFSET and len(data) <= MAX_LENGTH:
                    heads.append(_HEADER.pack(0x80000000 | pt << 24 | offset << 10 | len(data)))
                    datas.append(data)
            if timestamp <= earlier[-1][0]:
                earlier.clear()
        earlier.append((timestamp, payload))
        self.payload_octets += len(payload)
        if not heads:
            return bytes((pt,)) + payload
        self.copies += len(heads)
        out = b"".join(heads) + bytes((pt,)) + b"".join(datas) + payload
        self.octets += len(out) - len(payload) - 1
        return out
