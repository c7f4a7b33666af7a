"""The mixer's settings as plain values (no numpy, no PyAV): the room and the stage table name
them without importing the mixer, which loads only when a room first mixes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AudioControl:
    """An operator's setting for one anchor in the mix."""

    gain: float = 1.0  # linear; 0..4
    muted: bool = False


@dataclass(frozen=True, slots=True)
class RenditionSpec:
    name: str
    width: int
    height: int
    video_bitrate: int  # bit/s
