from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from relay.media.frames import CodecSpec, EncodedFrame, MediaKind
from relay.media.hub import FanoutHub, Viewer
from relay.media.limiter import IntervalLimiter
from relay.media.stream_key import StreamKey
from relay.media.viewer_queue import ViewerQueue
from relay.rtc.ingest import TrackIngest
from relay.rtc.peer import rtc_configuration

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
    hub = FanoutHub(StreamKey("r"), CODECS, clock=lambda: clock[0])
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
    hub = FanoutHub(StreamKey("r"), CODECS, video_queue_frames=5, keyframe_interval=0.0)
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
    hub = FanoutHub(StreamKey("r"), CODECS, keyframe_interval=10)
    hub.set_keyframe_requester(lambda: asks.append(1))
    viewer = hub.add_viewer("v")
    hub.request_keyframe()  # coalesced, retry scheduled
    hub.close()
    assert await viewer.queues["video"].get() is None
    await asyncio.sleep(0)
    assert hub.viewer_count == 0 and asks == [1]


async def test_ingest_survives_a_failing_viewer_path() -> None:
    """An exception under the ingest callback runs inside aiortc's receive path, where it would
    end the anchor's transport: it is logged and counted, and the next packets go on."""
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        hub = FanoutHub(StreamKey("s"), {"audio": CodecSpec("audio", "opus", 48000)})
        broken = hub.add_viewer("broken")
        got: list[int] = []

        def sink(frame: EncodedFrame) -> bool:
            got.append(frame.timestamp)
            if len(got) == 1:
                raise RuntimeError("viewer path bug")
            return True

        broken.queues["audio"].bind(sink)
        ingest = TrackIngest("audio", receiver, hub)
        codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111)
        for seq in (1, 2):
            packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
            packet.payload = b"\x01\x02"
            ingest._on_packet(packet, codec)
        assert ingest.errors == 1 and got == [960, 1920]
    finally:
        await pc.close()


async def test_queue_is_bounded_in_time_too() -> None:
    """A queued (not direct) viewer more than max_delay behind starts again at a keyframe."""
    q = ViewerQueue("video", 1000, max_delay=0.5)

    def at(t: float, key: bool = False) -> EncodedFrame:
        return EncodedFrame("video", "H264", int(t * 90000), (b"x",), b"x", key, t)

    assert q.offer(at(0.0, key=True))
    assert all(q.offer(at(i / 30)) for i in range(1, 15))
    assert not q.offer(at(0.6))  # 0.6 s behind its oldest frame: drop to the next keyframe
    assert len(q) == 0 and q.waiting_keyframe and q.overflows == 1
    assert q.offer(at(0.7, key=True)) and len(q) == 1
    audio = ViewerQueue("audio", 1000, max_delay=0.1)
    for i in range(20):
        audio.offer(EncodedFrame("audio", "opus", i * 960, (b"a",), b"a", True, i * 0.02))
    assert len(audio) == 6 and audio.dropped == 14


def test_viewers_coming_and_going_between_frames_get_exactly_their_frames() -> None:
    """publish feeds per-kind queue lists rebuilt when a viewer comes or goes: a viewer gets
    every frame while attached and none before or after (also one detached to another hub)."""
    codecs: dict[MediaKind, CodecSpec] = dict(CODECS)  # type: ignore[assignment]
    hub = FanoutHub(StreamKey("r"), codecs, keyframe_interval=0.0)
    other = FanoutHub(StreamKey("r", rendition="360p"), codecs, keyframe_interval=0.0)
    for h in (hub, other):
        h.set_keyframe_requester(lambda: None)
    got: dict[str, list[int]] = {}

    def bound(viewer_id: str, h: FanoutHub) -> Viewer:
        viewer = h.create_viewer(viewer_id, direct=True)
        frames = got[viewer_id] = []

        def sink(frame: EncodedFrame) -> bool:
            frames.append(frame.timestamp)
            return True

        for q in viewer.queues.values():
            q.bind(sink)
        h.attach(viewer)
        return viewer

    a = bound("a", hub)
    hub.publish(vframe(0, key=True))
    b = bound("b", hub)
    hub.publish(vframe(1, key=True))
    hub.publish(EncodedFrame("audio", "opus", 100, (b"a",), b"a", True, 0.0))
    hub.remove_viewer(a)
    hub.publish(vframe(2))
    assert hub.detach(b)
    other.attach(b)
    hub.publish(vframe(3, key=True))
    other.publish(vframe(4, key=True))
    assert got == {"a": [0, 1, 100], "b": [1, 100, 2, 4]}


async def test_joins_keyframe_requests_coalesce_longer_with_a_big_audience() -> None:
    asks: list[float] = []
    clock = [0.0]
    hub = FanoutHub(StreamKey("r"), CODECS, clock=lambda: clock[0])
    hub.set_keyframe_requester(lambda: asks.append(clock[0]))
    for i in range(100):  # 100 viewers: the node's keyframe_interval (0.25 s) still holds
        hub.add_viewer(f"a{i}")
    assert hub.join_keyframe_interval() == 0.25
    for i in range(400):  # 500: 1 s between joins' keyframes
        hub.add_viewer(f"b{i}")
    assert hub.join_keyframe_interval() == 1.0
    asks.clear()
    clock[0] = 10.0
    for i in range(40):  # 40 joins over 2 s
        hub.add_viewer(f"c{i}")
        clock[0] += 0.05
    # two (every 0.25 s before: eight), ~1 s apart (the audience grew meanwhile: 1.04 s)
    assert len(asks) == 2 and asks[0] == 10.0 and 1.0 <= asks[1] - asks[0] <= 1.1
    await asyncio.sleep(0)
    hub.request_keyframe()  # a viewer's own PLI still goes by the node's interval
    assert asks[-1] == clock[0]
    hub.close()
