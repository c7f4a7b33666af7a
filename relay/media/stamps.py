"""Machine-readable stamps drawn into luma: a frame counter and the wall-clock send time.

One row of 80 blocks across the top of the picture: 8 sync bits, a 24-bit frame counter, the
send time in milliseconds (40 bits) and an 8-bit checksum. Blocks are black or white, so the
stamp survives any sane encoder and a scale to a smaller rendition; glass-to-glass latency is the
receive time minus the stamped send time (same host clock).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SYNC = 0b10110010
BLOCKS = 80
_BLACK, _WHITE = 16, 235


@dataclass(frozen=True, slots=True)
class Stamp:
    counter: int
    sent_ms: int


def _bits(value: int, width: int) -> list[int]:
    return [(value >> (width - 1 - i)) & 1 for i in range(width)]


def _checksum(counter: int, sent_ms: int) -> int:
    raw = counter.to_bytes(3, "big") + sent_ms.to_bytes(5, "big")
    return sum(raw) & 0xFF


def stamp_bits(counter: int, sent_ms: int) -> list[int]:
    counter &= 0xFFFFFF
    sent_ms &= (1 << 40) - 1
    return (
        _bits(SYNC, 8)
        + _bits(counter, 24)
        + _bits(sent_ms, 40)
        + _bits(_checksum(counter, sent_ms), 8)
    )


def draw_stamp(luma: npt.NDArray[np.uint8], counter: int, sent_ms: int) -> None:
    """Draw the stamp into the top band of a luma plane, in place."""
    height, width = luma.shape
    block = width // BLOCKS
    band = max(block, 8)
    if block < 2 or height < band:
        raise ValueError("picture too small for a stamp")
    for i, bit in enumerate(stamp_bits(counter, sent_ms)):
        luma[:band, i * block : (i + 1) * block] = _WHITE if bit else _BLACK


def read_stamp(luma: npt.NDArray[np.uint8]) -> Stamp | None:
    """The stamp in a luma plane, or None when there is none (or it is corrupt)."""
    height, width = luma.shape
    block = width // BLOCKS
    band = max(block, 8)
    if block < 2 or height < band:
        return None
    xs = (np.arange(BLOCKS) * block + block // 2).astype(int)
    # the band's middle; then its top rows: a stamp drawn into a bigger picture and scaled down
    # (a 720p stamp in a 180p rendition) keeps a band of only ``block`` rows
    for y in dict.fromkeys((band // 2, max(1, block // 2))):
        found = _decode(luma[max(0, y - 1) : y + 2, :].mean(axis=0), xs)
        if found is not None:
            return found
    return None


def _decode(row: npt.NDArray[np.float64], xs: npt.NDArray[np.int_]) -> Stamp | None:
    bits = [1 if row[x] > 128 else 0 for x in xs]
    value = 0
    for b in bits:
        value = (value << 1) | b
    sync = value >> 72
    counter = (value >> 48) & 0xFFFFFF
    sent_ms = (value >> 8) & ((1 << 40) - 1)
    check = value & 0xFF
    if sync != SYNC or check != _checksum(counter, sent_ms):
        return None
    return Stamp(counter, sent_ms)


def wall_ms(now: float) -> int:
    """Milliseconds of a ``time.time()`` value, in the stamp's 40-bit range."""
    return int(now * 1000) & ((1 << 40) - 1)
