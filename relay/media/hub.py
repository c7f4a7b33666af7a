"""The fan-out hub: one stream's encoded frames copied by reference into every viewer's queue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.media.bitstream import picture_size
from relay.media.frames import CodecSpec, EncodedFrame, MediaKind
from relay.media.gop_cache import GopCache
from relay.media.limiter import IntervalLimiter
from relay.media.meter import RateMeter
from relay.media.rebase import TimestampRebaser
from relay.media.sei import sei_nal, with_sei
from relay.media.stream_key import StreamKey
from relay.media.viewer_queue import ViewerQueue

log = logging.getLogger(__name__)

KeyframeRequester = Callable[[], None]


# A keyframe goes to every viewer (fan-out ~0.0015 core per viewer at ~150 packets/s: ~10 us a
# packet, so a 40-packet 720p keyframe is ~0.4 ms of the loop per viewer, 200 ms at 500), so in
# a flash crowd the joins' keyframe requests coalesce over an interval that grows with the
# audience (2 ms per viewer: 0.25 s up to 125 viewers, 1 s at 500, at most 2 s): the keyframes'
# fan-out stays near a fifth of the loop's core however many watch, where 4 a second at 500
# viewers took most of it; a joining viewer waits at most that long for its first picture.
JOIN_KEYFRAME_S_PER_VIEWER = 0.002
JOIN_KEYFRAME_MAX_INTERVAL = 2.0


@dataclass(slots=True)
class HubStats:
    frames_in: int = 0
    bytes_in: int = 0
    keyframes_in: int = 0
    keyframe_requests: int = 0
    keyframe_requests_coalesced: int = 0
    viewers_joined: int = 0
    viewer_drops: int = 0
    sei_messages: int = 0  # timed metadata put into the video (``add_sei``)
    fanout_cpu_seconds: float = 0.0  # thread CPU inside the viewer loop: sends, SRTP, sockets


@dataclass(eq=False)
class Viewer:
    """One audience member's queues; the transport side (a WebRTC sender) drains them."""

    id: str
    queues: dict[MediaKind, ViewerQueue] = field(default_factory=dict)

    def close(self) -> None:
        for q in self.queues.values():
            q.close()


