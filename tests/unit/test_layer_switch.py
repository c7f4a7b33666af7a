"""Moving a viewer between layers' hubs at the target's keyframe (``FanoutHub.call_at_keyframe``,
as ``ViewerService`` does it): the old layer keeps playing until the keyframe, which is the first
frame the viewer gets from the new one; audio never waits behind video."""

from __future__ import annotations

from relay.media.frames import CodecSpec, EncodedFrame, MediaKind
from relay.media.hub import FanoutHub, Viewer
from relay.media.layer_selector import Layer, LayerSelector, Switch
from relay.media.stream_key import StreamKey
from relay.rtc.viewers import LAYER_STALE, layer_live

CODECS = {"video": CodecSpec("video", "H264", 90000), "audio": CodecSpec("audio", "opus", 48000)}


def frame(kind: MediaKind, ts: int, key: bool = False, at: float = 0.0) -> EncodedFrame:
    return EncodedFrame(kind, "H264" if kind == "video" else "opus", ts, (b"x",), b"x", key, at)


def bound_viewer(hub: FanoutHub, got: list[tuple[str, int]], *, video_ok: bool = True) -> Viewer:
    viewer = hub.create_viewer("v", direct=True)
    for kind, q in viewer.queues.items():
        ok = video_ok or kind == "audio"
        q.bind(lambda f, ok=ok: got.append((f.kind, f.timestamp)) is None and ok)
    hub.attach(viewer)
    return viewer


def test_the_switch_happens_at_the_targets_keyframe_with_no_gap() -> None:
    top = FanoutHub(StreamKey("r"), CODECS)
    low = FanoutHub(StreamKey("r", rendition="low"), CODECS)
    asks: list[str] = []
    low.set_keyframe_requester(lambda: asks.append("low"))
    got: list[tuple[str, int]] = []
    viewer = bound_viewer(top, got)
    top.publish(frame("video", 1, key=True))

    def move() -> None:
        top.detach(viewer)
        low.attach(viewer, keyframe=False)

    low.call_at_keyframe(viewer.id, move)
    low.request_keyframe()
    top.publish(frame("video", 2))
    low.publish(frame("video", 1002))  # not a keyframe: the viewer stays on top
    top.publish(frame("video", 3))
    low.publish(frame("video", 1003, key=True))  # the switch, and this frame goes out
    top.publish(frame("video", 4))
    low.publish(frame("video", 1004))
    assert got == [("video", t) for t in (1, 2, 3, 1003, 1004)]
    assert asks == ["low"]  # one request for the target's keyframe, none on attach
    assert low.viewer_count == 1 and top.viewer_count == 0
    assert low.last_video_at is not None


def test_a_cancelled_switch_never_happens() -> None:
    top = FanoutHub(StreamKey("r"), CODECS)
    low = FanoutHub(StreamKey("r", rendition="low"), CODECS)
    moved: list[int] = []
    assert not low.wanted
    low.call_at_keyframe("v", lambda: moved.append(1))
    assert low.wanted  # a mixer encodes it for the viewer on its way (``rendition_wanted``)
    low.cancel_keyframe_call("v")
    assert not low.wanted
    low.publish(frame("video", 1, key=True))
    assert moved == [] and top.viewer_count == 0


def test_audio_is_never_dropped_for_video() -> None:
    """A viewer whose socket refuses video (backlogged) still gets every audio frame: each kind
    has its own queue, and a direct queue holds nothing another kind could wait behind."""
    hub = FanoutHub(StreamKey("r"), CODECS, keyframe_interval=0.0)
    got: list[tuple[str, int]] = []
    viewer = bound_viewer(hub, got, video_ok=False)
    for i in range(50):
        hub.publish(frame("video", i, key=i % 10 == 0))
        hub.publish(frame("audio", i))
    audio = [t for kind, t in got if kind == "audio"]
    assert audio == list(range(50))
    assert viewer.queues["audio"].dropped == 0
    assert viewer.queues["video"].overflows > 0


