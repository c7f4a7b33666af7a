"""The GOP cache: a joining viewer starts from the cached keyframe with the frames since,
time-compressed to end at the newest one, and continues live without a gap or a jump."""

from __future__ import annotations

from relay.media.frames import CodecSpec, EncodedFrame
from relay.media.gop_cache import GopCache
from relay.media.hub import FanoutHub
from relay.media.stream_key import StreamKey

H264 = {"video": CodecSpec("video", "H264", 90000), "audio": CodecSpec("audio", "opus", 48000)}


def video(ts: int, key: bool = False, size: int = 1000) -> EncodedFrame:
    return EncodedFrame("video", "H264", ts, (b"x" * size,), b"", key, ts / 90000)


def test_cache_holds_the_gop_since_the_last_keyframe_within_its_size() -> None:
    cache = GopCache(max_bytes=5000)
    cache.add(video(0))  # no keyframe yet: nothing to start from
    assert len(cache) == 0
    for i in range(3):
        cache.add(video(3000 * (i + 1), key=i == 0))
    assert len(cache) == 3 and cache.bytes == 3000
    cache.add(video(12000, key=True))  # a new GOP starts over
    assert len(cache) == 1
    for i in range(5):  # outgrows 5000 bytes: dropped until the next keyframe
        cache.add(video(15000 + 3000 * i))
    assert len(cache) == 0
    cache.add(EncodedFrame("audio", "opus", 0, (b"a",), b"", True, 0.0))
    assert len(cache) == 0


def test_replay_compresses_the_gop_into_the_newest_frame() -> None:
    cache = GopCache(max_bytes=1 << 20)
    cache.source_answers = False
    for i in range(30):
        cache.add(video(900_000 + 3000 * i, key=i == 0))
    frames = cache.replay(now=42.0)
    assert [f.timestamp for f in frames] == list(
        range(900_000 + 3000 * 29 - 29, 900_000 + 3000 * 29 + 1)
    )
    assert frames[0].keyframe and not any(f.keyframe for f in frames[1:])
    assert all(f.received_at == 42.0 for f in frames) and frames[0].size == 1000


def test_a_joining_viewer_gets_the_gop_at_once_then_live_frames() -> None:
    hub = FanoutHub(StreamKey("r"), H264, gop_cache_bytes=1 << 20, clock=lambda: 100.0)
    assert hub.gop_cache is not None
    hub.gop_cache.source_answers = False  # learned earlier
    for i in range(10):
        hub.publish(video(3000 * i, key=i == 0))
    viewer = hub.create_viewer("v")
    hub.attach(viewer)
    q = viewer.queues["video"]
    assert len(q) == 10 and not q.waiting_keyframe
    hub.publish(video(30000))
    assert len(q) == 11
    plain = FanoutHub(StreamKey("r"), H264)  # no cache: waits for the next keyframe
    for i in range(10):
        plain.publish(video(3000 * i, key=i == 0))
    other = plain.create_viewer("v")
    plain.attach(other)
    assert len(other.queues["video"]) == 0 and other.queues["video"].waiting_keyframe


def test_no_replay_for_a_source_that_answers_keyframe_requests() -> None:
    """A browser or the mixer sends a keyframe within a round trip of the request: the viewer
    waits for it and the burst is spared; ffmpeg's fixed GOP leaves requests unanswered."""
    cache = GopCache(max_bytes=1 << 20)
    cache.add(video(0, key=True))
    cache.asked(now=1.0)
    cache.add(video(90000 + 3000, key=True))  # received_at 1.03 s: an answer
    assert cache.source_answers is True and cache.replay(2.0) == []
    deaf = GopCache(max_bytes=1 << 20)
    deaf.add(video(0, key=True))
    deaf.asked(now=0.1)
    deaf.add(video(3000))
    deaf.asked(now=0.7)  # the first request went unanswered
    assert deaf.source_answers is False and len(deaf.replay(1.0)) == 2
    deaf.add(video(180000, key=True))  # 2.0 s: the GOP's own keyframe, late for the request
    assert deaf.source_answers is False
    deaf.asked(now=3.9)
    deaf.add(video(360000, key=True))  # 4.0 s: its next one, 0.1 s after a request, by chance
    assert deaf.source_answers is False
    deaf.clear()  # a new source: not known again
    assert deaf.source_answers is None


def test_hub_learns_from_its_own_requests() -> None:
    now = [0.0]
    hub = FanoutHub(StreamKey("r"), H264, gop_cache_bytes=1 << 20, clock=lambda: now[0])
    asked: list[float] = []
    hub.attach_source(lambda: asked.append(now[0]))
    hub.publish(video(0, key=True))
    hub.publish(video(3000))
    now[0] = 5.0
    first = hub.create_viewer("a")
    hub.attach(first)  # not known yet: the viewer waits, and a request goes out
    assert len(first.queues["video"]) == 0 and asked == [5.0]
    hub.publish(video(5 * 90000 + 1500, key=True))  # received 5.017 s: answered
    now[0] = 9.0
    second = hub.create_viewer("b")
    hub.attach(second)
    assert len(second.queues["video"]) == 0 and second.queues["video"].waiting_keyframe
    deaf = FanoutHub(StreamKey("d"), H264, gop_cache_bytes=1 << 20, clock=lambda: now[0])
    deaf.attach_source(lambda: asked.append(now[0]))
    deaf.publish(video(9 * 90000, key=True))
    deaf.attach(deaf.create_viewer("a"))  # asks at 9.0 s; nothing comes within 0.5 s
    now[0] = 10.0
    deaf.publish(video(10 * 90000))
    late = deaf.create_viewer("b")
    deaf.attach(late)  # its request finds the first unanswered: the GOP is replayed
    assert len(late.queues["video"]) == 2 and not late.queues["video"].waiting_keyframe


def test_a_gop_longer_than_a_viewer_queue_is_not_replayed() -> None:
    """A replay longer than the viewer's queue would overflow it (and be thrown away there):
    such a GOP is not kept, and the viewer waits as it would without a cache."""
    hub = FanoutHub(StreamKey("r"), H264, gop_cache_bytes=1 << 22, video_queue_frames=60)
    assert hub.gop_cache is not None
    hub.gop_cache.source_answers = False
    for i in range(59):
        hub.publish(video(3000 * i, key=i == 0))
    fits = hub.create_viewer("a")
    hub.attach(fits)
    assert len(fits.queues["video"]) == 59 and not fits.queues["video"].waiting_keyframe
    hub.publish(video(3000 * 59))  # the 60th frame of the GOP: no longer kept
    late = hub.create_viewer("b")
    hub.attach(late)
    assert len(late.queues["video"]) == 0 and late.queues["video"].waiting_keyframe
