"""The current group of pictures, kept so a joining viewer can start without waiting for the
next keyframe: the wait is up to a whole GOP when the source ignores keyframe requests (ffmpeg,
OBS and other encoders with a fixed keyframe interval; relayed streams whose origin is one).

A WebRTC receiver plays frames on their RTP timestamps from the first one it gets, so the GOP
sent as it was recorded would be played out in real time: the viewer would stay behind live by
as much as the GOP had run (up to its length). ``replay`` therefore gives the frames
timestamps one tick apart ending at the newest one's: the receiver decodes them all (each
depends on the one before), shows the newest at once and continues live from there, with no
lasting delay. Audio is not cached; it starts live.

A source that answers keyframe requests (a browser, the mixer) sends one within a round trip of
the join's request: then the viewer waits for it and the burst (a GOP's bytes sent at once, for
every joining viewer) is spared. The cache judges that by the requests the hub passed on: a
keyframe within ``ANSWER_WITHIN`` of one is an answer; a request left unanswered longer is not.
Until it knows (the first join's request is the first), nothing is replayed; once a request
went unanswered, the source stays known as one that ignores them (a fixed GOP's keyframe lands
soon after some requests by chance).
"""

from __future__ import annotations

import dataclasses

from relay.media.frames import EncodedFrame

ANSWER_WITHIN = 0.5  # s from a keyframe request to the keyframe that answers it


class GopCache:
    """Video frames since the last keyframe, up to ``max_bytes`` and ``max_frames`` (below a
    viewer queue's length, or the replay would overflow the queue it is offered to and be
    thrown away); a GOP that outgrows either is dropped until the next keyframe (a joining
    viewer then waits, as without a cache)."""

    def __init__(self, max_bytes: int, max_frames: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._frames: list[EncodedFrame] = []
        self._bytes = 0
        self.replays = 0
        self._asked_at: float | None = None
        self.source_answers: bool | None = None  # None: not known yet

    def asked(self, now: float) -> None:
        """A keyframe request went to the source."""
        if self._asked_at is None:
            self._asked_at = now
        elif now - self._asked_at > ANSWER_WITHIN:
            self.source_answers = False  # the last one went unanswered
            self._asked_at = now

    def add(self, frame: EncodedFrame) -> None:
        if frame.kind != "video":
            return
        if frame.keyframe:
            self._frames, self._bytes = [], 0
            if self._asked_at is not None:
                answered = frame.received_at - self._asked_at <= ANSWER_WITHIN
                # a source once seen ignoring a request stays known as one: its own GOP's
                # keyframe lands within ANSWER_WITHIN of some requests by chance
                if self.source_answers is not False:
                    self.source_answers = answered
                self._asked_at = None
        elif not self._frames:
            return  # no keyframe to start from
        if self._bytes + frame.size > self.max_bytes or len(self._frames) >= self.max_frames:
            self._frames, self._bytes = [], 0
            return
        self._frames.append(frame)
        self._bytes += frame.size

    def clear(self) -> None:
        """Forget the GOP (a new source: also whether it answers)."""
        self._frames, self._bytes = [], 0
        self._asked_at = self.source_answers = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def bytes(self) -> int:
        return self._bytes

    def replay(self, now: float) -> list[EncodedFrame]:
        """Copies of the cached frames for one joining viewer: timestamps one tick apart up to
        the newest frame's (so the next live frame continues the timeline), received now (a
        viewer queue would otherwise drop them as stale). Nothing unless the source is known to
        leave keyframe requests unanswered."""
        if not self._frames or self.source_answers is not False:
            return []
        self.replays += 1
        newest = self._frames[-1].timestamp
        last = len(self._frames) - 1
        return [
            dataclasses.replace(f, timestamp=newest - (last - i), received_at=now)
            for i, f in enumerate(self._frames)
        ]