def test_a_drained_move_down_sends_nothing_of_the_old_layer_until_the_keyframe() -> None:
    """``ViewerService`` holds a viewer's video queue when it moves down from a layer that
    overruns its link (``Switch.drain``): the old layer's frames stop at once (what it still
    sent would fill the bottleneck queue ahead of the target's keyframe), audio goes on, no
    keyframe is asked of the old layer, and the target's keyframe starts the viewer again."""
    top = FanoutHub(StreamKey("r"), CODECS, keyframe_interval=0.0)
    low = FanoutHub(StreamKey("r", rendition="low"), CODECS, keyframe_interval=0.0)
    asks: list[str] = []
    top.set_keyframe_requester(lambda: asks.append("top"))
    low.set_keyframe_requester(lambda: asks.append("low"))
    got: list[tuple[str, int]] = []
    viewer = bound_viewer(top, got)
    top.publish(frame("video", 1, key=True))
    asks.clear()
    video = viewer.queues["video"]
    video.hold()  # the move down is decided

    def move() -> None:
        top.detach(viewer)
        low.attach(viewer, keyframe=False)

    low.call_at_keyframe(viewer.id, move)
    low.request_keyframe()
    for ts in (2, 3):
        top.publish(frame("video", ts))
        top.publish(frame("audio", ts))
    top.publish(frame("video", 4, key=True))  # not even the old layer's keyframe
    low.publish(frame("video", 1002))
    low.publish(frame("video", 1003, key=True))
    low.publish(frame("video", 1004))
    assert got == [
        ("video", 1), ("audio", 2), ("audio", 3), ("video", 1003), ("video", 1004),
    ]  # fmt: skip
    assert asks == ["low"]
    assert not video.held and video.dropped == 3


def test_a_layer_just_taken_is_live_while_its_source_makes_its_first_picture() -> None:
    """A rendition nobody watched is not encoded (the mixer makes only what is taken), so its
    last picture is old when a viewer takes it. Until its source has had ``LAYER_STALE`` from
    then to make a picture it is live: a viewer pinned to it (``?rendition=low``) stays, and is
    not moved to the main rendition because the mixer's first frame of it came after a look
    at the ladder (a loaded machine's CI saw that viewer get 320x180 instead of 160x90). A
    layer that still makes nothing after that is gone, as before."""
    now = [100.0]
    top = FanoutHub(StreamKey("r"), CODECS, clock=lambda: now[0])
    low = FanoutHub(StreamKey("r", rendition="low"), CODECS, clock=lambda: now[0])
    for hub in (top, low):
        hub.attach_source(lambda: None)
    low.publish(frame("video", 1, key=True, at=90.0))  # once, then nobody took it

    def look(at: float) -> tuple[bool, Switch | None]:
        """What ``ViewerService.adapt`` sees at ``at`` (the main layer has a frame then)."""
        now[0] = at
        top.publish(frame("video", int(at * 90000), at=at))
        layers = [
            Layer(name, 100_000, layer_live(hub, at)) for name, hub in (("top", top), ("low", low))
        ]
        return layers[1].live, selector.update(at, layers)

    top.publish(frame("video", 0, key=True, at=100.0))
    assert layer_live(low, 100.0)  # nobody takes it: live while it has a source
    bound_viewer(low, [])  # the pinned viewer connects at 100.0
    selector = LayerSelector("low", pinned="low", now=100.0)
    assert look(100.5) == (True, None)  # no picture yet: the mixer's thread had no core
    low.publish(frame("video", 2, key=True, at=100.6))
    assert look(101.5) == (True, None)
    # a layer taken that then makes nothing for LAYER_STALE is gone: its viewer goes where
    # there are pictures
    live, switch = look(101.6 + LAYER_STALE)
    assert not live and switch is not None and switch.target == "top" and switch.urgent
