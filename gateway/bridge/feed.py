"""What a bridge writes into ffmpeg: the program's frames on one timeline, through a bounded
queue, muxed to Matroska by a writer thread (PyAV and pipe writes never run on the event loop).

``Timeline`` and ``FrameFeed`` are plain synchronous classes; ``write_feed`` is the thread body.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO

from relay.media.bitstream import picture_size
from relay.media.frames import MediaKind

from .argv import FEED_FORMAT

log = logging.getLogger(__name__)

MS = Fraction(1, 1000)


@dataclass(frozen=True, slots=True)
class FeedPacket:
    kind: MediaKind
    codec: str
    pts_ms: int  # on the bridge run's timeline, 0 = its first frame
    data: bytes
    keyframe: bool


class Timeline:
    """Puts audio and video on one millisecond timeline.

    Their RTP clocks have unrelated random origins, so each kind is anchored at the arrival time
    of its first frame (same host clock for both) and advances by its own RTP clock from there.
    Timestamps never go backwards per kind.
    """

    def __init__(self, origin: float) -> None:
        self.origin = origin  # monotonic seconds at pts 0
        self._base: dict[MediaKind, tuple[int, float]] = {}
        self._last: dict[MediaKind, int] = {}

    def pts_ms(self, kind: MediaKind, timestamp: int, clock_rate: int, received_at: float) -> int:
        base = self._base.get(kind)
        if base is None:
            base = self._base[kind] = (timestamp, received_at - self.origin)
        pts = round(((timestamp - base[0]) / clock_rate + base[1]) * 1000)
        last = self._last.get(kind)
        if last is not None and pts <= last:
            pts = last + 1
        pts = max(pts, 0)
        self._last[kind] = pts
        return pts


@dataclass(slots=True)
class FeedStats:
    accepted: int = 0
    dropped: int = 0
    overflows: int = 0


@dataclass(eq=False)
class FrameFeed:
    """Bounded, thread-safe queue from the event loop to the writer thread.

    With video, nothing passes before the first video keyframe (so ffmpeg's first packet carries
    the parameter sets); when ffmpeg falls behind and the queue is full, everything queued is
    dropped and the feed waits for the next keyframe (``put`` returns False: ask for one).
    """

    maxlen: int
    has_video: bool
    stats: FeedStats = field(default_factory=FeedStats)
    _items: deque[FeedPacket] = field(default_factory=deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False
    waiting_keyframe: bool = field(init=False)

    def __post_init__(self) -> None:
        self.waiting_keyframe = self.has_video

    def put(self, pkt: FeedPacket) -> bool:
        """Queue a packet; False when the feed needs a video keyframe to go on."""
        with self._cond:
            if self._closed:
                return True
            if self.waiting_keyframe:
                if not (pkt.kind == "video" and pkt.keyframe):
                    self.stats.dropped += 1
                    return pkt.kind != "video"
                self.waiting_keyframe = False
            elif len(self._items) >= self.maxlen:
                self.stats.overflows += 1
                self.stats.dropped += len(self._items) + 1
                self._items.clear()
                self.waiting_keyframe = self.has_video
                return not self.has_video
            self._items.append(pkt)
            self.stats.accepted += 1
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None) -> FeedPacket | None:
        """Next packet (blocking); None once closed and drained, or on timeout."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)


_MUX_CODECS = {"H264": "h264", "VP8": "vp8", "OPUS": "opus"}


def write_feed(
    feed: FrameFeed,
    pipe: BinaryIO,
    codecs: dict[MediaKind, str],
    on_done: Callable[[BaseException | None], None],
    *,
    format: str = FEED_FORMAT,
    options: dict[str, str] | None = None,
) -> None:
    """Writer thread: mux the feed's packets into Matroska on ``pipe`` until the feed closes or
    the pipe breaks (ffmpeg gone). Closes the pipe: end of input tells ffmpeg to finish.
    Recordings use it with ``format`` "mp4" (fragmented through ``options``) on a file.
    PyAV is imported here: a node that never bridges or records does not load FFmpeg."""
    import av

    error: BaseException | None = None
    container: Any = None
    streams: dict[MediaKind, Any] = {}
    try:
        while True:
            pkt = feed.get(timeout=0.5)
            if pkt is None:
                if feed.closed:
                    break
                continue
            if container is None:
                container = av.open(
                    pipe,
                    "w",
                    format=format,
                    options=options
                    if options is not None
                    else {"live": "1", "cluster_time_limit": "0"},
                )
                for kind, codec in codecs.items():
                    name = _MUX_CODECS[codec.upper()]
                    if kind == "video":
                        size = picture_size(codec, pkt.data) if pkt.kind == "video" else None
                        width, height = size or (0, 0)
                        stream = container.add_mux_stream(name, width=width, height=height)
                    elif format == "mp4":
                        # MP4 needs the OpusHead (dOps) a mux stream lacks: an encoder's
                        # context brings one (it never encodes: packets are muxed as they are)
                        stream = container.add_stream("libopus", rate=48000)
                    else:
                        stream = container.add_mux_stream(name, rate=48000)
                    stream.time_base = MS
                    streams[kind] = stream
            stream = streams.get(pkt.kind)
            if stream is None:
                continue
            packet = av.Packet(pkt.data)
            packet.stream = stream
            packet.pts = packet.dts = pkt.pts_ms
            packet.time_base = MS
            packet.is_keyframe = pkt.keyframe
            container.mux(packet)
    except (OSError, av.error.FFmpegError, ValueError) as exc:
        error = exc  # ffmpeg went away (broken pipe) or refused the data
    except BaseException as exc:
        log.exception("bridge feed writer failed")
        error = exc
    finally:
        feed.close()
        if container is not None:
            try:
                container.close()
            except Exception:  # the pipe may already be broken: nothing left to flush
                log.debug("closing the feed container failed", exc_info=True)
        with contextlib.suppress(OSError):
            pipe.close()
        on_done(error)
