"""Just enough ISO-BMFF to cut LL-HLS parts from ffmpeg's fragmented MP4: split the byte stream
into top-level boxes, read track timescales from the init segment and each fragment's duration
and whether it starts on a sync sample. Pure functions, no I/O."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

SAMPLE_IS_NON_SYNC = 0x00010000


@dataclass(frozen=True, slots=True)
class Box:
    type: str
    data: bytes  # the whole box, header included


@dataclass(frozen=True, slots=True)
class TrackInfo:
    track_id: int
    handler: str  # "vide", "soun"
    timescale: int
    default_duration: int = 0
    default_flags: int = 0
    width: int = 0  # video: presentation size from tkhd
    height: int = 0


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    duration: float  # seconds (video track when there is one, else the longest track)
    start: float  # seconds, decode time of the fragment's first sample (video when present)
    independent: bool  # starts on a video sync sample (always True without video)


class BoxSplitter:
    """Incremental splitter: feed bytes in any chunks, get whole top-level boxes out."""

    def __init__(self, max_box: int = 64 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_box

    def feed(self, data: bytes) -> list[Box]:
        self._buf += data
        out: list[Box] = []
        while len(self._buf) >= 8:
            size, kind = struct.unpack_from(">I4s", self._buf)
            header = 8
            if size == 1:
                if len(self._buf) < 16:
                    break
                size = struct.unpack_from(">Q", self._buf, 8)[0]
                header = 16
            if size < header or size > self._max:
                raise ValueError(f"bad MP4 box size {size}")
            if len(self._buf) < size:
                break
            out.append(Box(kind.decode("latin-1"), bytes(self._buf[:size])))
            del self._buf[:size]
        return out


def iter_boxes(
    data: bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[str, int, int]]:
    """(type, payload offset, box end) of each box in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError("truncated MP4 box")
        yield kind.decode("latin-1"), pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: str) -> tuple[int, int] | None:
    for k, s, e in iter_boxes(data, start, end):
        if k == kind:
            return s, e
    return None


def parse_init(moov: bytes) -> dict[int, TrackInfo]:
    """Tracks of an init segment, from its ``moov`` box (header included)."""
    tracks: dict[int, TrackInfo] = {}
    defaults: dict[int, tuple[int, int]] = {}
    for kind, start, end in iter_boxes(moov, 8):
        if kind == "trak":
            track_id, handler, timescale, width, height = 0, "", 0, 0, 0
            tkhd = _child(moov, start, end, "tkhd")
            if tkhd is not None:
                version = moov[tkhd[0]]
                track_id = struct.unpack_from(">I", moov, tkhd[0] + (20 if version else 12))[0]
                size_at = tkhd[0] + (88 if version else 76)
                if size_at + 8 <= tkhd[1]:
                    width, height = (v >> 16 for v in struct.unpack_from(">II", moov, size_at))
            mdia = _child(moov, start, end, "mdia")
            if mdia is not None:
                mdhd = _child(moov, mdia[0], mdia[1], "mdhd")
                if mdhd is not None:
                    version = moov[mdhd[0]]
                    timescale = struct.unpack_from(">I", moov, mdhd[0] + (20 if version else 12))[0]
                hdlr = _child(moov, mdia[0], mdia[1], "hdlr")
                if hdlr is not None:
                    handler = moov[hdlr[0] + 8 : hdlr[0] + 12].decode("latin-1")
            tracks[track_id] = TrackInfo(track_id, handler, timescale, 0, 0, width, height)
        elif kind == "mvex":
            for k, s, _e in iter_boxes(moov, start, end):
                if k == "trex":
                    tid, _desc, dur, _size, flags = struct.unpack_from(">IIIII", moov, s + 4)
                    defaults[tid] = (dur, flags)
    for tid, (dur, flags) in defaults.items():
        info = tracks.get(tid)
        if info is not None:
            tracks[tid] = TrackInfo(
                tid, info.handler, info.timescale, dur, flags, info.width, info.height
            )
    return tracks


@dataclass(slots=True)
class _Traf:
    track_id: int = 0
    base_time: int = 0
    duration: int = 0
    first_flags: int | None = None


