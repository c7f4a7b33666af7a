"""LL-HLS packaging: fMP4 fragments in, partial segments, segments and the media playlist out.

``LlHlsPackager`` holds no files and does no I/O: it returns the files to write and delete and
renders the playlist. A fragment that starts on a keyframe opens a new segment (so every part
before one is a segment's last part and segments are independent whenever the source obeys the
keyframe requests); a segment that would outgrow the target duration is cut at a part boundary.
The playlist is also a valid classic HLS playlist: players without LL-HLS use whole segments.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

PLAYLIST = "index.m3u8"


@dataclass(frozen=True, slots=True)
class WriteFile:
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class DeleteFile:
    name: str


Action = WriteFile | DeleteFile


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    duration: float
    independent: bool


@dataclass(eq=False)
class Segment:
    msn: int
    name: str
    init: str
    discontinuity: bool
    program_time: float | None  # wall-clock (epoch) seconds of its first sample
    parts: list[Part] = field(default_factory=list)
    duration: float = 0.0
    complete: bool = False
    chunks: list[bytes] = field(default_factory=list)


def target_duration_for(keyframe_interval: float) -> int:
    """EXT-X-TARGETDURATION for segments cut at keyframes requested this often."""
    return max(1, math.ceil(keyframe_interval - 1e-6))


def format_program_time(epoch: float) -> str:
    stamp = datetime.fromtimestamp(epoch, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class LlHlsPackager:
    def __init__(
        self,
        prefix: str,
        *,
        part_target: float,
        target_duration: int,
        window: int = 6,
        part_window: int = 3,
    ) -> None:
        self.prefix = prefix  # unguessable per bridge: file names are never reused
        self.part_target = part_target
        self.target_duration = target_duration
        self.window = window
        self.part_window = part_window
        self.segments: deque[Segment] = deque()
        self.next_msn = 0
        self.discontinuity_sequence = 0
        self.stream: str | None = None  # the stream started last (parts default to it)
        self._current: str | None = None  # the stream of the newest segment
        self._current_since = -math.inf  # program time at which it took over
        # a stream's part that starts less than this after the stream that took over from it
        # began is from before that: ffmpeg's held fragment (HlsOutput: its slate gap)
        self.resume_margin = part_target
        self._streams: set[str] = set()  # inits of streams not ended: never deleted
        self._inits = 0
        self._slates = 0
        self.last_complete_msn = -1
        self.parts_made = 0

    # -- input ---------------------------------------------------------------------------------
    def start_stream(self, init: bytes, *, slate: bool = False) -> list[Action]:
        """A new fMP4 stream (an ffmpeg run, or a slate while there is none): its init segment.
        Its first part opens a segment after a discontinuity; until then the playlist stays as
        it is (a closed last segment with nothing after it would let players assume that the
        next one continues it)."""
        kind = "slate" if slate else "init"
        n = self._slates if slate else self._inits
        name = f"{self.prefix}-{kind}{n}.mp4"
        if slate:
            self._slates += 1
        else:
            self._inits += 1
        self._streams.add(name)
        self.stream = name
        return [WriteFile(name, init)]

    def add_part(
        self,
        data: bytes,
        duration: float,
        independent: bool,
        program_time: float | None = None,
        *,
        stream: str | None = None,
    ) -> list[Action]:
        """A part of ``stream`` (default: the one started last). Nothing (no action) when the
        part cannot follow another stream's: a dependent part, or one older than it."""
        stream = self.stream if stream is None else stream
        if stream is None or stream not in self._streams:
            raise RuntimeError("start_stream() first")
        actions: list[Action] = []
        seg = self.open_segment
        switch = self._current != stream
        if switch and not independent:
            return []
        stale = program_time is not None and program_time < self._current_since + self.resume_margin
        if switch and stale:
            # from before what took over: the fragment ffmpeg held while its input stalled (a
            # fragment ends when the next frame comes) and let go when it resumed. The slate has
            # stood for that time already
            return []
        if switch and seg is not None:
            # the published preload hint named the next part of the open segment, of the old
            # stream, and a player may hold it as such: that name goes to no other stream's part
            self.parts_made += 1
        if seg is not None and seg.parts:
            too_long = seg.duration + duration >= self.target_duration + 0.5
            if independent or too_long or switch:
                actions += self._close(seg)
                seg = None
        if seg is None:
            seg = Segment(
                self.next_msn,
                f"{self.prefix}-{self.next_msn}.m4s",
                stream,
                discontinuity=switch and bool(self.segments),
                program_time=program_time,
            )
            self.next_msn += 1
            self.segments.append(seg)
        if switch:
            self._current_since = -math.inf if program_time is None else program_time
        self._current = stream
        part = Part(self._part_name(self.parts_made), duration, independent)
        self.parts_made += 1
        seg.parts.append(part)
        seg.chunks.append(data)
        seg.duration += duration
        actions.append(WriteFile(part.name, data))
        actions += self._expire()
        return actions

    def end_stream(self, stream: str | None = None) -> list[Action]:
        """The stream stopped (anchor gone, ffmpeg ended). Its open segment stays open until
        the next stream's first part closes it; its init goes once no segment lists it."""
        stream = self.stream if stream is None else stream
        self._streams.discard(stream or "")
        if stream == self.stream:
            self.stream = None
        if stream is not None and all(s.init != stream for s in self.segments):
            return [DeleteFile(stream)]
        return []

    @property
    def end_program_time(self) -> float | None:
        """Wall-clock end of the newest segment (where a stream that follows continues)."""
        if self.segments and self.segments[-1].program_time is not None:
            return self.segments[-1].program_time + self.segments[-1].duration
        return None

    def _close(self, seg: Segment) -> list[Action]:
        seg.complete = True
        self.last_complete_msn = max(self.last_complete_msn, seg.msn)
        data = b"".join(seg.chunks)
        seg.chunks.clear()
        return [WriteFile(seg.name, data)]

    def _expire(self) -> list[Action]:
        actions: list[Action] = []
        while sum(1 for s in self.segments if s.complete) > self.window:
            old = self.segments.popleft()
            if old.discontinuity:
                self.discontinuity_sequence += 1
            actions.append(DeleteFile(old.name))
            actions += [DeleteFile(p.name) for p in old.parts]
            if old.init not in self._streams and all(s.init != old.init for s in self.segments):
                actions.append(DeleteFile(old.init))
        if self.segments and self.segments[0].discontinuity:
            # the first listed segment needs no tag: EXT-X-DISCONTINUITY-SEQUENCE counts it
            self.segments[0].discontinuity = False
            self.discontinuity_sequence += 1
        return actions

    # -- state -----------------------------------------------------------------------------------
    @property
    def open_segment(self) -> Segment | None:
        if self.segments and not self.segments[-1].complete:
            return self.segments[-1]
        return None

    @property
    def newest_part(self) -> tuple[int, int] | None:
        """(media sequence number, part index) of the newest part."""
        for seg in reversed(self.segments):
            if seg.parts:
                return seg.msn, len(seg.parts) - 1
        return None

    def _part_name(self, n: int) -> str:
        # numbered across segments, so the preload hint is right whether or not the next part
        # starts a new segment
        return f"{self.prefix}-p{n}.m4s"

    @property
    def preload_hint(self) -> str | None:
        return None if self.open_segment is None else self._part_name(self.parts_made)

    def reached(self, msn: int, part: int | None) -> bool:
        """Whether a blocking playlist request for ``_HLS_msn``/``_HLS_part`` can be answered."""
        if part is None:
            return self.last_complete_msn >= msn
        newest = self.newest_part
        return newest is not None and newest >= (msn, part)

    def names(self) -> set[str]:
        listed = {s.name for s in self.segments} | {s.init for s in self.segments}
        listed |= {p.name for s in self.segments for p in s.parts}
        return listed | self._streams

    # -- output ----------------------------------------------------------------------------------
    @property
    def part_hold_back(self) -> float:
        return 3 * self.part_target

    @property
    def hold_back(self) -> float:
        return 3.0 * self.target_duration

    def playlist(self) -> str:
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:6",
            f"#EXT-X-TARGETDURATION:{self.target_duration}",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"PART-HOLD-BACK={self.part_hold_back:.3f},HOLD-BACK={self.hold_back:.3f}",
            f"#EXT-X-PART-INF:PART-TARGET={self.part_target:.3f}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.segments[0].msn if self.segments else self.next_msn}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}",
        ]
        with_parts = {s.msn for s in list(self.segments)[-self.part_window :]}
        init: str | None = None
        for seg in self.segments:
            if seg.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if seg.init != init:
                lines.append(f'#EXT-X-MAP:URI="{seg.init}"')
                init = seg.init
            if seg.program_time is not None:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_program_time(seg.program_time)}")
            if seg.msn in with_parts:
                for p in seg.parts:
                    flag = ",INDEPENDENT=YES" if p.independent else ""
                    lines.append(f'#EXT-X-PART:DURATION={p.duration:.5f},URI="{p.name}"{flag}')
            if seg.complete:
                lines.append(f"#EXTINF:{seg.duration:.5f},")
                lines.append(seg.name)
        hint = self.preload_hint
        if hint is not None:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint}"')
        return "\n".join(lines) + "\n"