class FanoutHub:
    """Distributes one stream to its viewers without decoding or re-encoding.

    ``publish`` is synchronous and O(viewers) reference copies; it never waits on a viewer. Keyframe
    requests (viewer joins, viewer PLIs, overflows) are coalesced to one per ``keyframe_interval``.
    """

    def __init__(
        self,
        key: StreamKey,
        codecs: dict[MediaKind, CodecSpec],
        *,
        keyframe_interval: float = 0.25,
        video_queue_frames: int = 60,
        audio_queue_frames: int = 100,
        gop_cache_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.codecs = dict(codecs)
        self._clock = clock
        self._limiter = IntervalLimiter(keyframe_interval)
        self._queue_sizes: dict[MediaKind, int] = {
            "video": video_queue_frames,
            "audio": audio_queue_frames,
        }
        self._viewers: dict[str, Viewer] = {}
        # per kind, the queues ``publish`` feeds: rebuilt after a viewer comes or goes, not
        # looked up per frame and viewer
        self._fanout: dict[MediaKind, tuple[ViewerQueue, ...]] | None = None
        self._requester: KeyframeRequester | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._join_asked: float | None = None  # the last keyframe request made for a join
        self._join_retry: asyncio.TimerHandle | None = None
        self.stats = HubStats()
        self.meters: dict[MediaKind, RateMeter] = {kind: RateMeter() for kind in self.codecs}
        self.picture_size: tuple[int, int] | None = None
        self.muted: set[MediaKind] = set()
        self.started_at = clock()
        self.last_frame_at: float | None = None
        self.last_video_at: float | None = None  # a layer without new pictures is not live
        self.taken_at: float | None = None  # when someone last started taking it (``wanted``)
        self._at_keyframe: dict[str, Callable[[], None]] = {}
        self.source_lost_at: float | None = None
        self.sources = 0
        self._rebaser = TimestampRebaser({k: c.clock_rate for k, c in self.codecs.items()})
        self.closed = asyncio.Event()
        # 0: a joining viewer waits for the source's next keyframe (asked for at once)
        cached = gop_cache_bytes > 0 and "video" in codecs
        self.gop_cache = GopCache(gop_cache_bytes, video_queue_frames - 1) if cached else None
        self._sei: list[bytes] = []  # SEI NAL units for the next video frame

    @property
    def stream_id(self) -> str:
        return self.key.id

    # -- source side -------------------------------------------------------------------------
    def set_keyframe_requester(self, requester: KeyframeRequester | None) -> None:
        self._requester = requester

    def attach_source(self, requester: KeyframeRequester) -> None:
        """A (new) source feeds this hub: timestamps continue, viewers wait for its keyframe,
        which is asked for at once."""
        self._requester = requester
        self.sources += 1
        self.source_lost_at = None
        if self.gop_cache is not None:
            self.gop_cache.clear()
        if self.sources > 1:
            self._rebaser.new_source()
            for viewer in self._viewers.values():
                q = viewer.queues.get("video")
                if q is not None:
                    q.restart()
            self._limiter.reset()
            self.request_keyframe()

    def detach_source(self) -> None:
        """The source went away; viewers stay (frozen) until a new source or ``close``."""
        self._requester = None
        self.source_lost_at = self._clock()

    def compatible(self, codecs: dict[MediaKind, CodecSpec]) -> bool:
        """Whether a new source with ``codecs`` can continue this stream for its viewers."""
        return set(codecs) == set(self.codecs) and all(
            codecs[k].name.lower() == self.codecs[k].name.lower() for k in codecs
        )

    def publish(self, frame: EncodedFrame) -> None:
        if self.closed.is_set():
            return
        st = self.stats
        size = frame.size
        st.frames_in += 1
        st.bytes_in += size
        meter = self.meters.get(frame.kind)
        if meter is not None:
            meter.add(frame.received_at, size)
        if frame.keyframe and frame.kind == "video":
            st.keyframes_in += 1
            self.picture_size = picture_size(frame.codec, frame.data) or self.picture_size
        self.last_frame_at = frame.received_at
        if frame.kind == "video":
            self.last_video_at = frame.received_at
        if frame.kind in self.muted:
            return
        frame = self._rebaser.apply(frame)
        if self._sei and frame.kind == "video":
            frame = with_sei(frame, self._sei)
            st.sei_messages += len(self._sei)
            self._sei = []
        if self.gop_cache is not None:
            self.gop_cache.add(frame)
        if self._at_keyframe and frame.keyframe and frame.kind == "video":
            self._keyframe_arrived()
        if not self._viewers:  # thread_time() is a system call: none while nobody watches
            return
        starving = False
        cpu0 = time.thread_time()
        fanout = self._fanout
        if fanout is None:
            fanout = self._fanout = self._fanout_queues()
        for q in fanout.get(frame.kind, ()):
            if not q.offer(frame):
                starving = True
        st.fanout_cpu_seconds += time.thread_time() - cpu0
        if starving:
            self.request_keyframe()

    def _fanout_queues(self) -> dict[MediaKind, tuple[ViewerQueue, ...]]:
        kinds: dict[MediaKind, list[ViewerQueue]] = {}
        for viewer in self._viewers.values():
            for kind, q in viewer.queues.items():
                kinds.setdefault(kind, []).append(q)
        return {kind: tuple(queues) for kind, queues in kinds.items()}

    def add_sei(self, payload: bytes) -> None:
        """Timed metadata into the next video frame (H.264 SEI, ``relay.media.sei``) for every
        viewer, edge, recording and bridge of this stream; of 32 waiting (no video frame came:
        the source is muted or gone) the oldest is dropped. ValueError: not H.264, too big."""
        video = self.codecs.get("video")
        if video is None or video.name.upper() != "H264":
            raise ValueError("SEI needs an H.264 stream")
        self._sei = [*self._sei[-31:], sei_nal(payload)]

    def _keyframe_arrived(self) -> None:
        calls, self._at_keyframe = self._at_keyframe, {}
        for key, call in calls.items():
            try:
                call()
            except Exception:
                log.exception("keyframe callback %s of %s failed", key, self.stream_id)

    def call_at_keyframe(self, key: str, call: Callable[[], None]) -> None:
        """Call ``call`` once, when the next video keyframe arrives, before it is fanned out
        (a viewer moving here from another layer attaches then and starts with it)."""
        self._taken()
        self._at_keyframe[key] = call

    def cancel_keyframe_call(self, key: str) -> None:
        self._at_keyframe.pop(key, None)

    def set_muted(self, kind: MediaKind, muted: bool) -> None:
        """Stop (or resume) forwarding one kind; video resumes on a fresh keyframe."""
        if not muted and kind in self.muted:
            self.muted.discard(kind)
            if kind == "video":
                if self.gop_cache is not None:
                    self.gop_cache.clear()
                for viewer in self._viewers.values():
                    q = viewer.queues.get("video")
                    if q is not None:
                        q.restart()
                self.request_keyframe()
        elif muted:
            self.muted.add(kind)

    # -- viewer side -------------------------------------------------------------------------
    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    @property
    def wanted(self) -> bool:
        """Someone takes this stream: a viewer, or one waiting for its keyframe to move here
        (a layer switch): a source that makes it only on demand must go on making it."""
        return bool(self._viewers) or bool(self._at_keyframe)

    def _taken(self) -> None:
        """Before someone starts taking the stream: note when it went from nobody to someone
        (a source that makes it only on demand has made nothing since: not a stall)."""
        if not self.wanted:
            self.taken_at = self._clock()

    def viewers(self) -> list[Viewer]:
        return list(self._viewers.values())

    def create_viewer(self, viewer_id: str, *, direct: bool = False) -> Viewer:
        """A viewer with a queue per kind of this stream, not yet receiving (see ``attach``);
        ``direct`` queues are drained by a synchronous sink (see ``ViewerQueue.bind``)."""
        viewer = Viewer(viewer_id)
        for kind in self.codecs:
            viewer.queues[kind] = ViewerQueue(kind, self._queue_sizes[kind], direct=direct)
        return viewer

    def attach(self, viewer: Viewer, *, keyframe: bool = True) -> None:
        """Start feeding a viewer (once its transport is up, so nothing stale piles up) and ask
        the source for a keyframe so its first picture comes at once (``keyframe=False``: one
        is arriving now)."""
        if self.closed.is_set():
            viewer.close()
            return
        self._taken()
        self._viewers[viewer.id] = viewer
        self._fanout = None
        self.stats.viewers_joined += 1
        q = viewer.queues.get("video")
        if q is not None and keyframe:
            self._join_keyframe()  # first: it may tell the cache the last one went unanswered
            if self.gop_cache is not None and q.waiting_keyframe:
                for frame in self.gop_cache.replay(self._clock()):
                    q.offer(frame)

    def add_viewer(self, viewer_id: str) -> Viewer:
        viewer = self.create_viewer(viewer_id)
        self.attach(viewer)
        return viewer

    def detach(self, viewer: Viewer) -> bool:
        """Stop feeding a viewer without ending it (it moves to another hub); its queues start
        again at the next keyframe wherever they go."""
        if self._viewers.pop(viewer.id, None) is None:
            return False
        self._fanout = None
        for q in viewer.queues.values():
            q.restart()
        return True

    def remove_viewer(self, viewer: Viewer) -> None:
        if self._viewers.pop(viewer.id, None) is not None:
            self._fanout = None
            self.stats.viewer_drops += sum(q.dropped for q in viewer.queues.values())
        viewer.close()

    def request_keyframe(self) -> None:
        """Ask the source for a keyframe, at most once per interval; later asks are coalesced."""
        if self._requester is None or self.closed.is_set():
            return
        now = self._clock()
        if self._limiter.try_acquire(now):
            self.stats.keyframe_requests += 1
            if self.gop_cache is not None:
                self.gop_cache.asked(now)
            self._requester()
            return
        self.stats.keyframe_requests_coalesced += 1
        delay = self._limiter.due(now)
        if delay is not None and self._retry is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._retry = loop.call_later(delay, self._flush_pending)

    def join_keyframe_interval(self) -> float:
        """How often joins may ask the source for a keyframe with this audience."""
        per_audience = len(self._viewers) * JOIN_KEYFRAME_S_PER_VIEWER
        return min(JOIN_KEYFRAME_MAX_INTERVAL, max(self._limiter.interval, per_audience))

    def _join_keyframe(self) -> None:
        """A joining viewer's keyframe request, coalesced over ``join_keyframe_interval``
        (one is asked for at the end of it when it was not free at once)."""
        interval = self.join_keyframe_interval()
        if interval <= self._limiter.interval:  # a small audience: as any request
            self.request_keyframe()
            return
        now = self._clock()
        if self._join_asked is None or now - self._join_asked >= interval:
            self._join_asked = now
            self.request_keyframe()
            return
        self.stats.keyframe_requests_coalesced += 1
        if self._join_retry is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._join_retry = loop.call_later(self._join_asked + interval - now, self._join_due)

    def _join_due(self) -> None:
        self._join_retry = None
        self._join_asked = self._clock()
        self.request_keyframe()

    def _flush_pending(self) -> None:
        self._retry = None
        if self._limiter.pending:
            self.request_keyframe()

    def close(self) -> None:
        """End the stream for every viewer: their queues drain and their tracks end."""
        if self.closed.is_set():
            return
        self.closed.set()
        self._at_keyframe.clear()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._join_retry is not None:
            self._join_retry.cancel()
            self._join_retry = None
        for viewer in list(self._viewers.values()):
            self.remove_viewer(viewer)
