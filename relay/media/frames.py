"""Encoded media values passed from an ingest to the hub and on to every viewer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MediaKind = Literal["audio", "video"]


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """What a stream's track carries, so viewers negotiate exactly that codec."""

    kind: MediaKind
    name: str  # "H264", "VP8", "opus" (aiortc's spelling of the subtype)
    clock_rate: int
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One access unit as received, ready to be sent to any number of viewers.

    ``payloads`` are the RTP payloads exactly as the anchor packetised them, so forwarding costs no
    re-packetisation; ``data`` is the depayloaded bitstream (Annex-B for H264) for bridges and
    mixers.
    """

    kind: MediaKind
    codec: str
    timestamp: int  # unwrapped RTP timestamp in the codec's clock rate
    payloads: tuple[bytes, ...]
    data: bytes
    keyframe: bool
    received_at: float = field(compare=False)  # monotonic seconds when the last packet arrived
    size: int = field(init=False, compare=False)  # payload bytes, summed once (not per viewer)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", sum(map(len, self.payloads)))