def _parse_traf(data: bytes, start: int, end: int, tracks: dict[int, TrackInfo]) -> _Traf:
    traf = _Traf()
    default_duration = 0
    default_flags: int | None = None
    for kind, s, _e in iter_boxes(data, start, end):
        if kind == "tfhd":
            flags = struct.unpack_from(">I", data, s)[0] & 0xFFFFFF
            traf.track_id = struct.unpack_from(">I", data, s + 4)[0]
            info = tracks.get(traf.track_id)
            if info is not None:
                default_duration, default_flags = info.default_duration, info.default_flags
            pos = s + 8
            if flags & 0x1:
                pos += 8  # base data offset
            if flags & 0x2:
                pos += 4  # sample description index
            if flags & 0x8:
                default_duration = struct.unpack_from(">I", data, pos)[0]
                pos += 4
            if flags & 0x10:
                pos += 4  # default sample size
            if flags & 0x20:
                default_flags = struct.unpack_from(">I", data, pos)[0]
        elif kind == "tfdt":
            version = data[s]
            fmt = ">Q" if version else ">I"
            traf.base_time = struct.unpack_from(fmt, data, s + 4)[0]
        elif kind == "trun":
            flags = struct.unpack_from(">I", data, s)[0] & 0xFFFFFF
            count = struct.unpack_from(">I", data, s + 4)[0]
            pos = s + 8
            if flags & 0x1:
                pos += 4  # data offset
            first_flags: int | None = None
            if flags & 0x4:
                first_flags = struct.unpack_from(">I", data, pos)[0]
                pos += 4
            for i in range(count):
                duration = default_duration
                sample_flags = default_flags
                if flags & 0x100:
                    duration = struct.unpack_from(">I", data, pos)[0]
                    pos += 4
                if flags & 0x200:
                    pos += 4
                if flags & 0x400:
                    sample_flags = struct.unpack_from(">I", data, pos)[0]
                    pos += 4
                if flags & 0x800:
                    pos += 4
                if i == 0 and traf.first_flags is None:
                    traf.first_flags = first_flags if first_flags is not None else sample_flags
                traf.duration += duration
    if traf.first_flags is None:
        traf.first_flags = default_flags
    return traf


def parse_fragment(moof: bytes, tracks: dict[int, TrackInfo]) -> FragmentInfo:
    """Duration, start and independence of one fragment, from its ``moof`` box."""
    trafs = [_parse_traf(moof, s, e, tracks) for k, s, e in iter_boxes(moof, 8) if k == "traf"]
    video = [t for t in trafs if tracks.get(t.track_id, TrackInfo(0, "", 0)).handler == "vide"]
    chosen = video or trafs
    if not chosen:
        return FragmentInfo(0.0, 0.0, True)

    def seconds(t: _Traf, value: int) -> float:
        info = tracks.get(t.track_id)
        return value / info.timescale if info is not None and info.timescale else 0.0

    duration = max(seconds(t, t.duration) for t in chosen)
    if duration <= 0:  # e.g. video muted: the fragment holds audio only
        duration = max(seconds(t, t.duration) for t in trafs)
    start = seconds(chosen[0], chosen[0].base_time)
    independent = True
    if any(t.handler == "vide" for t in tracks.values()):
        # a stream with video starts anew only at a video sync sample: a fragment without
        # video (audio ffmpeg held while the video stalled) cannot open a segment
        flags = video[0].first_flags if video and video[0].duration else None
        independent = flags is not None and not flags & SAMPLE_IS_NON_SYNC
    return FragmentInfo(duration, start, independent)


def track_durations(moof: bytes, tracks: dict[int, TrackInfo]) -> dict[int, int]:
    """Each track's duration in a fragment, in its own timescale."""
    return {
        t.track_id: t.duration
        for t in (_parse_traf(moof, s, e, tracks) for k, s, e in iter_boxes(moof, 8) if k == "traf")
    }


def retime_fragment(fragment: bytes, base_times: dict[int, int], sequence: int) -> bytes:
    """A copy of a fragment (``moof`` + ``mdat``) whose tracks start at ``base_times`` (tfdt,
    in each track's timescale) with ``sequence`` as its mfhd sequence number: one encoded
    fragment played again and again on a running timeline."""
    out = bytearray(fragment)
    kind, start, end = next(iter_boxes(fragment))
    if kind != "moof":
        raise ValueError("not a fragment")
    for k, s, e in iter_boxes(fragment, start, end):
        if k == "mfhd":
            struct.pack_into(">I", out, s + 4, sequence)
        elif k == "traf":
            track_id = 0
            for k2, s2, _e2 in iter_boxes(fragment, s, e):
                if k2 == "tfhd":
                    track_id = struct.unpack_from(">I", fragment, s2 + 4)[0]
                elif k2 == "tfdt":
                    base = base_times.get(track_id, 0)
                    if fragment[s2]:
                        struct.pack_into(">Q", out, s2 + 4, base)
                    elif base < 1 << 32:
                        struct.pack_into(">I", out, s2 + 4, base)
                    else:
                        raise ValueError("tfdt version 0 cannot hold that time")
    return bytes(out)
