"""Recordings on disk, sans I/O: ids and the paths they may name, the free-space decisions,
the fragment index of a fragmented MP4 and the VOD playlist over it.

A recording's files are ``DIR/ID.mp4`` (or ``.webm``) and ``DIR/ID.json``; the id is made here
and checked against one pattern, so nothing from a request (room names, ids) ever becomes a
path component of its own.
"""

from __future__ import annotations

import math
import re
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from relay.errors import NotFound

from ..bridge.fmp4 import TrackInfo, parse_fragment, parse_init

ID_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}")
EXTENSIONS = (".mp4", ".webm")
MB = 1024 * 1024


def new_recording_id(now: float | None = None) -> str:
    """UTC start time (sorts by age) and 48 random bits (unguessable, unique)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(6)}"


def check_recording_id(recording_id: str) -> str:
    """The id if it is one this module makes; 404 otherwise (never a path)."""
    if not ID_PATTERN.fullmatch(recording_id):
        raise NotFound("no such recording")
    return recording_id


def recording_path(root: Path, recording_id: str, suffix: str) -> Path:
    """``root/ID+suffix``, refused unless it resolves inside ``root``."""
    if suffix not in (*EXTENSIONS, ".json"):
        raise ValueError(f"not a recording file suffix: {suffix!r}")
    path = root / (check_recording_id(recording_id) + suffix)
    if path.resolve().parent != root.resolve():
        raise NotFound("no such recording")
    return path


def container_for(video_codec: str | None) -> tuple[str, str]:
    """(muxer, suffix): H264 (and audio only) to fragmented MP4; VP8, which MP4 cannot carry
    in this FFmpeg, to WebM."""
    if video_codec is not None and video_codec.upper() == "VP8":
        return "webm", ".webm"
    return "mp4", ".mp4"


def mp4_options(fragment_duration: float) -> dict[str, str]:
    """Fragmented MP4: an init segment, then a fragment at every keyframe and at least every
    ``fragment_duration`` s, each complete on disk once written (a crash loses one at most)."""
    return {
        "movflags": "frag_keyframe+empty_moov+default_base_moof",
        "frag_duration": str(round(fragment_duration * 1_000_000)),
    }


# -- free space -------------------------------------------------------------------------------
DiskVerdict = Literal["ok", "refuse", "stop"]


@dataclass(frozen=True, slots=True)
class DiskGuard:
    """Starting needs ``min_free`` bytes free; a running recording stops below ``stop_free``."""

    min_free: int
    stop_free: int

    def may_start(self, free: int) -> bool:
        return free >= self.min_free

    def check(self, free: int) -> DiskVerdict:
        """While recording: "stop" once free space is below ``stop_free``."""
        return "stop" if free < self.stop_free else "ok"


# -- fragment index ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fragment:
    offset: int  # of its moof
    size: int  # moof + mdat
    duration: float
    start: float
    independent: bool


@dataclass(frozen=True, slots=True)
class Mp4Index:
    init_size: int  # ftyp + moov, from offset 0
    fragments: tuple[Fragment, ...]
    tracks: tuple[TrackInfo, ...]

    @property
    def duration(self) -> float:
        if not self.fragments:
            return 0.0
        last = self.fragments[-1]
        return max(0.0, last.start + last.duration - self.fragments[0].start)

    @property
    def end(self) -> int:
        """Bytes of the file the index covers (complete boxes only)."""
        if not self.fragments:
            return self.init_size
        last = self.fragments[-1]
        return last.offset + last.size


Reader = Callable[[int, int], bytes]  # (offset, size) -> bytes (shorter at the end of the file)


def index_mp4(read: Reader, size: int) -> Mp4Index:
    """Walk the top-level boxes of a fragmented MP4 of ``size`` bytes, reading only box headers,
    the ``moov`` and each ``moof``. A box cut short (the file still being written, or cut by a
    full disk) ends the walk."""
    pos = 0
    init_size = 0
    tracks: dict[int, TrackInfo] = {}
    fragments: list[Fragment] = []
    moof: tuple[int, bytes] | None = None
    while pos + 8 <= size:
        header = read(pos, 16)
        if len(header) < 8:
            break
        box_size, raw = struct.unpack_from(">I4s", header)
        kind = raw.decode("latin-1")
        if box_size == 1:
            if len(header) < 16:
                break
            box_size = struct.unpack_from(">Q", header, 8)[0]
        elif box_size == 0:
            box_size = size - pos
        if box_size < 8 or pos + box_size > size:
            break
        if kind == "moov":
            tracks = parse_init(read(pos, box_size))
            init_size = pos + box_size
        elif kind == "moof":
            moof = (pos, read(pos, box_size))
        elif kind == "mdat" and moof is not None and tracks:
            info = parse_fragment(moof[1], tracks)
            fragments.append(
                Fragment(
                    moof[0], pos + box_size - moof[0], info.duration, info.start, info.independent
                )
            )
            moof = None
        pos += box_size
    return Mp4Index(init_size, tuple(fragments), tuple(tracks.values()))


# -- VOD playlist ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Segment:
    offset: int
    size: int
    duration: float


def segments_of(index: Mp4Index, target: float) -> list[Segment]:
    """Consecutive fragments grouped into segments that start on an independent fragment and
    last about ``target`` seconds (longer when keyframes are further apart)."""
    out: list[Segment] = []
    for frag in index.fragments:
        if out and not (frag.independent and out[-1].duration >= target):
            last = out[-1]
            out[-1] = Segment(last.offset, last.size + frag.size, last.duration + frag.duration)
        elif out or frag.independent:
            out.append(Segment(frag.offset, frag.size, frag.duration))
        # a leading fragment that cannot be decoded alone is left out
    return out


PART_NAME = re.compile(r"([0-9]{1,15})-([0-9]{1,10})\.m4s")
MAX_PART = 512 * MB


def part_name(offset: int, size: int) -> str:
    """A segment's URL name: its byte range of the recording's file."""
    return f"{offset}-{size}.m4s"


def parse_part_name(name: str) -> tuple[int, int] | None:
    """(offset, size) of a segment name, None if ``name`` is not one."""
    m = PART_NAME.fullmatch(name)
    if m is None:
        return None
    offset, size = int(m[1]), int(m[2])
    return (offset, size) if 0 < size <= MAX_PART else None


def vod_playlist(index: Mp4Index, target: float = 4.0, *, ended: bool = True) -> str:
    """An HLS playlist (RFC 8216) over a recording: every complete fragment is listed; a
    finished one is VOD and ends (ENDLIST), a growing one is an EVENT playlist (players
    reload it and find the fragments written since). Each segment (and the init segment) is
    named by its byte range of the one file (``OFFSET-SIZE.m4s``) rather than listed with
    EXT-X-BYTERANGE: ffmpeg's HLS reader reuses a keep-alive connection for the next byte
    range of the same URL without reading the rest of the previous answer, and stops there."""
    segments = segments_of(index, target)
    longest = max((s.duration for s in segments), default=target)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest))}",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{part_name(0, index.init_size)}"',
    ]
    for seg in segments:
        lines += [f"#EXTINF:{seg.duration:.3f},", part_name(seg.offset, seg.size)]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


# -- a file that can be cut back to its last whole box -------------------------------------------
class BoxBoundary:
    """Follows the top-level boxes of a stream of writes: ``safe`` is the end of the last
    complete box that is not a ``moof`` waiting for its ``mdat`` (where a cut file still plays)."""

    def __init__(self) -> None:
        self.written = 0
        self.safe = 0
        self._box_end = 0  # end of the box being written
        self._box_kind = ""
        self._header = bytearray()

    def feed(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            if self.written < self._box_end:
                take = min(n - pos, self._box_end - self.written)
                self.written += take
                pos += take
                if self.written == self._box_end and self._box_kind != "moof":
                    self.safe = self._box_end
                continue
            need = 8 - len(self._header)
            chunk = data[pos : pos + need]
            self._header += chunk
            pos += len(chunk)
            self.written += len(chunk)
            if len(self._header) == 8:
                size, raw = struct.unpack(">I4s", bytes(self._header))
                start = self.written - 8
                self._box_kind = raw.decode("latin-1")
                self._box_end = start + size if size >= 8 else 1 << 62  # 64-bit sizes: unknown
                self._header.clear()
