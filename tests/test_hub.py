from __future__ import annotations

import asyncio

from relay.hub import FanoutHub
from relay.limiter import IntervalLimiter
from relay.media import CodecSpec, EncodedFrame
from relay.viewer_queue import ViewerQueue

CODECS = {"video": CodecSpec("video", "H264", 90000), "audio": CodecSpec("audio", "opus", 48000)}


def vframe(ts: int, key: bool = False) -> EncodedFrame:
    return EncodedFrame("video", "H264", ts, (b"x",), b"x", key, 0.0)


def test_limiter_coalesces() -> None:
    lim = IntervalLimiter(1.0)
    assert lim.try_acquire(0.0)
    assert not lim.try_acquire(0.5)
    assert lim.due(0.5) == 0.5
    assert lim.try_acquire(1.0)
    assert lim.due(1.0) is None


async def test_viewer_starts_on_keyframe_and_join_asks_for_one() -> None:
    asks: list[int] = []
    clock = [0.0]
    hub = FanoutHub("r", CODECS, clock=lambda: clock[0])
    hub.set_keyframe_requester(lambda: asks.append(1))
    viewer = hub.add_viewer("v1")
    assert asks == [1]
    hub.publish(vframe(1))
    assert len(viewer.queues["video"]) == 0
    hub.publish(vframe(2, key=True))
    hub.publish(vframe(3))
    q = viewer.queues["video"]
    assert [(await q.get()).timestamp for _ in range(2)] == [2, 3]  # type: ignore[union-attr]


async def test_slow_viewer_drops_to_keyframe_without_touching_others() -> None:
    hub = FanoutHub("r", CODECS, video_queue_frames=5, keyframe_interval=0.0)
    asks: list[int] = []
    hub.set_keyframe_requester(lambda: asks.append(1))
    slow = hub.add_viewer("slow")
    fast = hub.add_viewer("fast")
    hub.publish(vframe(0, key=True))
    fast_got = [await fast.queues["video"].get()]
    for ts in range(1, 20):
        hub.publish(vframe(ts))
        fast_got.append(await fast.queues["video"].get())
    assert [f.timestamp for f in fast_got if f] == list(range(20))
    assert slow.queues["video"].waiting_keyframe and slow.queues["video"].overflows == 1
    assert len(asks) >= 3  # two joins + the overflow
    hub.publish(vframe(20, key=True))
    got = await slow.queues["video"].get()
    assert got is not None and got.timestamp == 20


async def test_audio_queue_drops_oldest() -> None:
    q = ViewerQueue("audio", 3)
    for ts in range(5):
        q.offer(EncodedFrame("audio", "opus", ts, (b"a",), b"a", True, 0.0))
    assert [(await q.get()).timestamp for _ in range(3)] == [2, 3, 4]  # type: ignore[union-attr]


async def test_close_ends_viewers_and_pending_retry() -> None:
    asks: list[int] = []
    hub = FanoutHub("r", CODECS, keyframe_interval=10)
    hub.set_keyframe_requester(lambda: asks.append(1))
    viewer = hub.add_viewer("v")
    hub.request_keyframe()  # coalesced, retry scheduled
    hub.close()
    assert await viewer.queues["video"].get() is None
    await asyncio.sleep(0)
    assert hub.viewer_count == 0 and asks == [1]
